"""Maintenance windows: did each dataset's newest scheduled run stay inside its window?

A schedule may carry ``window = "02:00-04:00"`` (``ScheduleConfig.window``, in the
schedule's time zone; an end before the start runs past midnight). Every fire time of
its cron lies inside the window (checked at load). A run *exceeds* its window when it
finished after the window's end, or is still running (or still queued) at the end;
``exceeded_s`` is how far past the end it finished, or has run so far.

Everything is derived from what the catalog already stores, so every coordinator
answers the same:

- Which window a run belongs to: a scheduled run's job id (and backup id) is
  ``schedule.job_id(dataset, schedule, fire_time)``, so the newest fire time of each
  windowed schedule names the run to look at. Its window is the one whose start is the
  newest at or before the fire time, in wall-clock time of the schedule's zone; the end
  is a wall-clock time too, so on the night clocks change a window is an hour shorter
  or longer.
- When it finished: its backup row (``finished_at``), else its failed job
  (``updated_at``: a run that failed after the end used the window up as well).
- Whether it still runs: the agents' heartbeats (``running_job``); past the window's
  end, the job row (``dispatched`` or ``running``: not done at the end).

Cost per status read: one ``get_backups`` and one ``last_failures`` for the runs not
settled yet (a run with a backup or a failure is settled until its schedule fires
again, and kept in memory), plus one ``get_job`` per run that is past its window's end
with neither: the few that exceed, and runs that were never sent.

``window_exceeded`` (the alert, :meth:`Windows.findings`, on the lease holder): one per
dataset whose newest run of some windowed schedule exceeded its window; it resolves
when that schedule fires again. Each run seen exceeding also gets one audit entry
(action :data:`WINDOW_ACTION`, id per job, detail: the :class:`WindowStatus` as JSON),
which ``backup_window_exceeded_total`` counts (coordinator/metrics.py) and
``mosaic-backup audit --action window_exceeded`` lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import msgspec

from coordinator.alerts import Finding
from coordinator.catalog.base import AuditEntry, Catalog
from coordinator.heartbeats import HeartbeatStore
from coordinator.schedule import FireTimes, job_id
from shared.config.coordinator import CoordinatorConfig, ScheduleConfig, parse_window
from shared.errors import MosaicError
from shared.vocab import utcnow
from shared.wire.status import StatusReply, WindowStatus

if TYPE_CHECKING:
    from coordinator.alerter import Alerter
    from coordinator.status import StatusBuilder

log = logging.getLogger(__name__)

WINDOW_ACTION = "window_exceeded"  # the audit action (and the alert's rule name)
_UNSENT_MARGIN_S = 120.0  # a run this far past its grace is never sent any more


def window_bounds(schedule: ScheduleConfig, fire_time: datetime) -> tuple[datetime, datetime]:
    """The window (start, end), in UTC, that the run fired at ``fire_time`` belongs to:
    the newest window start at or before it, in the wall-clock time of the schedule's
    zone, and that window's end (the next day when the window wraps past midnight)."""
    if schedule.window is None:
        raise ValueError(f"schedule {schedule.cron!r} has no window")
    start_m, end_m = parse_window(schedule.window)
    tz = ZoneInfo(schedule.timezone)
    wall = fire_time.astimezone(tz).replace(tzinfo=None)
    start = datetime.combine(wall.date(), time()) + timedelta(minutes=start_m)
    if wall < start:
        start -= timedelta(days=1)
    end = datetime.combine(start.date(), time()) + timedelta(minutes=end_m)
    if end_m < start_m:
        end += timedelta(days=1)
    return start.replace(tzinfo=tz).astimezone(UTC), end.replace(tzinfo=tz).astimezone(UTC)


def judge(
    base: WindowStatus, *, finished: datetime | None, running: bool, now: datetime
) -> WindowStatus:
    """``base`` (a run and its window's end) once it is known whether it finished (when)
    or still runs. Finished exactly at the end is inside; running at the end is not."""
    assert base.window_end is not None
    if finished is not None:
        over = (finished - base.window_end).total_seconds()
        return msgspec.structs.replace(base, exceeded=over > 0, exceeded_s=max(over, 0.0))
    if running:
        over = (now - base.window_end).total_seconds()
        return msgspec.structs.replace(
            base, running=True, exceeded=over >= 0, exceeded_s=max(over, 0.0)
        )
    return base


