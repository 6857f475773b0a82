"""The coordinator service: answers operators, dispatches jobs, records what happened.

It never touches backup data: it publishes jobs on NATS and folds the agents' events
into the catalog. Events are acked only after the catalog write, so a coordinator crash
replays them (catalog writes are idempotent).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

import anyio
import msgspec
from nats.errors import Error as NatsError

from coordinator.alerter import Alerter
from coordinator.catalog.base import Catalog
from coordinator.http import HttpApi
from coordinator.leader import Leader
from coordinator.scheduler import Scheduler
from shared import subjects
from shared.bus import Bus
from shared.config import CoordinatorConfig, nats_password
from shared.errors import BusError
from shared.messages import (
    ApiError,
    ApiReply,
    ApiRequest,
    BackupCompleted,
    BackupJob,
    BackupList,
    BackupRecord,
    BackupRequest,
    BackupType,
    DatasetStatus,
    Event,
    JobAccepted,
    JobFailed,
    JobProgress,
    JobRecord,
    JobStarted,
    ListRequest,
    RestoreCompleted,
    RestoreJob,
    RestoreRequest,
    StatusReply,
    StatusRequest,
    event_decoder,
    event_kind,
    utcnow,
)
from shared.tasks import task_group

log = logging.getLogger(__name__)

API_VERBS = ("backup", "restore", "list", "status")


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
        self.alerter = Alerter(cfg, catalog, clock=clock)
        self.http = HttpApi(cfg.http, catalog, self.status, alerts=self.alerter.firing)

    @property
    def http_port(self) -> int | None:
        """The HTTP API's bound port while it serves (None when ``[http]`` is off)."""
        return self.http.port

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        bus = self.bus = await Bus.connect(
            self.cfg.nats_url,
            name=self.cfg.name,
            timeout=self.cfg.connect_timeout_s,
            user=self.cfg.nats_user,
            password=nats_password(self.cfg),
        )
        try:
            await bus.ensure_streams()
            for verb in API_VERBS:
                await bus.serve(verb, self.handle)
            sub = await bus.events_consumer(subjects.COORDINATOR_EVENTS_CONSUMER)
            owner = f"{self.cfg.name}/{os.urandom(4).hex()}"
            self.leader = Leader(bus.js, owner, ttl_s=self.cfg.leader_ttl_s)
            async with task_group() as tg:
                # The coordinator's long-running parts, one line each. Every instance
                # records events and answers; only the lease holder schedules and alerts.
                tg.start_soon(self._consume_events, sub)
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
            await tg.start(self.alerter.run, self.bus, self.http_port)
            task_status.started()

    # --- events → catalog -------------------------------------------------------------

    async def _consume_events(self, sub: Any) -> None:
        while True:
            try:
                msgs = await sub.fetch(50, timeout=2.0)
            except TimeoutError:
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
                await self.record(ev)
                await msg.ack()

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
        if isinstance(ev, JobProgress):
            return True
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
            return BackupList(backups=rows)
        if isinstance(req, StatusRequest):
            return await self.status()
        return ApiError(code="bad_request", message=f"unknown request {type(req).__name__}")

    async def _dispatch(self, job: BackupJob | RestoreJob, kind: str) -> JobAccepted:
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
        duplicate = await self.bus.publish_job(job)
        return JobAccepted(job_id=job.job_id, agent=job.agent, duplicate=duplicate)

    async def _backup_job(
        self, dataset: str, backup_type: BackupType, job_id: str, requested_by: str
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
        )

    async def start_backup(self, req: BackupRequest) -> ApiReply:
        job_id = new_job_id("backup", req.dataset)
        job = await self._backup_job(req.dataset, req.backup_type, job_id, req.requested_by)
        return job if isinstance(job, ApiError) else await self._dispatch(job, "backup")

    async def dispatch_scheduled(
        self, dataset: str, backup_type: BackupType, job_id: str
    ) -> ApiReply:
        """Dispatch one scheduled run under its deterministic job id (see schedule.py)."""
        job = await self._backup_job(dataset, backup_type, job_id, "scheduler")
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
        )
        return await self._dispatch(job, "restore")

    async def status(self) -> StatusReply:
        rows = []
        for name, ds in sorted(self.cfg.datasets.items()):
            last = await self.catalog.last_backup(name)
            fail = await self.catalog.last_failure(name)
            rows.append(
                DatasetStatus(
                    dataset=name,
                    agent=ds.agent,
                    target=ds.target,
                    last_backup=last,
                    last_failure=fail,
                )
            )
        failing = [
            r
            for r in rows
            if r.last_failure
            and (r.last_backup is None or r.last_failure.updated_at > r.last_backup.finished_at)
        ]
        status: Literal["healthy", "degraded", "failing"] = "healthy"
        if failing and len(failing) == len(rows):
            status = "failing"
        elif failing or any(r.last_backup is None for r in rows):
            status = "degraded"
        return StatusReply(
            status=status,
            coordinator=self.cfg.name,
            datasets=rows,
            recent_failures=await self.catalog.recent_failures(limit=10),
            backups_total=await self.catalog.count_backups(),
            active=self.leader.is_leader if self.leader is not None else None,
        )
