"""The one path every job the coordinator starts goes out by: record → audit → publish,
inside one span.

Operator requests (backup, restore, drill), scheduled backups and scheduled maintenance
(verify, prune, replicate, drill) all come here once their job is built
(``coordinator/jobs/backup.py``, ``coordinator/jobs/maintenance.py``), so each of them:

1. is recorded in the catalog as ``dispatched`` (the scheduler skips a run whose job is
   there; a crash after this write is repaired by publishing again, see scheduler.py);
2. leaves an audit entry, stored before the job can run (``<kind>_scheduled`` for the
   scheduler, ``<kind>_requested`` for an operator; the entry id is the job id, so a
   re-dispatch after a fail-over leaves no second line);
3. is published under its job id as ``Nats-Msg-Id`` (JetStream drops a re-publish), with
   the traceparent of the ``dispatch <kind> <dataset>`` span that wraps all three: the
   root of the job's trace.

A publish that fails raises :class:`~shared.errors.BusError` (retryable): the scheduler
tries the run again on its next pass, the operator API answers with the error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.errors import Error as NatsError

from coordinator.audit import AuditTrail
from coordinator.catalog.base import Catalog
from coordinator.jobs import SCHEDULER
from shared import tracing
from shared.bus import Bus
from shared.errors import BusError
from shared.wire.api import ApiError, JobAccepted
from shared.wire.base import tag_of
from shared.wire.jobs import BackupJob, DrillJob, Job, PruneJob, ReplicateJob, RestoreJob
from shared.wire.records import JobRecord

log = logging.getLogger(__name__)


def audit_action(job: Job) -> str:
    """``backup_scheduled``, ``restore_requested``, ``verify_scheduled`` …"""
    return f"{tag_of(job)}_{'scheduled' if job.requested_by == SCHEDULER else 'requested'}"


def audit_detail(job: Job) -> str:
    """What the audit line says beyond dataset, backup and job id (never a secret)."""
    if isinstance(job, RestoreJob):
        paths = f" paths {', '.join(job.paths)}" if job.paths else ""
        return f"to {job.destination}{paths}"
    if isinstance(job, PruneJob):
        dry = " (dry run)" if job.dry_run else ""
        return f"target {job.target}: forget {len(job.forget)} backup(s){dry}"
    if isinstance(job, ReplicateJob):
        return f"target {job.target} to {job.to_target}"
    if isinstance(job, BackupJob | DrillJob):
        return ""
    return f"target {job.target}"


def backup_of(job: Job) -> str | None:
    """The backup a job makes or reads (None: a job about a whole target)."""
    return job.backup_id if isinstance(job, BackupJob | RestoreJob | DrillJob) else None


class Dispatcher:
    """Sends jobs; ``bus`` returns the coordinator's bus (None until it connects)."""

    def __init__(self, catalog: Catalog, audit: AuditTrail, bus: Callable[[], Bus | None]) -> None:
        self.catalog = catalog
        self.audit = audit
        self.bus = bus

    async def dispatch(self, job: Job) -> JobAccepted | ApiError:
        bus = self.bus()
        if bus is None:
            return ApiError(code="unavailable", message="the coordinator is not connected")
        kind = tag_of(job)
        with tracing.span(
            f"dispatch {kind} {job.dataset or job.target}",
            scope="mosaic.coordinator",
            attributes={
                "mosaic.job_id": job.job_id,
                "mosaic.job_kind": kind,
                "mosaic.dataset": job.dataset,
                "mosaic.agent": job.agent,
                "mosaic.target": job.target,
                "mosaic.requested_by": job.requested_by,
            },
        ):
            await self._record(job, kind)
            try:
                duplicate = await bus.publish_job(job)
            except NatsError as exc:
                raise BusError(f"{kind} job {job.job_id}: publish failed: {exc!r}") from exc
            log.info(  # inside the span: the log line carries the job's trace id
                "dispatched %s job %s to agent %s%s",
                kind,
                job.job_id,
                job.agent,
                " (duplicate, dropped by JetStream)" if duplicate else "",
            )
        return JobAccepted(job_id=job.job_id, agent=job.agent, duplicate=duplicate)

    async def _record(self, job: Job, kind: str) -> None:
        """The catalog row and the audit entry, both stored before the publish."""
        backup_id = backup_of(job)
        await self.catalog.record_job(
            JobRecord(
                job_id=job.job_id,
                job_kind=kind,
                dataset=job.dataset,
                agent=job.agent,
                target=job.target,
                status="dispatched",
                requested_at=job.requested_at,
                updated_at=job.requested_at,
                backup_id=backup_id,
            )
        )
        action = audit_action(job)
        await self.audit.record(
            action,
            job.requested_by,
            entry_id=f"{action}:{job.job_id}",
            dataset=job.dataset or None,
            backup_id=backup_id,
            job_id=job.job_id,
            detail=audit_detail(job),
        )
