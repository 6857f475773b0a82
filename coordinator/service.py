"""The coordinator service: answers operators, dispatches jobs, records what happened.

It never touches backup data: it publishes jobs on NATS and folds the agents' events
into the catalog. Events are acked only after the catalog write, so a coordinator crash
replays them (catalog writes are idempotent).

It also guards what it depends on: at start and every ``guard_interval_s`` it checks
the streams and consumers (``Bus.check_control_plane``), re-creates what is missing or
was changed, and raises the ``control_plane_changed`` alert and an audit line for each
change it did not make. A deleted events consumer is re-created where it stopped, so
an operator account that deletes it cannot blind the coordinator (issue 15).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import APIError, NotFoundError

from coordinator.alerter import Alerter
from coordinator.alerts import Finding
from coordinator.audit import AuditTrail
from coordinator.catalog.base import Catalog
from coordinator.heartbeats import HeartbeatStore
from coordinator.http import HttpApi
from coordinator.leader import Leader
from coordinator.maintenance import Maintenance
from coordinator.scheduler import Scheduler
from coordinator.status import StatusBuilder
from shared import subjects, tracing
from shared.bus import Bus, Repair
from shared.config.coordinator import CoordinatorConfig
from shared.errors import BusError
from shared.tasks import task_group
from shared.vocab import BackupType, Tier, utcnow
from shared.wire.api import (
    ApiError,
    ApiReply,
    ApiRequest,
    BackupList,
    BackupRequest,
    DrillRequest,
    JobAccepted,
    ListRequest,
    MaintenanceList,
    MaintenanceListRequest,
    RestoreRequest,
    StatusRequest,
)
from shared.wire.events import (
    BackupCompleted,
    Event,
    JobFailed,
    JobProgress,
    JobStarted,
    LocalAction,
    PruneCompleted,
    RestoreCompleted,
    event_decoder,
    event_kind,
)
from shared.wire.jobs import BackupJob, RestoreJob
from shared.wire.records import BackupRecord, JobRecord
from shared.wire.status import StatusReply

log = logging.getLogger(__name__)

API_VERBS = ("backup", "restore", "list", "status", "drill", "maintenance")
GUARD_INTERVAL_S = 15.0  # how often streams and consumers are checked while running
REPAIR_ALERT_S = 3600.0  # a change someone else made stays an alert this long


def new_job_id(kind: str, dataset: str) -> str:
    return f"{kind}-{dataset}-{utcnow():%Y%m%dT%H%M%SZ}-{os.urandom(3).hex()}"


class Coordinator:
    def __init__(
        self,
        cfg: CoordinatorConfig,
        catalog: Catalog,
        *,
        clock: Callable[[], datetime] = utcnow,  # the scheduler's time source (tests)
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.bus: Bus | None = None
        self.leader: Leader | None = None
        self.scheduler = Scheduler(
            {name: ds.schedules for name, ds in cfg.datasets.items()},
            catalog,
            self.dispatch_scheduled,
            interval_s=cfg.scheduler_interval_s,
            clock=clock,
        )
        self.heartbeats = HeartbeatStore()
        self.status_builder = StatusBuilder(
            cfg, catalog, self.heartbeats, clock=clock, active=self._is_active
        )
        self.alerter = Alerter(cfg, catalog, clock=clock)
        # heartbeat lost, storage low, replication lag, 3-2-1 (coordinator/status.py)
        self.alerter.sources.append(self.status_builder.findings)
        # verify, prune, replicate, drills: schedule, results, two alert rules
        self.maintenance = Maintenance(
            cfg, catalog, lambda: self.bus, clock=clock, append_only=self._append_only
        )
        self.alerter.sources.append(self.maintenance.findings)
        self.audit = AuditTrail(catalog)
        self.http = HttpApi(cfg.http, catalog, self.status, alerts=self.alerter.firing)
        self.guard_interval_s = GUARD_INTERVAL_S
        self.repairs: list[tuple[datetime, Repair]] = []  # changes it did not make
        self._next_event_seq = 0  # stream sequence after the last recorded event
        self.alerter.sources.append(self._repair_findings)

    def _agents(self) -> set[str]:
        """The agents this coordinator gives jobs to (their consumers are its own)."""
        agents = {ds.agent for ds in self.cfg.datasets.values()}
        if self.cfg.maintenance is not None and self.cfg.maintenance.agent:
            agents.add(self.cfg.maintenance.agent)
        return agents

    def _append_only(self, agent: str, target: str) -> bool:
        """Whether ``agent``'s last heartbeat says it may not delete on ``target``."""
        seen = self.heartbeats.last().get(agent)
        targets = seen.heartbeat.targets if seen is not None else []
        return any(t.name == target and t.append_only for t in targets)

    @property
    def http_port(self) -> int | None:
        """The HTTP API's bound port while it serves (None when ``[http]`` is off)."""
        return self.http.port

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        bus = self.bus = await Bus.connect_with(self.cfg, name=self.cfg.name)
        try:
            await bus.ensure_streams()
            self.audit.bus = bus
            await self.audit.ensure_stream()
            await self.audit.record_policy(self.cfg)  # a changed policy leaves a line
            for verb in API_VERBS:
                await bus.serve(verb, self.handle)
            # never reuse a consumer someone else shaped (a filter that matches nothing)
            await self.check_control_plane(startup=True)
            sub = await bus.events_consumer(subjects.COORDINATOR_EVENTS_CONSUMER)
            owner = f"{self.cfg.name}/{os.urandom(4).hex()}"
            self.leader = Leader(bus.js, owner, ttl_s=self.cfg.leader_ttl_s)
            async with task_group() as tg:
                # The coordinator's long-running parts, one line each. Every instance
                # records events and answers; only the lease holder schedules and alerts.
                tg.start_soon(self._consume_events, sub)
                tg.start_soon(self._guard)
                await tg.start(self.heartbeats.run, bus)
                await tg.start(self.http.serve)
                await tg.start(self.leader.run_when_leader, self._run_active)
                log.info("coordinator %s ready on %s", self.cfg.name, bus.url)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await bus.aclose()

    async def _run_active(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """The parts that must run on one coordinator only, while it holds the lease."""
        assert self.bus is not None
        async with task_group() as tg:
            await tg.start(self.scheduler.run)  # returns at once if nothing is scheduled
            await tg.start(self.maintenance.scheduler.run)
            await tg.start(self.alerter.run, self.bus, self.http_port)
            task_status.started()

    # --- events → catalog -------------------------------------------------------------

    # --- guarding streams and consumers -----------------------------------------------

    async def check_control_plane(self, *, startup: bool = False) -> list[Repair]:
        """One check of streams and consumers; alert and audit what had to be fixed."""
        assert self.bus is not None
        repairs = await self.bus.check_control_plane(
            subjects.COORDINATOR_EVENTS_CONSUMER,
            self._agents(),
            next_event_seq=self._next_event_seq,
            create_missing_silently=startup,
        )
        try:
            await self.bus.js.stream_info(subjects.AUDIT_STREAM)
        except NotFoundError:
            await self.audit.ensure_stream()  # the catalog keeps the trail itself
            if not startup:
                repairs.append(Repair(f"stream {subjects.AUDIT_STREAM}", "missing (deleted)"))
        now = utcnow()
        for r in repairs:
            log.error("NATS control plane changed by someone else: %s", r)
            self.repairs.append((now, r))
            await self.audit.record("control_plane_repaired", self.cfg.name, detail=str(r))
        return repairs

    async def _guard(self) -> None:
        while True:
            await anyio.sleep(self.guard_interval_s)
            await self._check_or_say_why()

    async def _check_or_say_why(self) -> None:
        try:
            await self.check_control_plane()
        except (NatsError, BusError) as exc:  # NATS down: the next round tries again
            log.warning("streams and consumers not checked: %r", exc)
            await anyio.sleep(1.0)  # not a tight loop while NATS is away

    async def _repair_findings(self, now: datetime) -> list[Finding]:
        horizon = now - timedelta(seconds=REPAIR_ALERT_S)
        self.repairs = [(at, r) for at, r in self.repairs if at >= horizon]
        return [
            Finding(
                rule="control_plane_changed",
                dataset=r.key,
                severity="critical",
                summary=f"NATS {r} (not by this coordinator)",
                description="Someone with access to the coordinator's NATS account "
                "changed it; see docs/security.md.",
            )
            for _, r in self.repairs
        ]

    # --- events → catalog -------------------------------------------------------------

    async def _consume_events(self, sub: Any) -> None:
        while True:
            try:
                msgs = await sub.fetch(50, timeout=2.0)
            except TimeoutError:
                continue
            except APIError as exc:  # the consumer was deleted under us: put it back
                log.error("events consumer failed (%s): checking streams and consumers", exc)
                await self._check_or_say_why()
                continue
            for msg in msgs:
                try:
                    ev = event_decoder.decode(msg.data)
                except msgspec.DecodeError as exc:
                    log.error("dropping undecodable event on %s: %s", msg.subject, exc)
                    await msg.term()
                    continue
                if not await self._authentic(msg.subject, ev):
                    await msg.term()
                    continue
                # One span per recorded event, in the trace of the job (its traceparent
                # came with the event); progress ticks are not recorded, so no span.
                with (
                    contextlib.nullcontext()
                    if isinstance(ev, JobProgress)
                    else tracing.span(
                        f"record {event_kind(ev)}",
                        scope="mosaic.coordinator",
                        context=tracing.extract(msg.headers),
                        attributes={"mosaic.job_id": ev.job_id, "mosaic.agent": ev.agent},
                    )
                ):
                    await self.record(ev)
                await msg.ack()
                self._next_event_seq = msg.metadata.sequence.stream + 1

    async def _authentic(self, subject: str, ev: Event) -> bool:
        """An event counts only if it comes from the agent it names, on that agent's own
        subject (which NATS permissions restrict to that agent), about a job this
        coordinator gave that agent for that dataset. Otherwise one compromised agent
        could record backups, or failures, in another's name."""
        parts = subject.split(".")
        if len(parts) != 5 or parts[2] != ev.agent or parts[3] != ev.job_id:
            log.warning(
                "ignoring event on %s: it names agent %s, job %s", subject, ev.agent, ev.job_id
            )
            return False
        if isinstance(ev, (JobProgress, LocalAction)):
            return True  # a local action is no job of ours: the subject vouches for the agent
        job = await self.catalog.get_job(ev.job_id)
        if (
            job is None
            or job.agent != ev.agent
            or (isinstance(ev, BackupCompleted) and ev.dataset != job.dataset)
        ):
            log.warning(
                "ignoring %s event for job %s from agent %s: not that agent's job",
                event_kind(ev),
                ev.job_id,
                ev.agent,
            )
            return False
        return True

    async def record(self, ev: Event) -> None:
        cat = self.catalog
        if isinstance(ev, JobStarted):
            await cat.update_job(ev.job_id, "running", ev.at)
        elif isinstance(ev, BackupCompleted):
            s = ev.summary
            await cat.record_backup(
                BackupRecord(
                    backup_id=ev.backup_id,
                    dataset=ev.dataset,
                    agent=ev.agent,
                    target=ev.target,
                    backup_type=ev.backup_type,
                    repository_id=ev.repository_id,
                    started_at=ev.started_at,
                    finished_at=ev.finished_at,
                    files=s.files,
                    bytes_read=s.bytes_read,
                    bytes_new=s.bytes_new,
                    bytes_stored=s.bytes_stored,
                    duration_s=s.duration_s,
                    tier=ev.tier,
                )
            )
            await cat.update_job(ev.job_id, "completed", ev.finished_at, backup_id=ev.backup_id)
        elif isinstance(ev, RestoreCompleted):
            await cat.update_job(ev.job_id, "completed", ev.at, backup_id=ev.backup_id)
        elif isinstance(ev, JobFailed):
            log.warning("job %s failed: %s", ev.job_id, ev.message)
            await cat.update_job(
                ev.job_id, "failed", ev.at, error_code=ev.code, error_message=ev.message
            )
        elif isinstance(ev, LocalAction):
            await self.audit.record_local(ev)
            return
        await self.maintenance.record(ev)  # maintenance results and failures
        if isinstance(ev, PruneCompleted) and ev.forgotten and not ev.dry_run:
            await self.audit.record_prune(ev)  # deletes are audited with what went

    # --- operator API -----------------------------------------------------------------

    async def handle(self, req: ApiRequest) -> ApiReply:
        if isinstance(req, BackupRequest):
            return await self.start_backup(req)
        if isinstance(req, RestoreRequest):
            return await self.start_restore(req)
        if isinstance(req, ListRequest):
            since = utcnow() - timedelta(days=req.days) if req.days is not None else None
            rows = await self.catalog.list_backups(
                since=since, dataset=req.dataset, limit=req.limit
            )
            copies = await self.catalog.copies_of([b.backup_id for b in rows])
            rows = [
                msgspec.structs.replace(b, copies=copies[b.backup_id])
                if b.backup_id in copies
                else b
                for b in rows
            ]
            return BackupList(backups=rows)
        if isinstance(req, StatusRequest):
            return await self.status(limit=max(req.limit, 0), offset=max(req.offset, 0))
        if isinstance(req, DrillRequest):
            drill = await self.maintenance.start_drill(req)
            if isinstance(drill, JobAccepted) and not drill.duplicate:
                await self.audit.record(  # a drill restores a backup (into scratch)
                    "drill_requested",
                    req.requested_by,
                    job_id=drill.job_id,
                    dataset=req.dataset,
                    backup_id=req.backup_id,
                )
            return drill
        if isinstance(req, MaintenanceListRequest):
            done = await self.catalog.list_maintenance(
                kind=req.job_kind, dataset=req.dataset, limit=max(min(req.limit, 10_000), 0)
            )
            return MaintenanceList(results=done)
        return ApiError(code="bad_request", message=f"unknown request {type(req).__name__}")

    async def _dispatch(self, job: BackupJob | RestoreJob, kind: str) -> JobAccepted:
        # The root of the job's trace; its traceparent travels in the job's NATS headers.
        with tracing.span(
            f"dispatch {kind} {job.dataset}",
            scope="mosaic.coordinator",
            attributes={
                "mosaic.job_id": job.job_id,
                "mosaic.dataset": job.dataset,
                "mosaic.agent": job.agent,
                "mosaic.target": job.target,
                "mosaic.requested_by": job.requested_by,
            },
        ):
            return await self._dispatch_traced(job, kind)

    async def _audit_job(self, job: BackupJob | RestoreJob, kind: str) -> None:
        scheduled = kind == "backup" and job.requested_by == "scheduler"
        action = "backup_scheduled" if scheduled else f"{kind}_requested"
        detail = ""
        if isinstance(job, RestoreJob):
            detail = f"to {job.destination}"
            detail += f" paths {', '.join(job.paths)}" if job.paths else ""
        await self.audit.record(
            action,
            job.requested_by,
            entry_id=f"{action}:{job.job_id}",
            dataset=job.dataset,
            backup_id=job.backup_id,
            job_id=job.job_id,
            detail=detail,
        )

    async def _dispatch_traced(self, job: BackupJob | RestoreJob, kind: str) -> JobAccepted:
        assert self.bus is not None
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
                backup_id=job.backup_id,
            )
        )
        await self._audit_job(job, kind)  # stored before the job can run
        duplicate = await self.bus.publish_job(job)
        log.info(
            "dispatched %s job %s to agent %s%s",
            kind,
            job.job_id,
            job.agent,
            " (duplicate, dropped by JetStream)" if duplicate else "",
        )
        return JobAccepted(job_id=job.job_id, agent=job.agent, duplicate=duplicate)

    async def _backup_job(
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

    async def start_backup(self, req: BackupRequest) -> ApiReply:
        job_id = new_job_id("backup", req.dataset)
        # A manual backup without --tier: a full one is kept like a weekly full, an
        # incremental like a daily one (README, "Retention tiers").
        tier = req.tier or ("weekly" if req.backup_type == "full" else "daily")
        job = await self._backup_job(req.dataset, req.backup_type, job_id, req.requested_by, tier)
        return job if isinstance(job, ApiError) else await self._dispatch(job, "backup")

    async def dispatch_scheduled(
        self, dataset: str, backup_type: BackupType, job_id: str, tier: Tier | None = None
    ) -> ApiReply:
        """Dispatch one scheduled run under its deterministic job id (see schedule.py);
        ``tier`` is the schedule's (None: retention reads it from the job id)."""
        job = await self._backup_job(dataset, backup_type, job_id, "scheduler", tier)
        if isinstance(job, ApiError):
            return job
        try:
            return await self._dispatch(job, "backup")
        except NatsError as exc:
            raise BusError(f"scheduled job {job_id}: publish failed: {exc!r}") from exc

    async def start_restore(self, req: RestoreRequest) -> ApiReply:
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
        job = RestoreJob(
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
        return await self._dispatch(job, "restore")

    async def status(
        self, *, limit: int = 1000, offset: int = 0, dataset: str | None = None
    ) -> StatusReply:
        """Totals over every dataset, detail for one page of them (coordinator/status.py)."""
        return await self.status_builder.reply(limit=limit, offset=offset, dataset=dataset)

    def _is_active(self) -> bool | None:
        return self.leader.is_leader if self.leader is not None else None
