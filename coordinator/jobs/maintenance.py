"""The :class:`Maintenance` jobs the coordinator orders: their schedules and how each
job is built (the plan itself, pure, is ``coordinator/maintenance.py``).

Its scheduler is the backups' :class:`~coordinator.scheduler.Scheduler` with this
class's job factory (:meth:`Maintenance.for_run`), and every job, scheduled or an
operator's drill, is sent by the one dispatch path (``coordinator/jobs/dispatch.py``):
recorded, audited, published in a span. Results come back as events, recorded by
``coordinator/jobs/record.py``; :meth:`Maintenance.findings` turns the newest of them
into the ``verify_failed`` and ``drill_failed`` alerts.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from datetime import datetime, timedelta

from coordinator import retention
from coordinator.alerts import Finding, drill_failed, verify_failed
from coordinator.catalog.base import Catalog
from coordinator.jobs import SCHEDULER
from coordinator.maintenance import (
    Task,
    known_tier,
    plan_tasks,
    tier_of,
    token,
    with_replica_upkeep,
)
from coordinator.schedule import Run
from coordinator.scheduler import Scheduler, Send
from shared.config.coordinator import CoordinatorConfig, MaintenanceConfig, ScheduleConfig
from shared.vocab import utcnow
from shared.wire.api import ApiError, ApiReply, DrillRequest, VerifyRequest
from shared.wire.jobs import DrillJob, MaintenanceJob, PruneJob, ReplicateJob, VerifyJob

DRILL_WINDOW = timedelta(days=7)  # a drill restores a backup of the past week
HISTORY = 100_000  # backups read per dataset when prune applies retention
VERIFY_IDS_MAX = 5_000  # more backups than this: an operator verify checks the whole target


class Maintenance:
    """Schedules maintenance, builds its jobs, feeds alerts.

    ``send`` sends a job (``Dispatcher.dispatch``); ``clock`` is the scheduler's time
    source, also used for retention and the drill window."""

    def __init__(
        self,
        cfg: CoordinatorConfig,
        catalog: Catalog,
        send: Send,
        *,
        clock: Callable[[], datetime] = utcnow,
        append_only: Callable[[str, str], bool] = lambda agent, target: False,
    ) -> None:
        self.cfg = cfg
        self.m = cfg.maintenance or MaintenanceConfig()
        # (agent, target) -> the agent's last heartbeat declares that target append-only
        self.append_only = append_only
        self.catalog = catalog
        self.send = send
        self.clock = clock
        self.tasks = {f"m{i}": t for i, t in enumerate(with_replica_upkeep(plan_tasks(cfg)))}
        self.scheduler = Scheduler(
            self._schedules() if cfg.maintenance is not None else {},
            catalog,
            self.for_run,
            send,
            interval_s=cfg.scheduler_interval_s,
            clock=clock,
            job_ids=self.job_id,
            first_seen=False,  # keyed by task, not dataset: no first appearance
        )

    def _schedules(self) -> dict[str, list[ScheduleConfig]]:
        out: dict[str, list[ScheduleConfig]] = {}
        for key, task in self.tasks.items():
            cron: str = getattr(self.m, f"{task.kind}_cron")
            if cron:
                out[key] = [
                    ScheduleConfig(
                        cron=cron,
                        timezone=self.m.timezone,
                        backup_type="full",  # unused: maintenance jobs are not backups
                        grace_s=self.m.grace_s,
                    )
                ]
        return out

    def job_id(self, run: Run) -> str:
        task = self.tasks[run.dataset]
        return token(task.kind, task.name, run.fire_time.strftime("%Y%m%dT%H%MZ"))

    async def for_run(self, run: Run, job_id: str) -> MaintenanceJob | ApiError:
        """The job factory of the maintenance schedules (a run's key is its task's)."""
        return await self.build(self.tasks[run.dataset], job_id)

    # --- building jobs ----------------------------------------------------------------

    async def build(
        self,
        task: Task,
        job_id: str,
        *,
        backup_id: str | None = None,
        requested_by: str | None = None,
    ) -> MaintenanceJob | ApiError:
        now, at = self.clock(), utcnow()
        who = requested_by or (SCHEDULER if backup_id is None else "operator")
        if task.kind == "verify":
            seed = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big")
            return VerifyJob(
                job_id=job_id,
                agent=task.agent,
                target=task.target,
                subset=self.m.verify_subset,
                seed=seed,
                requested_at=at,
            )
        if task.kind == "prune":
            if self.append_only(task.agent, task.target):
                return ApiError(
                    code="invalid",
                    message=(
                        f"prune of target {task.target!r} not sent: agent {task.agent!r} "
                        "declares it append-only (it cannot delete); set [maintenance] agent "
                        "in coordinator.toml to an agent with full-rights credentials"
                    ),
                )
            return PruneJob(
                job_id=job_id,
                agent=task.agent,
                target=task.target,
                forget=await self.expired(task, now),
                dry_run=self.m.prune_dry_run,
                gc_margin_s=self.m.gc_margin_s,
                requested_at=at,
            )
        if task.kind == "replicate":
            return ReplicateJob(
                job_id=job_id,
                agent=task.agent,
                target=task.target,
                to_target=task.to_target,
                datasets=list(task.datasets),
                requested_at=at,
            )
        return await self._drill_job(task, job_id, now, at, backup_id, who)

    async def expired(self, task: Task, now: datetime) -> list[str]:
        """The backups on the task's target that retention expires for its tier: those
        stored there first and the copies replicated there, judged together, so a
        dataset's newest backup held on this target is kept whatever else holds it."""
        target_tier = self.m.target_tiers.get(task.target, "local")
        found: list[retention.Backup] = []
        for name in task.datasets:
            rows = await self.catalog.list_backups(dataset=name, limit=HISTORY)
            found.extend(
                retention.Backup(
                    b.backup_id, name, tier_of(b.backup_id, name, b.tier), b.finished_at
                )
                for b in rows
                if b.target == task.target
            )
        wanted = set(task.datasets)
        found.extend(
            retention.Backup(
                c.backup_id,
                c.dataset,
                tier_of(c.backup_id, c.dataset, known_tier(c.tier)),
                c.finished_at,
            )
            for c in await self.catalog.copies_on(task.target)
            if c.dataset in wanted
        )
        decisions = retention.select(found, self.cfg.retention, target_tier, now)
        return sorted(d.backup.backup_id for d in decisions if not d.keep)

    async def _drill_job(
        self,
        task: Task,
        job_id: str,
        now: datetime,
        at: datetime,
        backup_id: str | None,
        who: str,
    ) -> DrillJob | ApiError:
        rows = [
            b
            for b in await self.catalog.list_backups(
                dataset=task.dataset, since=now - DRILL_WINDOW, limit=HISTORY
            )
            if b.finished_at <= now
        ]
        if backup_id is not None:
            chosen = await self.catalog.get_backup(backup_id)
            if chosen is None or chosen.dataset != task.dataset:
                return ApiError(
                    code="unknown_backup",
                    message=f"backup '{backup_id}' is not a backup of {task.dataset} "
                    "(see: mosaic-backup list --dataset NAME)",
                )
        elif not rows:
            return ApiError(
                code="no_backup",
                message=f"no backup of {task.dataset} in the past {DRILL_WINDOW.days} days to "
                "drill (run: mosaic-backup backup --dataset NAME)",
            )
        else:
            # seeded by the job id: a re-dispatch of the same run picks the same backup
            chosen = random.Random(job_id).choice(sorted(rows, key=lambda b: b.backup_id))
        newest = await self.catalog.last_backup(task.dataset)
        return DrillJob(
            job_id=job_id,
            dataset=task.dataset,
            agent=chosen.agent,
            target=chosen.target,
            backup_id=chosen.backup_id,
            scratch=self.m.drill_scratch,
            newest_at=newest.finished_at if newest is not None else None,
            requested_at=at,
            requested_by=who,
        )

    async def start_drill(self, req: DrillRequest) -> ApiReply:
        """``mosaic-backup drill run DATASET``: a drill now, under a fresh job id."""
        task = next(
            (t for t in self.tasks.values() if t.kind == "drill" and t.dataset == req.dataset),
            None,
        )
        if task is None:
            known = ", ".join(sorted(self.cfg.datasets)) or "none configured"
            return ApiError(
                code="unknown_dataset", message=f"unknown dataset '{req.dataset}' (known: {known})"
            )
        job_id = token(
            "drill", req.dataset, f"{utcnow():%Y%m%dT%H%M%SZ}", random.randbytes(3).hex()
        )
        job = await self.build(task, job_id, backup_id=req.backup_id, requested_by=req.requested_by)
        return job if isinstance(job, ApiError) else await self.send(job)

    async def start_verify(self, req: VerifyRequest) -> ApiReply:
        """``mosaic-backup verify``: one backup, or every backup of a dataset on its
        target, checked now by the agent that verifies that target on schedule (it holds
        the key). Recorded like a scheduled verify, under the dataset, so its outcome
        raises or resolves ``verify_failed`` for that dataset only."""
        if not 0 < req.subset <= 100:
            return ApiError(
                code="invalid", message=f"subset {req.subset:g}%: give a share from 0 to 100 %"
            )
        scope = await self._verify_scope(req)
        if isinstance(scope, ApiError):
            return scope
        dataset, target, ids = scope
        task = next(
            (
                t
                for t in self.tasks.values()
                if t.kind == "verify" and t.target == target and dataset in t.datasets
            ),
            None,
        )
        if task is None:
            return ApiError(
                code="unknown_dataset",
                message=f"dataset '{dataset}' on target '{target}' is not in coordinator.toml "
                "any more: nothing verifies it (see: mosaic-backup status)",
            )
        job_id = token("verify", dataset, f"{utcnow():%Y%m%dT%H%M%SZ}", random.randbytes(3).hex())
        job = VerifyJob(
            job_id=job_id,
            dataset=dataset,
            agent=task.agent,
            target=target,
            read_data=req.read_data,
            subset=req.subset,
            seed=int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big"),
            requested_at=utcnow(),
            requested_by=req.requested_by,
            backup_ids=ids if len(ids) <= VERIFY_IDS_MAX else [],
        )
        return await self.send(job)

    async def _verify_scope(self, req: VerifyRequest) -> tuple[str, str, list[str]] | ApiError:
        """(dataset, target, backup ids) a verify request names."""
        if req.backup_id is not None:
            b = await self.catalog.get_backup(req.backup_id)
            if b is None:
                return ApiError(
                    code="unknown_backup",
                    message=f"no backup '{req.backup_id}' in the catalog (see: mosaic-backup list)",
                )
            return b.dataset, b.target, [b.backup_id]
        ds = self.cfg.datasets.get(req.dataset or "")
        if ds is None or req.dataset is None:
            known = ", ".join(sorted(self.cfg.datasets)) or "none configured"
            return ApiError(
                code="unknown_dataset",
                message=f"unknown dataset '{req.dataset or ''}' (known: {known}); "
                "name a dataset or a backup id",
            )
        rows = await self.catalog.list_backups(dataset=req.dataset, limit=HISTORY)
        ids = sorted(r.backup_id for r in rows if r.target == ds.target)
        if not ids:
            return ApiError(
                code="no_backup",
                message=f"no backup of {req.dataset} on target {ds.target} to verify "
                "(run: mosaic-backup backup --dataset NAME)",
            )
        return req.dataset, ds.target, ids

    # --- alerts -----------------------------------------------------------------------

    async def findings(self, now: datetime) -> list[Finding]:
        """``verify_failed`` per dataset on a target whose newest verify failed, and
        ``drill_failed`` per dataset whose newest drill failed."""
        out: list[Finding] = []
        for task in self.tasks.values():
            if task.kind == "verify":
                rows = await self.catalog.list_maintenance(
                    kind="verify", target=task.target, limit=50
                )
                for name in task.datasets:
                    # the newest verify of the whole target, or of this dataset alone
                    last = next(
                        (r for r in rows if r.agent == task.agent and r.dataset in ("", name)),
                        None,
                    )
                    passed = None if last is None else last.outcome == "passed"
                    detail = last.summary if last is not None else ""
                    f = verify_failed(name, task.target, passed, detail)
                    if f is not None:
                        out.append(f)
            elif task.kind == "drill":
                rows = await self.catalog.list_maintenance(
                    kind="drill", dataset=task.dataset, limit=1
                )
                passed = None if not rows else rows[0].outcome == "passed"
                f = drill_failed(task.dataset, passed, rows[0].summary if rows else "")
                if f is not None:
                    out.append(f)
        return out
