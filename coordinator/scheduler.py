"""The scheduler loop: every few seconds, dispatch the scheduled runs that came due.

It stores no state of its own. At start it looks back over the longest grace window
(so runs missed while the coordinator was down still run), then after each pass over
the time since the previous one. Nothing fires twice because a run's job id is a
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import anyio

from coordinator.catalog.base import Catalog
from coordinator.schedule import Run, due_runs
from shared.bus import JOBS_DUPLICATE_WINDOW_S
from shared.config.coordinator import ScheduleConfig
from shared.errors import MosaicError
from shared.vocab import utcnow
from shared.wire.api import ApiError, JobAccepted
from shared.wire.jobs import Job

log = logging.getLogger(__name__)

# Re-publish only well inside the duplicate window, never at its edge.
_MARGIN_S = 60.0

# (the run, its job id) → the job to send, or why none can be built
JobFactory = Callable[[Run, str], Awaitable[Job | ApiError]]
# sends a job: record, audit, publish (coordinator/jobs/dispatch.py)
Send = Callable[[Job], Awaitable[JobAccepted | ApiError]]


class Scheduler:
    """Sends the due runs of ``schedules`` (a key, such as a dataset → its schedules):
    ``jobs`` builds each run's job, ``send`` sends it. ``clock`` is the time source
    (tests move it)."""

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

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Catch up on runs inside their grace window, signal readiness, then loop."""
        if not self.schedules:
            task_status.started()
            return
        longest = max(s.grace_s for scheds in self.schedules.values() for s in scheds)
        last = await self.tick(self.clock() - timedelta(seconds=longest))
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
        for run in due_runs(self.schedules, last_checked, now):
            if run.missed:
                log.warning(
                    "missed %s %s backup of %s due at %s (older than its %.0fs grace)",
                    run.schedule.tier,
                    run.schedule.backup_type,
                    run.dataset,
                    run.fire_time.isoformat(),
                    run.schedule.grace_s,
                )
                continue
            try:
                await self._dispatch_once(run)
            except MosaicError as exc:
                ok = False
                log.error("scheduled job %s not dispatched, retrying: %s", run.job_id, exc)
        return now if ok else last_checked

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
