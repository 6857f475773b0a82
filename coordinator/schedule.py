"""When scheduled backups are due: pure functions over config values and clock times.

Everything that can go wrong with time (time zones, DST, "first Sunday", runs missed
while the coordinator was down, restarts) is decided here from plain values, so it is
tested without a clock, NATS or a catalog. The loop in ``scheduler.py`` only asks "what
came due between my last check and now?" and dispatches the answer.

Rules:

- Cron expressions (five fields, validated at config load) are read in the schedule's
  time zone. When day-of-month and day-of-week are both restricted, a time must match
  both (classic cron ORs them): ``0 0 1-7 * sun`` is the first Sunday of each month.
- Clocks going back: a schedule at a fixed hour fires once, at the first of the two
  repeated wall-clock times (as Vixie cron does); a wildcard-hour schedule (``*`` or
  ``*/2``) fires in both hours, because they are different real hours. Clocks going
  forward over a fire time: it fires once, at the first valid time after the gap.
- A fire time older than ``now - grace_s`` is missed: reported, never run.
- Of the runs of one schedule of one dataset that are due in one pass, only the newest
  runs; the older ones are skipped (:func:`collapse`). After an outage a schedule that
  fires every minute runs once, not once per minute of the grace window. A run older
  than the dataset's first appearance in the config is skipped too: a new dataset
  never "catches up" on times when it did not exist.
- A run's job id is derived from the dataset, the tier, the backup type and the fire
  time in UTC, never from the position of the schedule in the file (reordering the file
  must not fire a run again). The same run always has the same id, so the catalog and
  JetStream's ``Nats-Msg-Id`` duplicate window drop a run that was already dispatched,
  across restarts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from shared.config.coordinator import ScheduleConfig
from shared.subjects import check_token

# A coordinator that was down for months must not list every missed minute.
MAX_MISSED_LISTED = 100
_MAX_TOKEN = 128
_ONE_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class Run:
    """One firing of one schedule of one dataset."""

    dataset: str
    schedule: ScheduleConfig
    fire_time: datetime  # UTC
    job_id: str
    missed: bool = False  # not run: report why (``skipped``), do not run
    skipped: str = ""  # why not: one of the SKIP_* reasons


# Why a due run is not run (``Run.skipped``).
SKIP_MISSED = "missed"  # older than its schedule's grace window
SKIP_SUPERSEDED = "superseded"  # a newer run of the same schedule is due in the same pass
SKIP_BEFORE_DATASET = "before_dataset"  # older than the dataset's first appearance


def _aware(name: str, t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {t.isoformat()}")
    return t


def _repeated(t: datetime) -> bool:
    """True for the second occurrence of a wall-clock time when clocks go back."""
    return t.fold == 1 and t.replace(fold=0).utcoffset() != t.utcoffset()


def _fire_times(s: ScheduleConfig, after: datetime, until: datetime) -> Iterator[datetime]:
    """Fire times of ``s`` in (after, until], in UTC, oldest first."""
    tz = ZoneInfo(s.timezone)
    fixed_hour = not s.cron.split()[1].startswith("*")
    it = croniter(s.cron, after.astimezone(tz), day_or=False)
    last: datetime | None = None
    while True:
        t: datetime = it.get_next(datetime)
        utc = t.astimezone(UTC)
        if utc > until:
            return
        if (fixed_hour and _repeated(t)) or utc == last or utc <= after:
            continue
        last = utc
        yield utc


def job_id(dataset: str, schedule: ScheduleConfig, fire_time: datetime) -> str:
    """``sched-<dataset>-<tier>-<type>-<YYYYmmddTHHMMZ>``: deterministic, one subject
    token. A dataset name too long for the 128-character token is shortened and given
    a hash of the full name, so two long names never share ids."""
    stamp = _aware("fire_time", fire_time).astimezone(UTC).strftime("%Y%m%dT%H%MZ")
    tail = f"{schedule.tier}-{schedule.backup_type}-{stamp}"
    room = _MAX_TOKEN - len("sched--") - len(tail)
    name = dataset
    if len(name) > room:
        digest = hashlib.sha256(dataset.encode()).hexdigest()[:12]
        name = f"{dataset[: room - len(digest) - 1]}-{digest}"
    return check_token("job id", f"sched-{name}-{tail}")


def _runs_of(dataset: str, s: ScheduleConfig, after: datetime, now: datetime) -> list[Run]:
    cutoff = now - timedelta(seconds=s.grace_s)
    out: list[Run] = []
    start = after
    if after < cutoff:
        # Missed fire times: strictly older than the cutoff, at most MAX_MISSED_LISTED.
        for t in _fire_times(s, after, cutoff - _ONE_US):
            out.append(Run(dataset, s, t, job_id(dataset, s, t), True, SKIP_MISSED))
            if len(out) >= MAX_MISSED_LISTED:
                break
        start = cutoff - _ONE_US
    out.extend(Run(dataset, s, t, job_id(dataset, s, t)) for t in _fire_times(s, start, now))
    return out


def due_runs(
    schedules: Mapping[str, Sequence[ScheduleConfig]], last_checked: datetime, now: datetime
) -> list[Run]:
    """Every fire time in (last_checked, now] of every dataset × schedule, oldest first.

    Runs older than their schedule's grace window come back with ``missed=True``. Two
    schedules of one dataset that produce the same job id (same tier, type and minute)
    are one run.
    """
    _aware("last_checked", last_checked)
    _aware("now", now)
    if now <= last_checked:
        return []
    seen: set[str] = set()
    runs: list[Run] = []
    for dataset, scheds in schedules.items():
        for s in scheds:
            for run in _runs_of(dataset, s, last_checked, now):
                if run.job_id not in seen:
                    seen.add(run.job_id)
                    runs.append(run)
    runs.sort(key=lambda r: (r.fire_time, r.dataset, r.job_id))
    return runs


def collapse(runs: Sequence[Run], first_seen: Mapping[str, datetime] | None = None) -> list[Run]:
    """``runs`` (of :func:`due_runs`) as one pass of the scheduler acts on them, order
    kept: a run older than its dataset's ``first_seen`` is skipped (``before_dataset``);
    of the other runs inside the grace window of one schedule of one dataset only the
    newest is run, the older ones are skipped (``superseded``)."""
    floors = first_seen or {}

    def early(r: Run) -> bool:
        floor = floors.get(r.dataset)
        return floor is not None and r.fire_time < floor

    newest: dict[tuple[str, ScheduleConfig], datetime] = {}
    for r in runs:
        if not r.missed and not early(r):
            key = (r.dataset, r.schedule)
            newest[key] = max(newest.get(key, r.fire_time), r.fire_time)
    out: list[Run] = []
    for r in runs:
        if early(r):
            r = replace(r, missed=True, skipped=SKIP_BEFORE_DATASET)
        elif not r.missed and newest[r.dataset, r.schedule] != r.fire_time:
            r = replace(r, missed=True, skipped=SKIP_SUPERSEDED)
        out.append(r)
    return out


def next_run(schedule: ScheduleConfig, now: datetime) -> datetime:
    """The first fire time strictly after ``now``, in UTC (for status)."""
    _aware("now", now)
    tz = ZoneInfo(schedule.timezone)
    fixed_hour = not schedule.cron.split()[1].startswith("*")
    it = croniter(schedule.cron, now.astimezone(tz), day_or=False)
    while True:
        t: datetime = it.get_next(datetime)
        if not (fixed_hour and _repeated(t)) and t.astimezone(UTC) > now:
            return t.astimezone(UTC)


def fire_window(schedule: ScheduleConfig, at: datetime) -> tuple[datetime, datetime]:
    """The newest fire time at or before ``at`` and the first one after it, in UTC: every
    instant in ``[first, second)`` has the same previous fire time."""
    _aware("at", at)
    tz = ZoneInfo(schedule.timezone)
    # croniter's get_prev is strictly before its start: start one second later, and step
    # back once more if that lands after ``at`` (a fractional-second ``at``)
    it = croniter(schedule.cron, (at + timedelta(seconds=1)).astimezone(tz), day_or=False)
    prev: datetime = it.get_prev(datetime)
    if prev.astimezone(UTC) > at:
        prev = it.get_prev(datetime)
    after: datetime = croniter(schedule.cron, prev, day_or=False).get_next(datetime)
    return prev.astimezone(UTC), after.astimezone(UTC)


def prev_run(schedule: ScheduleConfig, at: datetime) -> datetime:
    """The newest fire time at or before ``at``, in UTC (for the backup-missing rule)."""
    return fire_window(schedule, at)[0]


class FireTimes:
    """Previous and next fire times of schedules that many datasets share.

    croniter costs ~0.1 ms a call; 10,000 datasets on a handful of schedules would pay it
    10,000 times a tick. Answers are kept per distinct (cron, time zone) for as long as
    they hold: a previous fire time until the next one passes, a next run until it comes.
    """

    def __init__(self) -> None:
        self._prev: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        self._next: dict[tuple[str, str], tuple[datetime, datetime]] = {}

    def prev(self, schedule: ScheduleConfig, at: datetime) -> datetime:
        """:func:`prev_run`, computed once per schedule between two of its fire times."""
        key = (schedule.cron, schedule.timezone)
        hit = self._prev.get(key)
        if hit is None or not hit[0] <= at < hit[1]:
            hit = self._prev[key] = fire_window(schedule, at)
        return hit[0]

    def next(self, schedule: ScheduleConfig, now: datetime) -> datetime:
        """:func:`next_run`, computed once per schedule until that run comes."""
        key = (schedule.cron, schedule.timezone)
        hit = self._next.get(key)
        if hit is None or not hit[0] <= now < hit[1]:
            hit = self._next[key] = (now, next_run(schedule, now))
        return hit[1]


def next_runs(
    schedules: Mapping[str, Sequence[ScheduleConfig]], now: datetime
) -> dict[str, datetime | None]:
    """Each dataset's next fire time over all its schedules (None: not scheduled)."""
    return {
        dataset: min((next_run(s, now) for s in scheds), default=None)
        for dataset, scheds in schedules.items()
    }
