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
from typing import Any

import anyio
import msgspec

from agent.backup import BackupSpec, backup_dataset
from agent.hooks import run_post, run_pre
from agent.progress import Progress
from agent.restore import restore_backup
from shared import subjects
from shared.bus import Bus, fetch_one
from shared.config import AgentConfig, nats_password
from shared.errors import ConfigError, KeyFileError, MosaicError, WrongKeyError
from shared.messages import (
    BackupCompleted,
    BackupJob,
    Event,
    Job,
    JobFailed,
    JobProgress,
    JobStarted,
    RestoreCompleted,
    RestoreJob,
    job_decoder,
    utcnow,
)
from shared.repository.keys import KEEP_A_COPY, create_key_file, load_key_file
from shared.repository.manifest import Manifest
from shared.repository.repository import Repository, WriteOptions
from shared.targets import Target, open_target
from shared.tasks import task_group

log = logging.getLogger(__name__)


def write_options(cfg: AgentConfig) -> WriteOptions:
    return WriteOptions(cfg.pack_size, cfg.zstd_level, cfg.index_every_packs)


async def prepare_key(
    cfg: AgentConfig, targets: dict[str, Target], passphrase: str | None = None
) -> tuple[bytes, bool]:
    """Load the master key; create it on first use (no repository on any target yet).

    Returns (key, created). A missing key file next to an existing repository is an
    error: a new key could never open the backups already there. ``passphrase`` (read
    by the entry point) opens a passphrase-protected key file, and protects a new one.
    """
    try:
        return load_key_file(cfg.key_file, passphrase), False
    except KeyFileError:
        if await anyio.Path(cfg.key_file).exists():
            raise
        for name, target in targets.items():
            if await Repository.exists(target):
                raise KeyFileError(
                    f"key file {cfg.key_file} does not exist, but target '{name}' "
                    f"({target.describe()}) holds a repository: restore your copy of the key "
                    "file to that path"
                ) from None
        return create_key_file(cfg.key_file, passphrase or None), True


async def check_repositories(cfg: AgentConfig, key: bytes, targets: dict[str, Target]) -> None:
    """Fail fast at start when the key does not open an existing repository."""
    for name, target in targets.items():
        check = getattr(target, "check", None)
        if check is not None:
            await check()
        if await Repository.exists(target):
            try:
                await Repository.open(target, key)
            except WrongKeyError:
                raise WrongKeyError(
                    f"key file {cfg.key_file} does not open the repository on target '{name}' "
                    f"({target.describe()}): wrong key file"
                ) from None


class AgentRunner:
    def __init__(self, cfg: AgentConfig, key: bytes, targets: dict[str, Target] | None = None):
        self.cfg = cfg
        self.key = key
        self.targets = targets or {n: open_target(n, t) for n, t in cfg.targets.items()}
        self.hostname = socket.gethostname()

    async def aclose(self) -> None:
        for t in self.targets.values():
            await t.aclose()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        bus = await Bus.connect(
            self.cfg.nats_url,
            name=f"agent-{self.cfg.name}",
            timeout=self.cfg.connect_timeout_s,
            user=self.cfg.nats_user,
            password=nats_password(self.cfg),
            inbox_prefix=subjects.agent_inbox(self.cfg.name),
        )
        try:
            # An agent with its own NATS user runs under `nats-config` permissions,
            # which leave stream management to the coordinator.
            await bus.ensure_streams(create=self.cfg.nats_user is None)
            sub = await bus.job_consumer(self.cfg.name, self.cfg.ack_wait_s)
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
        delivery = int(msg.metadata.num_delivered or 1)
        kind = "backup" if isinstance(job, BackupJob) else "restore"
        await bus.publish_event(
            JobStarted(
                job_id=job.job_id,
                agent=self.cfg.name,
                job_kind=kind,
                delivery=delivery,
                at=utcnow(),
            )
        )
        result: Event
        async with task_group() as tg:
            tg.start_soon(self._keep_alive, msg)
            try:
                if isinstance(job, BackupJob):
                    result = await self.run_backup(bus, job)
                else:
                    result = await self.run_restore(bus, job)
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
        await bus.publish_event(result)
        await msg.ack()

    async def _keep_alive(self, msg: Any) -> None:
        while True:
            await anyio.sleep(self.cfg.ack_wait_s / 3)
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
            return await Repository.open(
                target,
                self.key,
                create=create,
                options=write_options(self.cfg),
            )
        except WrongKeyError:
            raise WrongKeyError(
                f"key file {self.cfg.key_file} does not open the repository at "
                f"{target.describe()}: wrong key file"
            ) from None

    async def run_backup(self, bus: Bus, job: BackupJob) -> BackupCompleted:
        repo = await self._open(self._target(job.target), create=True)
        if await repo.has_manifest(job.backup_id):
            return self._completed(job, await repo.load_manifest(job.backup_id), repo)
        spec = BackupSpec(
            backup_id=job.backup_id,
            dataset=job.dataset,
            agent=self.cfg.name,
            source=job.source,
            backup_type=job.backup_type,
            parent_backup_id=job.parent_backup_id,
        )
        hooks = self.cfg.hooks.get(job.dataset)
        if hooks is None:
            manifest = await backup_dataset(repo, spec, report=self._reporter(bus, job.job_id))
            return self._completed(job, manifest, repo)
        await run_pre(hooks, job.dataset)
        ok = False
        try:
            manifest = await backup_dataset(repo, spec, report=self._reporter(bus, job.job_id))
            ok = True
        finally:
            with anyio.CancelScope(shield=True):
                await run_post(hooks, job.dataset, ok)
        return self._completed(job, manifest, repo)

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
        )

    async def run_restore(self, bus: Bus, job: RestoreJob) -> RestoreCompleted:
        t0 = time.monotonic()
        repo = await self._open(self._target(job.target), create=False)
        manifest = await repo.load_manifest(job.backup_id)
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


def key_notice(path: str) -> str:
    return f"Created a new repository key file at {path}. {KEEP_A_COPY}"
