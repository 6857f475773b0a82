"""The scheduler loop: every few seconds, dispatch the scheduled runs that came due.

It stores no state of its own beyond the catalog. At start it looks back over the
longest grace window (so a run missed while the coordinator was down still runs), then
after each pass over the time since the previous one. Of the runs of one schedule due in
one pass only the newest runs (``schedule.collapse``): after an outage a schedule that
fires every minute runs once, not sixty times. A run older than the dataset's first
appearance in the config (``Catalog.datasets_seen``, recorded at the first start that
knew it) never runs. Skipped runs are logged, and the missed and superseded ones get a
``schedule_skipped`` audit entry (one per schedule and pass), which status shows.

Nothing fires twice because a run's job id is a
function of the run (``schedule.job_id``): a run whose job is already in the catalog is
skipped, and a re-publish still inside JetStream's duplicate window is dropped by the
server (``Nats-Msg-Id``). What to run when is decided by the pure ``schedule`` module.

A job recorded as ``dispatched`` but never started may be one whose publish was lost
in a crash between the catalog write and the publish, so it is published again while
JetStream would still drop it as a duplicate if the first publish did get through.

One scheduler knows nothing of what it schedules: a job factory turns a due run into a
job (``coordinator/jobs/backup.py`` for backups, ``coordinator/jobs/maintenance.py``
for verify, prune, replicate and drills) and ``send`` (``Dispatcher.dispatch``) sends
it, so a scheduled job goes scheduler → factory → dispatch and back, once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec

from coordinator.catalog.base import AuditEntry, Catalog
from coordinator.schedule import SKIP_BEFORE_DATASET, Run, collapse, due_runs
from shared.bus import JOBS_DUPLICATE_WINDOW_S
from shared.config.coordinator import ScheduleConfig
from shared.errors import MosaicError
from shared.vocab import utcnow
from shared.wire.api import ApiError, JobAccepted
from shared.wire.jobs import Job
from shared.wire.status import SkippedRuns

log = logging.getLogger(__name__)

# Re-publish only well inside the duplicate window, never at its edge.
_MARGIN_S = 60.0
SKIPPED_ACTION = "schedule_skipped"  # the audit action of skipped runs

# (the run, its job id) → the job to send, or why none can be built
JobFactory = Callable[[Run, str], Awaitable[Job | ApiError]]
# sends a job: record, audit, publish (coordinator/jobs/dispatch.py)
Send = Callable[[Job], Awaitable[JobAccepted | ApiError]]


class Scheduler:
    """Sends the due runs of ``schedules`` (a key, such as a dataset → its schedules):
    ``jobs`` builds each run's job, ``send`` sends it. ``clock`` is the time source
    (tests move it). ``first_seen``: the keys are datasets whose first appearance bounds
    the runs (the maintenance schedules, keyed by task, pass False)."""

    def __init__(
        self,
        schedules: Mapping[str, Sequence[ScheduleConfig]],
        catalog: Catalog,
        jobs: JobFactory,
        send: Send,
        *,
        interval_s: float,
        clock: Callable[[], datetime] = utcnow,
        job_ids: Callable[[Run], str] | None = None,
        first_seen: bool = True,
    ) -> None:
        self.schedules = {ds: list(s) for ds, s in schedules.items() if s}
        self.catalog = catalog
        self.jobs = jobs
        self.send = send
        self.interval_s = interval_s
        self.clock = clock
        # A run's job id; the maintenance schedules (coordinator/maintenance.py) name
        # their jobs after the task instead of a backup tier and type.
        self.job_ids = job_ids or (lambda run: run.job_id)
        self.track_first_seen = first_seen
        self.first_seen: dict[str, datetime] = {}  # dataset → first appearance (at start)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Catch up on runs inside their grace window, signal readiness, then loop."""
        if not self.schedules:
            task_status.started()
            return
        longest = max(s.grace_s for scheds in self.schedules.values() for s in scheds)
        start = self.clock()
        while self.track_first_seen:  # without it a new dataset would "catch up": wait
            try:
                self.first_seen = await self.catalog.datasets_seen(sorted(self.schedules), start)
                break
            except MosaicError as exc:
                log.error("datasets' first appearance not read, retrying: %s", exc)
                await anyio.sleep(self.interval_s)
        last = await self.tick(start - timedelta(seconds=longest))
        task_status.started()
        while True:
            await anyio.sleep(self.interval_s)
            last = await self.tick(last)

    async def tick(self, last_checked: datetime) -> datetime:
        """Dispatch the runs due in (last_checked, now]; return where the next pass
        starts: ``now``, or ``last_checked`` again if a dispatch failed, so the failed
        run is retried (runs that did go out are then skipped by their id)."""
        now = self.clock()
        ok = True
        runs = collapse(due_runs(self.schedules, last_checked, now), self.first_seen)
        for run in runs:
            if run.missed:
                continue
            try:
                await self._dispatch_once(run)
            except MosaicError as exc:
                ok = False
                log.error("scheduled job %s not dispatched, retrying: %s", run.job_id, exc)
        await self._report_skipped([r for r in runs if r.missed])
        return now if ok else last_checked

    async def _report_skipped(self, runs: Sequence[Run]) -> None:
        """One log line, and (but for runs before the dataset existed) one audit entry,
        per dataset × schedule × reason. The entry's id is its newest skipped job's, so
        a pass seen twice (a retried window, a second coordinator) adds no second line."""
        groups: dict[tuple[str, ScheduleConfig, str], list[Run]] = defaultdict(list)
        for r in runs:
            groups[r.dataset, r.schedule, r.skipped].append(r)
        for (dataset, sched, reason), group in groups.items():
            detail = SkippedRuns(
                reason=reason,
                tier=sched.tier,
                backup_type=sched.backup_type,
                count=len(group),
                first=group[0].fire_time,  # due_runs: oldest first
                last=group[-1].fire_time,
                at=utcnow(),
            )
            if reason == SKIP_BEFORE_DATASET:  # a new dataset: status says "pending"
                log.info("%s: %s", dataset, _describe(detail))
                continue
            try:
                await self._record_skipped(dataset, self.job_ids(group[-1]), detail)
            except MosaicError as exc:  # the runs are skipped all the same: say so, go on
                log.error("skipped runs of %s not recorded in the audit trail: %s", dataset, exc)

    async def _record_skipped(self, dataset: str, job_id: str, detail: SkippedRuns) -> None:
        if await self.catalog.get_job(job_id) is not None:
            return  # they did run: a previous coordinator sent them (restart, fail-over)
        log.warning("%s: %s", dataset, _describe(detail))
        assert detail.at is not None
        entry = AuditEntry(
            entry_id=f"{SKIPPED_ACTION}:{job_id}",
            at=detail.at,
            action=SKIPPED_ACTION,
            actor="scheduler",
            dataset=dataset,
            job_id=job_id,
            detail=msgspec.json.encode(detail).decode(),
        )
        await self.catalog.append_audit(entry)

    async def _dispatch_once(self, run: Run) -> None:
        job_id = self.job_ids(run)
        seen = await self.catalog.get_job(job_id)
        if seen is not None:
            # real time, not self.clock: JetStream's duplicate window runs on real time
            age = (utcnow() - seen.requested_at).total_seconds()
            if seen.status != "dispatched" or age >= JOBS_DUPLICATE_WINDOW_S - _MARGIN_S:
                log.debug("scheduled job %s already %s", job_id, seen.status)
                return
        job = await self.jobs(run, job_id)
        reply = job if isinstance(job, ApiError) else await self.send(job)
        if isinstance(reply, ApiError):
            log.error("scheduled job %s refused: %s", job_id, reply.message)
        else:
            log.info("dispatched scheduled job %s (due %s)", job_id, run.fire_time.isoformat())


def _describe(s: SkippedRuns) -> str:
    """``skipped 59 daily incremental run(s) due 10:01..10:59 (superseded)``."""
    first = s.first.isoformat() if s.first else "?"
    last = s.last.isoformat() if s.last else "?"
    return f"skipped {s.count} {s.tier} {s.backup_type} run(s) due {first}..{last} ({s.reason})"
