"""The coordinator service: answers operators, dispatches jobs, records what happened.

It never touches backup data: it publishes jobs on NATS and folds the agents' events
into the catalog. Events are acked only after the catalog write, so a coordinator crash
replays them (catalog writes are idempotent).

This module wires the parts together: the operator API's table (``api.py``), the job
builders (``jobs/backup.py``, ``jobs/maintenance.py``), the one dispatch path every
job goes out by (``jobs/dispatch.py``: record, audit, publish, in a span), the event
recorder (``jobs/record.py``), the schedulers, status, alerts and the HTTP API.

It also guards what it depends on: at start and every ``guard_interval_s`` it checks
the streams and consumers (``Bus.check_control_plane``), re-creates what is missing or
was changed, and raises the ``control_plane_changed`` alert and an audit line for each
change it did not make. A deleted events consumer is re-created where it stopped, so
an operator account that deletes it cannot blind the coordinator (issue 15).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from coordinator import host_drill_status, windows
from coordinator.alerter import Alerter
from coordinator.alerts import Finding
from coordinator.api import CatalogQueries, OperatorApi
from coordinator.audit import AuditTrail
from coordinator.catalog.base import Catalog
from coordinator.checklist import Checklist
from coordinator.coverage import Coverage
from coordinator.heartbeats import HeartbeatStore
from coordinator.http import HttpApi
from coordinator.jobs import SCHEDULER
from coordinator.jobs.backup import BackupJobs
from coordinator.jobs.dispatch import Dispatcher
from coordinator.jobs.host_drill import HostDrills
from coordinator.jobs.maintenance import Maintenance
from coordinator.jobs.record import EventRecorder
from coordinator.leader import Leader
from coordinator.pings import Pinger
from coordinator.scheduler import Scheduler
from coordinator.status import StatusBuilder
from shared import subjects
from shared.bus import Bus, Repair
from shared.config.coordinator import CoordinatorConfig
from shared.errors import BusError
from shared.tasks import task_group
from shared.vocab import BackupType, Tier, utcnow
from shared.wire.api import (
    ApiError,
    ApiReply,
    BackupRequest,
    DrillRequest,
    ListRequest,
    MaintenanceListRequest,
    RestoreRequest,
    StatusRequest,
    VerifyRequest,
)
from shared.wire.check import CheckRequest
from shared.wire.drills import HostDrillRequest
from shared.wire.status import StatusReply

log = logging.getLogger(__name__)

GUARD_INTERVAL_S = 15.0  # how often streams and consumers are checked while running
REPAIR_ALERT_S = 3600.0  # a change someone else made stays an alert this long


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
        self.audit = AuditTrail(catalog)
        # every job goes out by this one path: record, audit, publish, in a span
        self.dispatcher = Dispatcher(catalog, self.audit, lambda: self.bus)
        self.backups = BackupJobs(cfg, catalog)
        self.scheduler = Scheduler(
            {name: ds.schedules for name, ds in cfg.datasets.items()},
            catalog,
            self.backups.for_run,
            self.dispatcher.dispatch,
            interval_s=cfg.scheduler_interval_s,
            clock=clock,
        )
        self.events = EventRecorder(catalog, self.audit)
        self.pinger = Pinger(cfg.pings, catalog)  # dead-man's switch per dataset
        self.events.listeners.append(self.pinger.on_event)
        self.heartbeats = HeartbeatStore()
        self.status_builder = StatusBuilder(
            cfg,
            catalog,
            self.heartbeats,
            clock=clock,
            active=self._is_active,
            lease=self._lease_holder,
        )
        self.alerter = Alerter(cfg, catalog, clock=clock)
        # heartbeat lost, storage low, replication lag, 3-2-1 (coordinator/status.py)
        self.alerter.sources.append(self.status_builder.findings)
        # verify, prune, replicate, drills: schedule, jobs, two alert rules
        self.maintenance = Maintenance(
            cfg,
            catalog,
            self.dispatcher.dispatch,
            clock=clock,
            append_only=self._append_only,
        )
        self.alerter.sources.append(self.maintenance.findings)
        # whole-host drills: one drill per dataset in order, a summary, an alert rule
        self.host_drills = HostDrills(
            cfg, catalog, self.dispatcher.dispatch, agents=self._agents, clock=clock
        )
        self.alerter.sources.append(self.host_drills.findings)
        self.checklist = Checklist(cfg, catalog, self.status, clock=clock)  # `check`
        self.api = self._operator_api()
        self.http = HttpApi(
            cfg.http, catalog, self.status, alerts=self.alerter.firing, audit=self.audit
        )
        self.http.check = self.checklist.report  # GET /api/v1/check
        self.guard_interval_s = GUARD_INTERVAL_S
        self.repairs: list[tuple[datetime, Repair]] = []  # changes it did not make
        self.alerter.sources.append(self._repair_findings)
        self.windows = windows.attach(cfg, self.status_builder, self.alerter)  # window_exceeded
        host_drill_status.attach(self.status_builder)  # the newest host drill per host
        # inventories → unprotected items in status, two alert rules (coordinator/coverage.py)
        self.coverage = Coverage(cfg, self.status_builder, self.alerter, clock=clock)

    def _operator_api(self) -> OperatorApi:
        """The NATS operator API: verb, the request it takes, its handler."""
        api, queries = OperatorApi(), CatalogQueries(self.catalog)
        api.add_endpoint("backup", BackupRequest, self.start_backup)
        api.add_endpoint("restore", RestoreRequest, self.start_restore)
        api.add_endpoint("list", ListRequest, queries.backups)
        api.add_endpoint("status", StatusRequest, self._status_request)
        api.add_endpoint("drill", DrillRequest, self.maintenance.start_drill)
        api.add_endpoint("maintenance", MaintenanceListRequest, queries.maintenance)
        api.add_endpoint("check", CheckRequest, self.checklist.request)
        api.add_endpoint("verify", VerifyRequest, self.maintenance.start_verify)
        api.add_endpoint("drill_host", HostDrillRequest, self.host_drills.start)
        return api

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
            await self.api.serve(bus)
            # never reuse a consumer someone else shaped (a filter that matches nothing)
            await self.check_control_plane(startup=True)
            sub = await bus.events_consumer(subjects.COORDINATOR_EVENTS_CONSUMER)
            owner = f"{self.cfg.name}/{os.urandom(4).hex()}"
            self.leader = Leader(bus.js, owner, ttl_s=self.cfg.leader_ttl_s)
            async with task_group() as tg:
                # The coordinator's long-running parts, one line each. Every instance
                # records events and answers; only the lease holder schedules and alerts.
                tg.start_soon(self.events.consume, sub, self._check_or_say_why)
                tg.start_soon(self._guard)
                await tg.start(self.heartbeats.run, bus)
                await tg.start(self.coverage.run, bus)
                await tg.start(self.pinger.run)
                await tg.start(self.http.serve)
                await tg.start(self.host_drills.run)  # the host drills this one accepted
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
            await tg.start(self.host_drills.schedule)
            await tg.start(self.alerter.run, self.bus, self.http_port)
            task_status.started()

    # --- guarding streams and consumers -----------------------------------------------

    async def check_control_plane(self, *, startup: bool = False) -> list[Repair]:
        """One check of streams and consumers; alert and audit what had to be fixed."""
        assert self.bus is not None
        repairs = await self.bus.check_control_plane(
            subjects.COORDINATOR_EVENTS_CONSUMER,
            self._agents(),
            next_event_seq=self.events.next_event_seq,
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

    # --- operator API and the schedules: build the job, send it by the one path ------

    async def start_backup(self, req: BackupRequest) -> ApiReply:
        job = await self.backups.requested(req)
        return job if isinstance(job, ApiError) else await self.dispatcher.dispatch(job)

    async def start_restore(self, req: RestoreRequest) -> ApiReply:
        job = await self.backups.restore(req)
        return job if isinstance(job, ApiError) else await self.dispatcher.dispatch(job)

    async def dispatch_scheduled(
        self, dataset: str, backup_type: BackupType, job_id: str, tier: Tier | None = None
    ) -> ApiReply:
        """Send one scheduled run now, as the scheduler would, under its deterministic
        job id (see schedule.py); ``tier`` None: retention reads it from the job id."""
        job = await self.backups.backup(dataset, backup_type, job_id, SCHEDULER, tier)
        return job if isinstance(job, ApiError) else await self.dispatcher.dispatch(job)

    async def _status_request(self, req: StatusRequest) -> ApiReply:
        return await self.status(limit=max(req.limit, 0), offset=max(req.offset, 0))

    async def status(
        self, *, limit: int = 1000, offset: int = 0, dataset: str | None = None
    ) -> StatusReply:
        """Totals over every dataset, detail for one page of them (coordinator/status.py)."""
        return await self.status_builder.reply(limit=limit, offset=offset, dataset=dataset)

    def _is_active(self) -> bool | None:
        return self.leader.is_leader if self.leader is not None else None

    async def _lease_holder(self) -> tuple[str, datetime | None] | None:
        return await self.leader.holder() if self.leader is not None else None
