"""The agent's daemon: pulls jobs from its own subject and runs them.

What a job does is in :mod:`agent.jobs` (one handler per kind, looked up by
:func:`agent.jobs.table.run_job`); this module only moves jobs and events: it connects,
consumes, keeps the job alive, sends heartbeats and publishes started and the result.

One job at a time (``max_ack_pending=1``). While a job runs, an in-progress ack is sent
every third of ``ack_wait`` so JetStream does not redeliver it; if the process dies,
the job is redelivered after ``ack_wait`` and runs again — content-addressed chunks make
the repeat cheap, and a backup whose manifest is already stored is reported, not redone.
The job is acked only after its result event is stored in the events stream.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import msgspec

from agent import priority
from agent.browse import BrowseService
from agent.heartbeat import send_heartbeats
from agent.inventory import publish_inventories
from agent.jobs.context import agent_context
from agent.jobs.table import run_job
from agent.target_health import KeyChecker
from engine.backup.snapshot import cleanup_leftovers
from engine.keys.files import RepoKey
from engine.storage.base import Target
from engine.storage.open import open_target
from shared import subjects, tracing
from shared.bus import Bus, fetch_one
from shared.config.agent import AgentConfig
from shared.tasks import task_group
from shared.vocab import utcnow
from shared.wire.events import Event, JobFailed, JobStarted, event_kind
from shared.wire.jobs import Job, job_decoder, job_kind

log = logging.getLogger(__name__)


class AgentRunner:
    def __init__(self, cfg: AgentConfig, key: RepoKey, targets: dict[str, Target] | None = None):
        self.cfg = cfg
        self.key = key
        self.targets = targets or {n: open_target(n, t) for n, t in cfg.targets.items()}
        self.hostname = socket.gethostname()
        self.running_job: str | None = None  # reported by the heartbeat
        self.ack_wait_s = cfg.ack_wait_s  # of the bound consumer, once known
        # proves now and then that the key opens each target's repository (heartbeat)
        self.key_checker = KeyChecker(key, self.targets, cfg.key_file)

    async def aclose(self) -> None:
        for t in self.targets.values():
            await t.aclose()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        priority.apply_to_agent(self.cfg.priority)  # nice/ionice, before any dump runs
        # snapshots a crashed run left behind are removed before any new job runs
        await anyio.to_thread.run_sync(cleanup_leftovers, self.cfg.state_dir, self.cfg.name)
        # An agent with its own NATS user runs in its own `nats-config` account: it sees
        # JetStream only through the imports of its own consumer (docs/security.md),
        # and the coordinator creates streams and its consumer.
        restricted = self.cfg.nats_user is not None or self.cfg.nats_nkey_seed_file is not None
        bus = await Bus.connect_with(
            self.cfg,
            name=f"agent-{self.cfg.name}",
            inbox_prefix=subjects.agent_inbox(self.cfg.name),
            js_prefix=subjects.JS_IMPORT_PREFIX if restricted else None,
        )
        try:
            if not restricted:
                await bus.ensure_streams()
            async with task_group() as tg:
                # alive while it waits for the coordinator to create its consumer
                tg.start_soon(self.key_checker.run)
                tg.start_soon(
                    send_heartbeats,
                    bus,
                    self.cfg,
                    self.targets,
                    self._running,
                    self.key_checker.get,
                )
                tg.start_soon(publish_inventories, bus, self.cfg)  # coverage discovery
                await self._serve_browse(bus)  # the console's file browser (agent API)
                sub = await bus.job_consumer(self.cfg.name, self.cfg.ack_wait_s)
                # the coordinator's consumer may wait less long than this agent's setting
                wait = bus.job_ack_wait or self.cfg.ack_wait_s
                self.ack_wait_s = min(self.cfg.ack_wait_s, wait)
                log.info("agent %s ready on %s", self.cfg.name, bus.url)
                task_status.started()
                while True:
                    msg = await fetch_one(sub, timeout=5.0)
                    if msg is not None:
                        await self.handle(bus, msg)
        finally:
            with anyio.CancelScope(shield=True):
                await bus.aclose()

    async def _serve_browse(self, bus: Bus) -> None:
        """Answer ``mosaic.agentapi.<name>.>`` (a subscription whose callback runs on
        nats-py's loop; ends with the connection). A write-only agent cannot read
        trees: it does not subscribe."""
        if not isinstance(self.key, bytes):  # a write-only key
            return
        ctx = agent_context(self.cfg, self.key, self.targets, bus.publish_event)
        await BrowseService(ctx, sorted(self.targets)).subscribe(bus)

    async def handle(self, bus: Bus, msg: Any) -> None:
        try:
            job: Job = job_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.error("dropping undecodable job on %s: %s", msg.subject, exc)
            await msg.term()
            return
        kind = job_kind(job)
        # The coordinator's dispatch span (traceparent in the job's headers) is the parent:
        # this job's spans, events and logs join the trace that dispatched it.
        with tracing.span(
            f"{kind} {job.dataset}",
            scope="mosaic.agent",
            context=tracing.extract(msg.headers),
            attributes={
                "mosaic.job_id": job.job_id,
                "mosaic.agent": self.cfg.name,
                "mosaic.dataset": job.dataset,
                "mosaic.target": job.target,
            },
        ):
            self.running_job = job.job_id
            try:
                await self._handle_job(bus, msg, job, kind)
            finally:
                self.running_job = None

    def _running(self) -> str | None:
        return self.running_job

    async def _handle_job(self, bus: Bus, msg: Any, job: Job, kind: str) -> None:
        delivery = int(msg.metadata.num_delivered or 1)
        await bus.publish_event(
            JobStarted(
                job_id=job.job_id,
                agent=self.cfg.name,
                job_kind=kind,
                delivery=delivery,
                at=utcnow(),
            )
        )
        try:
            result = await self._run_job(bus, msg, job)
        except anyio.get_cancelled_exc_class():
            # the agent is stopping (SIGTERM): hand the job back so JetStream redelivers
            # it as soon as an agent of this name is back, instead of after ack_wait
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await msg.nak()
                log.info("%s job %s handed back for redelivery", kind, job.job_id)
            raise
        if isinstance(result, JobFailed):
            tracing.mark_error(f"{result.code}: {result.message}")
        log.info("%s job %s (%s): %s", kind, job.job_id, job.dataset, event_kind(result))
        await bus.publish_event(result)
        await msg.ack()

    async def _run_job(self, bus: Bus, msg: Any, job: Job) -> Event:
        ctx = agent_context(self.cfg, self.key, self.targets, bus.publish_event)
        result: Event
        async with task_group() as tg:
            tg.start_soon(self._keep_alive, msg)
            result = await run_job(ctx, job)
            tg.cancel_scope.cancel()
        return result

    async def _keep_alive(self, msg: Any) -> None:
        while True:
            await anyio.sleep(self.ack_wait_s / 3)
            await msg.in_progress()