def shown(statuses: Sequence[WindowStatus]) -> WindowStatus:
    """The one status shows of a dataset's windowed schedules: the newest exceeded run,
    else the newest run (by its window's end)."""
    pool = [w for w in statuses if w.exceeded] or list(statuses)
    return max(pool, key=lambda w: w.window_end or datetime.min.replace(tzinfo=UTC))


def overshoot(seconds: float) -> str:
    """``1h 05m``, ``4m 10s``, ``12s``: how far past a window's end, for people."""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def window_exceeded(dataset: str, w: WindowStatus) -> Finding | None:
    """The ``window_exceeded`` rule over one dataset's shown status."""
    if not w.exceeded:
        return None
    end = w.window_end.isoformat(timespec="minutes") if w.window_end else "?"
    how = "is still running" if w.running else "finished"
    return Finding(
        rule=WINDOW_ACTION,
        dataset=dataset,
        severity="warning",
        summary=f"{dataset}: {w.schedule} backup {w.job_id} {how} {overshoot(w.exceeded_s)} "
        f"past the end of its window {w.window} ({end})",
        description="Move the schedule earlier, widen its window, or make the backup "
        "faster (an incremental instead of a full, a smaller dataset).",
    )


@dataclass(frozen=True)
class _Run:
    dataset: str
    schedule: ScheduleConfig
    fire_time: datetime
    base: WindowStatus


