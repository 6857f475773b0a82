"""Backup and restore jobs, built from the config and the catalog (nothing is sent here:
``coordinator/jobs/dispatch.py`` sends what this builds).

A scheduled run's job id is deterministic (``schedule.job_id``), an operator's is fresh
(:func:`new_job_id`); a backup's parent is the dataset's last backup on the same target,
so an incremental never chains across targets.
"""

from __future__ import annotations

import os

from coordinator.catalog.base import Catalog
from coordinator.jobs import SCHEDULER
from coordinator.schedule import Run
from shared.config.coordinator import CoordinatorConfig
from shared.vocab import BackupType, Tier, utcnow
from shared.wire.api import ApiError, BackupRequest, RestoreRequest
from shared.wire.jobs import BackupJob, RestoreJob


def new_job_id(kind: str, dataset: str) -> str:
    return f"{kind}-{dataset}-{utcnow():%Y%m%dT%H%M%SZ}-{os.urandom(3).hex()}"


class BackupJobs:
    """Builds backup jobs (operator and scheduled) and restore jobs."""

    def __init__(self, cfg: CoordinatorConfig, catalog: Catalog) -> None:
        self.cfg = cfg
        self.catalog = catalog

    async def backup(
        self,
        dataset: str,
        backup_type: BackupType,
        job_id: str,
        requested_by: str,
        tier: Tier | None,
    ) -> BackupJob | ApiError:
        ds = self.cfg.datasets.get(dataset)
        if ds is None:
            known = ", ".join(sorted(self.cfg.datasets)) or "none configured"
            return ApiError(
                code="unknown_dataset", message=f"unknown dataset '{dataset}' (known: {known})"
            )
        parent = await self.catalog.last_backup(dataset)
        return BackupJob(
            job_id=job_id,
            backup_id=job_id,
            dataset=dataset,
            agent=ds.agent,
            target=ds.target,
            source=ds.source,
            backup_type=backup_type,
            parent_backup_id=parent.backup_id if parent and parent.target == ds.target else None,
            requested_at=utcnow(),
            requested_by=requested_by,
            tier=tier,
        )

    async def for_run(self, run: Run, job_id: str) -> BackupJob | ApiError:
        """The job factory of the backup schedules: one scheduled run, under its
        deterministic job id, with the tier of the schedule that fired."""
        return await self.backup(
            run.dataset, run.schedule.backup_type, job_id, SCHEDULER, run.schedule.tier
        )

    async def requested(self, req: BackupRequest) -> BackupJob | ApiError:
        """An operator's backup. Without ``--tier``, a full one is kept like a weekly
        full, an incremental like a daily one ("Retention tiers" in the docs)."""
        tier = req.tier or ("weekly" if req.backup_type == "full" else "daily")
        job_id = new_job_id("backup", req.dataset)
        return await self.backup(req.dataset, req.backup_type, job_id, req.requested_by, tier)

    async def restore(self, req: RestoreRequest) -> RestoreJob | ApiError:
        b = await self.catalog.get_backup(req.backup_id)
        if b is None:
            return ApiError(
                code="unknown_backup",
                message=f"unknown backup '{req.backup_id}' (see: mosaic-backup list)",
            )
        if not os.path.isabs(req.destination):
            return ApiError(
                code="bad_request",
                message=f"restore destination {req.destination!r} must be absolute",
            )
        return RestoreJob(
            job_id=new_job_id("restore", b.dataset),
            backup_id=b.backup_id,
            dataset=b.dataset,
            agent=b.agent,
            target=b.target,
            destination=req.destination,
            requested_at=utcnow(),
            requested_by=req.requested_by,
            paths=req.paths,
            pitr=req.pitr,
        )
