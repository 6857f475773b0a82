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
from shared.vocab import BackupType, Tier, utcnow
from shared.wire.api import ApiError, ApiReply

log = logging.getLogger(__name__)

# Re-publish only well inside the duplicate window, never at its edge.
_MARGIN_S = 60.0

# (dataset, backup type, job id, the schedule's retention tier)
Dispatch = Callable[[str, BackupType, str, Tier], Awaitable[ApiReply]]


class Scheduler:
    """Dispatches due runs of ``schedules`` (dataset → its schedules) via ``dispatch``
    (dataset, backup type, job id, tier). ``clock`` is the time source (tests move it)."""

    def __init__(
        self,
        schedules: Mapping[str, Sequence[ScheduleConfig]],
        catalog: Catalog,
        dispatch: Dispatch,
        *,
        interval_s: float,
        clock: Callable[[], datetime] = utcnow,
        job_ids: Callable[[Run], str] | None = None,
    ) -> None:
        self.schedules = {ds: list(s) for ds, s in schedules.items() if s}
        self.catalog = catalog
        self.dispatch = dispatch
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
        job = await self.catalog.get_job(job_id)
        if job is not None:
            # real time, not self.clock: JetStream's duplicate window runs on real time
            age = (utcnow() - job.requested_at).total_seconds()
            if job.status != "dispatched" or age >= JOBS_DUPLICATE_WINDOW_S - _MARGIN_S:
                log.debug("scheduled job %s already %s", job_id, job.status)
                return
        reply = await self.dispatch(
            run.dataset, run.schedule.backup_type, job_id, run.schedule.tier
        )
        if isinstance(reply, ApiError):
            log.error("scheduled job %s refused: %s", job_id, reply.message)
        else:
            log.info("dispatched scheduled job %s (due %s)", job_id, run.fire_time.isoformat())
