"""The agent's job runner: pulls jobs from its own subject and runs them.

One job at a time (``max_ack_pending=1``). While a job runs, an in-progress ack is sent
every third of ``ack_wait`` so JetStream does not redeliver it; if the process dies,
the job is redelivered after ``ack_wait`` and runs again — content-addressed chunks make
the repeat cheap, and a backup whose manifest is already stored is reported, not redone.
The job is acked only after its result event is stored in the events stream.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from agent.heartbeat import send_heartbeats
from agent.hooks import run_post, run_pre
from agent.keysetup import write_options
from agent.maintenance import MaintenanceContext, run_maintenance
from agent.pitr import needs_logs, restore_with_logs
from agent.sources import LogShipment, archives_logs, restore_backup, ship_logs, streams_for
from engine.backup import filecache
from engine.backup.dataset import BackupSpec, backup_dataset
from engine.backup.snapshot import cleanup_leftovers
from engine.format.manifest import Manifest
from engine.keys.files import RepoKey
from engine.logchain import base_for_log_backup
from engine.maintenance.recovery_copy import remember_in_key_file
from engine.progress import Progress
from engine.repository import Repository
from engine.storage.base import Target
from engine.storage.open import open_target
from shared import subjects, tracing
from shared.bus import Bus, fetch_one
from shared.config.agent import AgentConfig
from shared.errors import ConfigError, MosaicError, WrongKeyError
from shared.tasks import task_group
from shared.vocab import BackupSummary, utcnow
from shared.wire.events import (
    BackupCompleted,
    Event,
    JobFailed,
    JobProgress,
    JobStarted,
    RestoreCompleted,
    event_kind,
)
from shared.wire.jobs import BackupJob, Job, RestoreJob, job_decoder, job_kind

log = logging.getLogger(__name__)


class AgentRunner:
    def __init__(self, cfg: AgentConfig, key: RepoKey, targets: dict[str, Target] | None = None):
        self.cfg = cfg
        self.key = key
        self.targets = targets or {n: open_target(n, t) for n, t in cfg.targets.items()}
        self.hostname = socket.gethostname()
        self.running_job: str | None = None  # reported by the heartbeat
        self.ack_wait_s = cfg.ack_wait_s  # of the bound consumer, once known

    async def aclose(self) -> None:
        for t in self.targets.values():
            await t.aclose()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
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
                tg.start_soon(send_heartbeats, bus, self.cfg, self.targets, self._running)
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
            result = await self._run_job(bus, msg, job, kind)
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

    async def _run_job(self, bus: Bus, msg: Any, job: Job, kind: str) -> Event:
        result: Event
        async with task_group() as tg:
            tg.start_soon(self._keep_alive, msg)
            try:
                if isinstance(job, BackupJob):
                    result = await self.run_backup(bus, job)
                elif isinstance(job, RestoreJob):
                    result = await self.run_restore(bus, job)
                else:
                    result = await run_maintenance(self._maintenance_context(), job)
            except MosaicError as exc:
                result = JobFailed(
                    job_id=job.job_id,
                    agent=self.cfg.name,
                    job_kind=kind,
                    code=exc.code,
                    message=str(exc),
                    retryable=exc.retryable,
                    at=utcnow(),
                )
            except Exception as exc:  # a bug: report it, keep serving other jobs
                log.exception("job %s crashed", job.job_id)
                result = JobFailed(
                    job_id=job.job_id,
                    agent=self.cfg.name,
                    job_kind=kind,
                    code="internal",
                    message=f"{type(exc).__name__}: {exc}",
                    at=utcnow(),
                )
            tg.cancel_scope.cancel()
        return result

    async def _keep_alive(self, msg: Any) -> None:
        while True:
            await anyio.sleep(self.ack_wait_s / 3)
            await msg.in_progress()

    def _reporter(self, bus: Bus, job_id: str):  # type: ignore[no-untyped-def]
        last = 0.0

        async def report(p: Progress) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < self.cfg.progress_interval_s and p.bytes_done < p.bytes_total:
                return
            last = now
            await bus.publish_event(
                JobProgress(
                    job_id=job_id,
                    agent=self.cfg.name,
                    bytes_done=p.bytes_done,
                    bytes_total=p.bytes_total,
                    files_done=p.files_done,
                    files_total=p.files_total,
                    at=utcnow(),
                )
            )

        return report

    def _maintenance_context(self) -> MaintenanceContext:
        return MaintenanceContext(self.cfg.name, self._target, self._open)

    def _target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            raise ConfigError(
                f"agent '{self.cfg.name}' has no target '{name}' "
                f"(it has: {', '.join(sorted(self.targets))}); add it to the agent config"
            ) from None

    async def _open(self, target: Target, *, create: bool) -> Repository:
        try:
            repo = await Repository.open(
                target,
                self.key,
                create=create,
                options=write_options(self.cfg),
            )
            remember_in_key_file(self.cfg.key_file, repo)
            return repo
        except WrongKeyError:
            raise WrongKeyError(
                f"key file {self.cfg.key_file} does not open the repository at "
                f"{target.describe()}: wrong key file"
            ) from None

    async def run_backup(self, bus: Bus, job: BackupJob) -> BackupCompleted:
        repo = await self._open(self._target(job.target), create=True)
        if await repo.has_manifest(job.backup_id):
            return self._completed(job, await self._stored(repo, job), repo)
        job, shipment = await self._log_backup(repo, job)
        spec = BackupSpec(
            backup_id=job.backup_id,
            dataset=job.dataset,
            agent=self.cfg.name,
            source=job.source,
            backup_type=job.backup_type,
            parent_backup_id=job.parent_backup_id,
            streams=shipment.streams if shipment else streams_for(job.source),
            state_dir=self.cfg.state_dir,
            tier=job.tier,
        )
        hooks = self.cfg.hooks.get(job.dataset)
        if hooks is None:
            manifest = await backup_dataset(repo, spec, report=self._reporter(bus, job.job_id))
            return await self._shipped(job, manifest, repo, shipment)
        await run_pre(hooks, job.dataset)
        ok = False
        try:
            manifest = await backup_dataset(repo, spec, report=self._reporter(bus, job.job_id))
            ok = True
        finally:
            with anyio.CancelScope(shield=True):
                await run_post(hooks, job.dataset, ok)
        return await self._shipped(job, manifest, repo, shipment)

    async def _stored(self, repo: Repository, job: BackupJob) -> Manifest:
        """The manifest of a backup already stored (a redelivered job). A write-only
        agent cannot read it: it reports what its file cache recorded, or no figures."""
        if repo.write_only is None:
            return await repo.load_manifest(job.backup_id)
        cached = await anyio.to_thread.run_sync(filecache.load, self.cfg.state_dir, job.dataset)
        if cached is not None and cached[0].backup_id == job.backup_id:
            return cached[0]
        now = utcnow()
        zero = BackupSummary(
            files=0, dirs=0, symlinks=0, bytes_read=0, bytes_new=0, bytes_stored=0,
            chunks_total=0, chunks_new=0, packs_written=0, duration_s=0.0,
        )  # fmt: skip
        return Manifest(
            backup_id=job.backup_id, dataset=job.dataset, agent=self.cfg.name,
            backup_type=job.backup_type, source=job.source, started_at=now,
            finished_at=now, tree=[], summary=zero, tier=job.tier,
        )  # fmt: skip

    async def _log_backup(
        self, repo: Repository, job: BackupJob
    ) -> tuple[BackupJob, LogShipment | None]:
        """An incremental of a source with archived logs is a log backup extending the
        dataset's base (its parent); without a base it becomes a base backup."""
        if job.backup_type != "incremental" or not archives_logs(job.source):
            return job, None
        base_id = await base_for_log_backup(repo, job, self.cfg.state_dir)
        if base_id is None:
            return msgspec.structs.replace(job, backup_type="full", parent_backup_id=None), None
        shipment = await anyio.to_thread.run_sync(ship_logs, job.source)
        return msgspec.structs.replace(job, parent_backup_id=base_id), shipment

    async def _shipped(
        self, job: BackupJob, m: Manifest, repo: Repository, shipment: LogShipment | None
    ) -> BackupCompleted:
        """The manifest is stored: only now may the shipped logs leave the spool."""
        if shipment is None:
            return self._completed(job, m, repo)
        await anyio.to_thread.run_sync(shipment.shipped)
        return msgspec.structs.replace(self._completed(job, m, repo), log_lag_s=shipment.lag_s)

    def _completed(self, job: BackupJob, m: Manifest, repo: Repository) -> BackupCompleted:
        return BackupCompleted(
            job_id=job.job_id,
            agent=self.cfg.name,
            backup_id=m.backup_id,
            dataset=m.dataset,
            target=job.target,
            backup_type=job.backup_type,
            repository_id=repo.config.repository_id,
            started_at=m.started_at,
            finished_at=m.finished_at,
            summary=m.summary,
            tier=job.tier,
        )

    async def run_restore(self, bus: Bus, job: RestoreJob) -> RestoreCompleted:
        t0 = time.monotonic()
        repo = await self._open(self._target(job.target), create=False)
        repo.refuse_write_only("a restore")
        manifest = await repo.load_manifest(job.backup_id)
        with tracing.span("restore data", scope="mosaic.agent"):
            if needs_logs(manifest, job.pitr, job.paths):
                files, nbytes = await restore_with_logs(
                    repo, manifest, Path(job.destination), job.pitr, self._reporter(bus, job.job_id)
                )
            else:
                files, nbytes = await restore_backup(
                    repo,
                    manifest,
                    job.destination,
                    include=job.paths or None,
                    report=self._reporter(bus, job.job_id),
                )
        return RestoreCompleted(
            job_id=job.job_id,
            agent=self.cfg.name,
            backup_id=job.backup_id,
            destination=job.destination,
            files=files,
            bytes_written=nbytes,
            duration_s=time.monotonic() - t0,
            at=utcnow(),
        )