class Windows:
    """The window state of every dataset with a windowed schedule, from the catalog."""

    def __init__(
        self,
        cfg: CoordinatorConfig,
        catalog: Catalog,
        heartbeats: HeartbeatStore,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.heartbeats = heartbeats
        self.clock = clock
        self.schedules = {
            name: [s for s in ds.schedules if s.window is not None]
            for name, ds in sorted(cfg.datasets.items())
            if any(s.window is not None for s in ds.schedules)
        }
        self._times = FireTimes()
        self._first_seen: dict[str, datetime] | None = None
        # (dataset, schedule) → (fire time, its settled status): kept until it fires again
        self._settled: dict[tuple[str, ScheduleConfig], tuple[datetime, WindowStatus]] = {}
        self._recorded: set[str] = set()  # job ids with an audit entry (this process)

    async def statuses(self, now: datetime) -> dict[str, list[WindowStatus]]:
        """Per windowed dataset, the newest run of each of its windowed schedules."""
        if not self.schedules:
            return {}
        if self._first_seen is None:
            self._first_seen = await self.catalog.datasets_seen(sorted(self.schedules), now)
        out: dict[str, list[WindowStatus]] = {name: [] for name in self.schedules}
        open_runs: list[_Run] = []
        for name, scheds in self.schedules.items():
            for s in scheds:
                fire = self._times.prev(s, now)
                hit = self._settled.get((name, s))
                if hit is not None and hit[0] == fire:
                    out[name].append(hit[1])
                    continue
                end = window_bounds(s, fire)[1]
                base = WindowStatus(schedule=s.tier, window=s.window or "", window_end=end)
                if fire < self._first_seen.get(name, fire):  # before the dataset: never ran
                    out[name].append(base)
                    self._settled[name, s] = (fire, base)
                    continue
                base = msgspec.structs.replace(base, job_id=job_id(name, s, fire))
                open_runs.append(_Run(name, s, fire, base))
        for run, status, settled in await self._settle(open_runs, now):
            out[run.dataset].append(status)
            if settled:
                self._settled[run.dataset, run.schedule] = (run.fire_time, status)
        return out

    async def _settle(
        self, runs: Sequence[_Run], now: datetime
    ) -> list[tuple[_Run, WindowStatus, bool]]:
        """Each run's status, and whether it can no longer change."""
        if not runs:
            return []
        ids = [r.base.job_id for r in runs if r.base.job_id]
        backups = {b.backup_id: b for b in await self.catalog.get_backups(ids)}
        rest = sorted({r.dataset for r in runs if r.base.job_id not in backups})
        failed = await self.catalog.last_failures(job_kind="backup", datasets=rest) if rest else {}
        running = {
            seen.heartbeat.running_job
            for seen in self.heartbeats.last().values()
            if seen.heartbeat.running_job
        }
        out: list[tuple[_Run, WindowStatus, bool]] = []
        for r in runs:
            jid, end = r.base.job_id, r.base.window_end
            assert jid is not None and end is not None
            b, f = backups.get(jid), failed.get(r.dataset)
            finished = b.finished_at if b else f.updated_at if f and f.job_id == jid else None
            if finished is not None:
                out.append((r, judge(r.base, finished=finished, running=False, now=now), True))
            elif jid in running:
                out.append((r, judge(r.base, finished=None, running=True, now=now), False))
            elif now >= end:
                out.append(await self._past_end(r, now))
            else:  # inside its window, not started yet or between heartbeats
                out.append((r, r.base, False))
        return out

    async def _past_end(self, r: _Run, now: datetime) -> tuple[_Run, WindowStatus, bool]:
        """A run past its window's end without a backup or a failure: ask its job."""
        assert r.base.job_id is not None
        job = await self.catalog.get_job(r.base.job_id)
        if job is None:  # never sent (missed, refused); final once the scheduler gives up
            gone = (now - r.fire_time).total_seconds() > r.schedule.grace_s + _UNSENT_MARGIN_S
            return r, msgspec.structs.replace(r.base, job_id=None), gone
        if job.status in ("dispatched", "running"):
            return r, judge(r.base, finished=None, running=True, now=now), False
        # completed with its backup row not written yet, or failed behind a newer failure
        return r, judge(r.base, finished=job.updated_at, running=False, now=now), True

    async def fill(self, reply: StatusReply) -> StatusReply:
        """A status reply with each dataset's ``window`` and ``windows_exceeded`` (over
        every dataset, not only the reply's page); one of ``StatusBuilder.fillers``."""
        by = {name: shown(s) for name, s in (await self.statuses(self.clock())).items() if s}
        rows = [
            msgspec.structs.replace(r, window=by[r.dataset]) if r.dataset in by else r
            for r in reply.datasets
        ]
        exceeded = sum(1 for w in by.values() if w.exceeded)
        return msgspec.structs.replace(reply, datasets=rows, windows_exceeded=exceeded)

    async def findings(self, now: datetime) -> list[Finding]:
        """``window_exceeded`` per dataset, and one audit entry per run seen exceeding."""
        out: list[Finding] = []
        for name, statuses in (await self.statuses(now)).items():
            for w in statuses:
                if w.exceeded and w.job_id and w.job_id not in self._recorded:
                    await self._record(name, w, now)
            f = window_exceeded(name, shown(statuses)) if statuses else None
            if f is not None:
                out.append(f)
        return out

    async def _record(self, dataset: str, w: WindowStatus, now: datetime) -> None:
        assert w.job_id is not None
        entry = AuditEntry(
            entry_id=f"{WINDOW_ACTION}:{w.job_id}",
            at=now,
            action=WINDOW_ACTION,
            actor=self.cfg.name,
            dataset=dataset,
            backup_id=None if w.running else w.job_id,
            job_id=w.job_id,
            detail=msgspec.json.encode(w).decode(),
        )
        try:
            await self.catalog.append_audit(entry)
        except MosaicError as exc:  # the alert fires all the same; the next pass retries
            log.error("window_exceeded of %s not recorded in the audit trail: %s", w.job_id, exc)
            return
        self._recorded.add(w.job_id)


def attach(cfg: CoordinatorConfig, status: StatusBuilder, alerter: Alerter) -> Windows:
    """The coordinator's windows: they fill its status replies (same catalog, heartbeats
    and clock) and add the ``window_exceeded`` rule to its alerter."""
    windows = Windows(cfg, status.catalog, status.heartbeats, clock=status.clock)
    status.fillers.append(windows.fill)
    alerter.sources.append(windows.findings)
    return windows


def exceeded_counts(entries: Sequence[AuditEntry]) -> Mapping[str, int]:
    """Runs seen exceeding their window, per dataset, from :data:`WINDOW_ACTION` entries."""
    out: dict[str, int] = {}
    for e in entries:
        if e.action == WINDOW_ACTION and e.dataset:
            out[e.dataset] = out.get(e.dataset, 0) + 1
    return out
