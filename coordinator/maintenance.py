"""Maintenance the coordinator orders: verify, prune, replicate, and restore drills.

The coordinator owns the schedule, the catalog and the retention policy; agents own the
data. So the coordinator decides (which backups retention expires on a target, which
backup a drill restores, how much a verify reads) and publishes one job; the agent that
holds the target carries it out and reports one result event, which lands here, in the
catalog's ``maintenance`` table, and feeds two alert rules (``verify_failed``,
``drill_failed``).

Tasks come from the datasets: every (agent, target) that stores a dataset gets verify
and prune (run by ``[maintenance] agent`` when set: the maintenance role that may
delete), each ``replicate`` pair gets a copy job, every dataset gets a drill. They fire
through the same :class:`~coordinator.scheduler.Scheduler` as backups, so a run missed
while the coordinator was down still runs inside the grace window and nothing fires
twice: a run's job id is ``<task>-<agent>-<target>[-<to>]-<UTC minute>`` (a drill:
``drill-<dataset>-<minute>``), checked against the catalog and used as the JetStream
``Nats-Msg-Id``.

Retention needs each backup's tier: the catalog's ``tier`` column (the schedule that
fired, or the operator's ``backup --tier``). Rows recorded before that column existed
fall back to the scheduled backup id (``sched-<dataset>-<tier>-<type>-<time>``), and
any other old backup counts as ``daily``, the shortest-lived tier. The newest backup of
a dataset is always kept.

A replicate result lists the backups the replica holds; they are recorded as catalog
copies (``backup_copies``), which ``list`` and the 3-2-1 check read. Every replica
target is pruned too (by the agent that replicates to it), with its own target tier
(``[maintenance] target_tiers``: daily 14 days on a remote target where the local one
keeps 7), over its copies; a finished prune there removes those copy rows.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

import msgspec

from coordinator import retention
from coordinator.alerts import Finding, drill_failed, verify_failed
from coordinator.catalog.base import Catalog
from coordinator.schedule import Run
from coordinator.scheduler import Scheduler
from shared.bus import Bus
from shared.config.coordinator import CoordinatorConfig, MaintenanceConfig, ScheduleConfig
from shared.vocab import BackupType, Tier, utcnow
from shared.wire.api import ApiError, ApiReply, DrillRequest, JobAccepted
from shared.wire.events import (
    DrillCompleted,
    Event,
    JobFailed,
    PruneCompleted,
    ReplicateCompleted,
    VerifyCompleted,
)
from shared.wire.jobs import DrillJob, MaintenanceJob, PruneJob, ReplicateJob, VerifyJob
from shared.wire.records import JobRecord, MaintenanceRecord

log = logging.getLogger(__name__)

Kind = Literal["verify", "prune", "replicate", "drill"]
KINDS: tuple[str, ...] = get_args(Kind)
DRILL_WINDOW = timedelta(days=7)  # a drill restores a backup of the past week
HISTORY = 100_000  # backups read per dataset when prune applies retention
_MAX_TOKEN = 128
_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Task:
    """One recurring maintenance task (what a schedule fires)."""

    kind: Kind
    agent: str
    target: str
    to_target: str = ""
    dataset: str = ""  # drills
    datasets: tuple[str, ...] = ()  # datasets stored on ``target`` (verify, prune, replicate)

    @property
    def name(self) -> str:
        if self.kind == "drill":
            return self.dataset
        return "-".join(p for p in (self.agent, self.target, self.to_target) if p)


def token(*parts: str) -> str:
    """Parts joined by ``-``; too long for one subject token: shortened plus a hash."""
    text = "-".join(parts)
    if len(text) <= _MAX_TOKEN:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{text[: _MAX_TOKEN - 13]}-{digest}"


def plan_tasks(cfg: CoordinatorConfig) -> list[Task]:
    """Every maintenance task the config implies (pure; in a stable order)."""
    m = cfg.maintenance or MaintenanceConfig()
    stored: dict[tuple[str, str], list[str]] = {}
    for name, ds in sorted(cfg.datasets.items()):
        stored.setdefault((m.agent or ds.agent, ds.target), []).append(name)
    tasks: list[Task] = []
    for (agent, target), names in sorted(stored.items()):
        tasks.append(Task("verify", agent, target, datasets=tuple(names)))
        tasks.append(Task("prune", agent, target, datasets=tuple(names)))
        tasks.extend(
            Task("replicate", agent, target, to_target=to, datasets=tuple(names))
            for to in m.replicate.get(target, [])
        )
    tasks.extend(
        Task("drill", ds.agent, ds.target, dataset=name)
        for name, ds in sorted(cfg.datasets.items())
    )
    return tasks


def with_replica_upkeep(tasks: list[Task]) -> list[Task]:
    """``tasks`` plus a verify and a prune of every replica target, by the agent that
    replicates to it, over the datasets copied there (pure): a replica is checked and
    expired by its own tier like any target. A replica that is also a primary target of
    that agent gets its datasets added to the existing task instead, so one job checks
    or prunes one target. Appended, so the keys of the other tasks do not move."""
    out = list(tasks)
    for kind in ("verify", "prune"):
        for task in tasks:
            if task.kind != "replicate":
                continue
            at = next(
                (
                    i
                    for i, t in enumerate(out)
                    if t.kind == kind and (t.agent, t.target) == (task.agent, task.to_target)
                ),
                None,
            )
            if at is None:
                out.append(Task(kind, task.agent, task.to_target, datasets=task.datasets))
            else:
                merged = tuple(sorted({*out[at].datasets, *task.datasets}))
                out[at] = Task(kind, task.agent, task.to_target, datasets=merged)
    return out


def tier_of(backup_id: str, dataset: str, recorded: Tier | None = None) -> Tier:
    """The retention tier of a backup: the catalog's (``recorded``), else from its
    scheduled job id, else ``daily``."""
    if recorded is not None:
        return recorded
    head = f"sched-{dataset}-"
    if backup_id.startswith(head):
        tier = backup_id[len(head) :].split("-", 1)[0]
        if tier in get_args(Tier):
            return tier  # type: ignore[return-value]
    return "daily"


def _tier(value: str | None) -> Tier | None:
    return value if value in get_args(Tier) else None  # type: ignore[return-value]


def summarize(ev: Event) -> str:
    """One line for ``drill report`` and the catalog."""
    if isinstance(ev, VerifyCompleted):
        if ev.damaged:
            return f"{ev.damaged} damaged object(s): {', '.join(ev.damaged_objects[:3])}"
        return f"{ev.backups} backups, {ev.packs_read}/{ev.packs} packs read, no damage"
    if isinstance(ev, PruneCompleted):
        dry = "would forget" if ev.dry_run else "forgot"
        text = f"{dry} {len(ev.forgotten)} backup(s), {ev.packs_removed} pack(s) removed"
        if ev.locked:
            text += f", {ev.locked} Object-Locked pack(s) kept"
        return text + (f"; deferred: {ev.deferred}" if ev.deferred else "")
    if isinstance(ev, ReplicateCompleted):
        behind = {d: v for d, v in ev.lag_s.items() if v}
        lag = ", ".join(f"{d} {v:.0f}s behind" for d, v in sorted(behind.items())) or "in sync"
        return f"copied {ev.copied} object(s) to {ev.to_target}; {lag}"
    if isinstance(ev, DrillCompleted):
        return "; ".join(f"{c.name}: {'ok' if c.ok else 'FAILED'} ({c.detail})" for c in ev.checks)
    if isinstance(ev, JobFailed):
        return f"{ev.code}: {ev.message}"
    return ""


class Maintenance:
    """Schedules maintenance, dispatches its jobs, records results, feeds alerts.

    ``bus`` returns the coordinator's bus (None until it connects); ``clock`` is the
    scheduler's time source, also used for retention and the drill window."""

    def __init__(
        self,
        cfg: CoordinatorConfig,
        catalog: Catalog,
        bus: Callable[[], Bus | None],
        *,
        clock: Callable[[], datetime] = utcnow,
        append_only: Callable[[str, str], bool] = lambda agent, target: False,
    ) -> None:
        self.cfg = cfg
        self.m = cfg.maintenance or MaintenanceConfig()
        # (agent, target) -> the agent's last heartbeat declares that target append-only
        self.append_only = append_only
        self.catalog = catalog
        self.bus = bus
        self.clock = clock
        self.tasks = {f"m{i}": t for i, t in enumerate(with_replica_upkeep(plan_tasks(cfg)))}
        self.scheduler = Scheduler(
            self._schedules() if cfg.maintenance is not None else {},
            catalog,
            self._dispatch_run,
            interval_s=cfg.scheduler_interval_s,
            clock=clock,
            job_ids=self.job_id,
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

    async def _dispatch_run(
        self, key: str, _type: BackupType, job_id: str, _tier: Tier
    ) -> ApiReply:
        return await self.dispatch(self.tasks[key], job_id)

    # --- dispatch ---------------------------------------------------------------------

    async def dispatch(
        self,
        task: Task,
        job_id: str,
        *,
        backup_id: str | None = None,
        requested_by: str | None = None,
    ) -> ApiReply:
        job = await self.build(task, job_id, backup_id=backup_id, requested_by=requested_by)
        if isinstance(job, ApiError):
            return job
        bus = self.bus()
        if bus is None:
            return ApiError(code="unavailable", message="the coordinator is not connected")
        await self.catalog.record_job(
            JobRecord(
                job_id=job.job_id,
                job_kind=task.kind,
                dataset=job.dataset,
                agent=job.agent,
                target=job.target,
                status="dispatched",
                requested_at=job.requested_at,
                updated_at=job.requested_at,
                backup_id=job.backup_id if isinstance(job, DrillJob) else None,
            )
        )
        duplicate = await bus.publish_job(job)
        return JobAccepted(job_id=job.job_id, agent=job.agent, duplicate=duplicate)

    async def build(
        self,
        task: Task,
        job_id: str,
        *,
        backup_id: str | None = None,
        requested_by: str | None = None,
    ) -> MaintenanceJob | ApiError:
        now, at = self.clock(), utcnow()
        who = requested_by or ("scheduler" if backup_id is None else "operator")
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
                tier_of(c.backup_id, c.dataset, _tier(c.tier)),
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
        return await self.dispatch(
            task, job_id, backup_id=req.backup_id, requested_by=req.requested_by
        )

    # --- results ----------------------------------------------------------------------

    async def record(self, ev: Event) -> bool:
        """Store a maintenance result (or a maintenance job's failure); False if ``ev``
        is not about a maintenance job."""
        if not isinstance(
            ev, VerifyCompleted | PruneCompleted | ReplicateCompleted | DrillCompleted | JobFailed
        ):
            return False
        job = await self.catalog.get_job(ev.job_id)
        if job is None or job.job_kind not in KINDS:
            return False
        if isinstance(ev, JobFailed):
            passed, started = False, job.requested_at
        else:
            if ev.target != job.target or (
                isinstance(ev, DrillCompleted)
                and (ev.dataset != job.dataset or ev.backup_id != job.backup_id)
            ):
                log.warning(
                    "ignoring %s result of job %s: not what was ordered", job.job_kind, ev.job_id
                )
                return True
            passed = not (
                (isinstance(ev, VerifyCompleted) and ev.damaged)
                or (isinstance(ev, DrillCompleted) and ev.outcome != "passed")
            )
            started = ev.started_at or job.requested_at
        if isinstance(ev, PruneCompleted) and not ev.dry_run and ev.forgotten:
            await self.catalog.forget_backups(ev.forgotten, target=ev.target)
        if isinstance(ev, ReplicateCompleted) and ev.backup_ids:
            await self.catalog.record_copies(ev.backup_ids, target=ev.to_target, at=ev.at)
        await self.catalog.record_maintenance(
            MaintenanceRecord(
                job_id=ev.job_id,
                kind=job.job_kind,
                agent=ev.agent,
                target=job.target,
                dataset=job.dataset,
                backup_id=job.backup_id,
                outcome="passed" if passed else "failed",
                started_at=started,
                finished_at=ev.at,
                rto_s=ev.rto_s if isinstance(ev, DrillCompleted) else None,
                rpo_s=ev.rpo_s if isinstance(ev, DrillCompleted) else None,
                summary=summarize(ev)[:1000],
                detail=_json.encode(ev).decode(),
            )
        )
        if not isinstance(ev, JobFailed):
            await self.catalog.update_job(ev.job_id, "completed", ev.at)
        return True

    # --- alerts -----------------------------------------------------------------------

    async def findings(self, now: datetime) -> list[Finding]:
        """``verify_failed`` per dataset on a target whose newest verify failed, and
        ``drill_failed`` per dataset whose newest drill failed."""
        out: list[Finding] = []
        for task in self.tasks.values():
            if task.kind == "verify":
                rows = await self.catalog.list_maintenance(
                    kind="verify", target=task.target, limit=20
                )
                last = next((r for r in rows if r.agent == task.agent), None)
                passed = None if last is None else last.outcome == "passed"
                detail = last.summary if last is not None else ""
                out.extend(
                    f
                    for name in task.datasets
                    if (f := verify_failed(name, task.target, passed, detail)) is not None
                )
            elif task.kind == "drill":
                rows = await self.catalog.list_maintenance(
                    kind="drill", dataset=task.dataset, limit=1
                )
                passed = None if not rows else rows[0].outcome == "passed"
                f = drill_failed(task.dataset, passed, rows[0].summary if rows else "")
                if f is not None:
                    out.append(f)
        return out
