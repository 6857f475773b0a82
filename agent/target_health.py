"""Targets that did not answer when the agent started: reported and retried, not fatal.

Why: one agent serves every dataset of its host, each to its own target. If one SFTP
server or S3 endpoint is unreachable when the agent starts, refusing to start would
stop the backups to every other target too (issue 15). So the agent starts, logs the
target as down, reports it in every heartbeat (``TargetSpace.down``), and a job for
that target fails at once with one line while jobs for the other targets run. Each
use — a job's first call, the heartbeat's space query — looks again (bounded by
:data:`PROBE_TIMEOUT_S`); once the target answers it is used as if it had never been
down. A target that fails only later is not wrapped: its own errors say what happened.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio

from engine.repository import Repository
from engine.storage.base import ObjectInfo, SpaceInfo, Target
from shared.errors import MosaicError, TargetUnavailable

log = logging.getLogger(__name__)

# How long one look at a target (login, bucket, a read) may take before it counts as down.
PROBE_TIMEOUT_S = 15.0

# What a target that cannot be reached raises: the target's own errors, an OS error
# (refused, unreachable, no route), or the probe's time limit.
PROBE_ERRORS = (MosaicError, OSError, TimeoutError)


def one_line(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    return " ".join(str(exc).split()) or type(exc).__name__


async def probe(target: Target) -> bool:
    """What the agent checks at start: the target's own ``check`` (login, bucket, Object
    Lock, permissions), where it has one, then a read; True when a repository is there."""
    check = getattr(target, "check", None)
    with anyio.fail_after(PROBE_TIMEOUT_S):
        if check is not None:
            await check()
        return await Repository.exists(target)


class DownTarget:
    """A target that was down at start; ``down`` says why (one line), None once it answers.

    Every operation first looks again while the target is down, and raises
    :class:`~shared.errors.TargetUnavailable` (retryable) when it still is. Attributes
    other than the operations (``capabilities``, ``retention``, ``check``) pass through.
    """

    def __init__(self, name: str, inner: Target, reason: str) -> None:
        self.name = name
        self.inner = inner
        self.capabilities = inner.capabilities
        self.down: str | None = reason
        self._lock = anyio.Lock()

    def __getattr__(self, attr: str) -> object:
        return getattr(self.inner, attr)

    def describe(self) -> str:
        return self.inner.describe()

    async def recheck(self) -> str | None:
        """Look at the target again if it is down; return why it still is, or None."""
        async with self._lock:
            if self.down is None:
                return None
            try:
                await probe(self.inner)
            except PROBE_ERRORS as exc:
                self.down = one_line(exc)
            else:
                self.down = None
                log.warning("target %s is reachable again", self.name)
            return self.down

    async def _ready(self) -> None:
        if self.down is not None and (why := await self.recheck()) is not None:
            raise TargetUnavailable(
                f"target '{self.name}' is down: {why} (the agent looks again at every job "
                f"and heartbeat; fix the target or targets.{self.name} in agent.toml)"
            )

    async def put(self, key: str, data: bytes) -> None:
        await self._ready()
        await self.inner.put(key, data)

    async def create(self, key: str, data: bytes) -> bool:
        await self._ready()
        return await self.inner.create(key, data)

    async def get(self, key: str) -> bytes:
        await self._ready()
        return await self.inner.get(key)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        await self._ready()
        return await self.inner.get_range(key, offset, length)

    async def exists(self, key: str) -> bool:
        await self._ready()
        return await self.inner.exists(key)

    async def stat(self, key: str) -> ObjectInfo | None:
        await self._ready()
        return await self.inner.stat(key)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        await self._ready()
        async for info in self.inner.list(prefix):
            yield info

    async def delete(self, key: str) -> None:
        await self._ready()
        await self.inner.delete(key)

    async def space(self) -> SpaceInfo | None:
        await self._ready()
        return await self.inner.space()

    async def aclose(self) -> None:
        await self.inner.aclose()
