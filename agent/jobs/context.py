"""What a job handler gets from the agent, the same for every job kind.

A handler never sees NATS, the key or the target objects' construction: it names a
target (an unknown name is a one-line ConfigError), opens a repository with the agent's
key, and reports progress for its job id. The daemon builds the context with
:func:`agent_context`; tests and tools may build one directly from plain callables.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from agent.keysetup import write_options
from engine.keys.files import RepoKey
from engine.maintenance.recovery_copy import remember_in_key_file
from engine.progress import Progress, ProgressFn, no_progress
from engine.repository import Repository
from engine.storage.base import Target
from shared.config.agent import AgentConfig
from shared.errors import ConfigError, WrongKeyError
from shared.vocab import utcnow
from shared.wire.events import Event, JobProgress

# Damaged or locked object names carried in one event: enough to act on, bounded for
# the bus.
MAX_NAMES = 100


class OpenRepository(Protocol):
    def __call__(self, target: Target, *, create: bool) -> Awaitable[Repository]: ...


def _silent(_job_id: str) -> ProgressFn:
    return no_progress


@dataclass(frozen=True)
class JobContext:
    """The agent as a job sees it.

    ``cfg`` is None only in a context built for maintenance jobs alone (verify, prune,
    replicate, drill need no more than the agent's name, targets and key); a backup
    reads its state folder and hooks from it (:attr:`config`)."""

    agent: str
    target: Callable[[str], Target]  # by name; an unknown name raises ConfigError
    open: OpenRepository  # with the agent's key; ``create`` makes a new repository
    cfg: AgentConfig | None = None
    progress: Callable[[str], ProgressFn] = field(default=_silent)  # reporter for a job id

    @property
    def config(self) -> AgentConfig:
        if self.cfg is None:
            raise TypeError(f"the job context of agent {self.agent!r} carries no agent config")
        return self.cfg


def agent_context(
    cfg: AgentConfig,
    key: RepoKey,
    targets: dict[str, Target],
    publish: Callable[[Event], Awaitable[None]],
) -> JobContext:
    """The daemon's context: ``targets`` opened from ``cfg``, progress sent by ``publish``."""

    def target(name: str) -> Target:
        try:
            return targets[name]
        except KeyError:
            raise ConfigError(
                f"agent '{cfg.name}' has no target '{name}' "
                f"(it has: {', '.join(sorted(targets))}); add it to the agent config"
            ) from None

    async def open_repository(target: Target, *, create: bool) -> Repository:
        try:
            repo = await Repository.open(target, key, create=create, options=write_options(cfg))
            remember_in_key_file(cfg.key_file, repo)
            return repo
        except WrongKeyError:
            raise WrongKeyError(
                f"key file {cfg.key_file} does not open the repository at "
                f"{target.describe()}: wrong key file"
            ) from None

    def progress(job_id: str) -> ProgressFn:
        return _reporter(cfg, job_id, publish)

    return JobContext(
        agent=cfg.name, target=target, open=open_repository, cfg=cfg, progress=progress
    )


def _reporter(
    cfg: AgentConfig, job_id: str, publish: Callable[[Event], Awaitable[None]]
) -> ProgressFn:
    """At most one progress event per ``progress_interval_s``, and always the last one."""
    last = 0.0

    async def report(p: Progress) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < cfg.progress_interval_s and p.bytes_done < p.bytes_total:
            return
        last = now
        await publish(
            JobProgress(
                job_id=job_id,
                agent=cfg.name,
                bytes_done=p.bytes_done,
                bytes_total=p.bytes_total,
                files_done=p.files_done,
                files_total=p.files_total,
                at=utcnow(),
            )
        )

    return report
