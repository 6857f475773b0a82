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
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio

from engine.format import segments
from engine.format import spec as fmt
from engine.format.crypto import sealed_kid
from engine.keys.files import RepoKey, load_any_key_file
from engine.keys.writeonly import WriteOnlyKey
from engine.repository import Repository
from engine.storage.base import ObjectInfo, SpaceInfo, Target
from shared.errors import (
    IntegrityError,
    KeyFileError,
    MosaicError,
    RepositoryError,
    TargetUnavailable,
)
from shared.vocab import utcnow
from shared.wire.monitoring import KeyCheck

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


# --- key checks: the agent proves that its key still works on each target --------------

# Seconds between two key checks of the same target (the first runs at start). A check
# lists manifests/ and reads one or a few small objects: cheap, but not for every
# heartbeat on a large S3 repository.
KEY_CHECK_INTERVAL_S = 3600.0
# Manifests opened per target and check: the ones that appeared since the previous check.
KEY_CHECK_MANIFESTS = 3


def _scrub(text: str, target: Target, name: str) -> str:
    """``text`` without the target's location (paths, buckets, hosts): the heartbeat
    and the status documents name the target by its name only."""
    where = target.describe()
    return text.replace(where, f"target '{name}'") if where else text


def _key_file_problem(path: str, key: RepoKey) -> str | None:
    """Why the agent's key file is no longer the key it runs with, or None."""
    try:
        loaded = load_any_key_file(path)
    except KeyFileError as exc:
        if Path(path).is_file() and "passphrase" in str(exc):
            return None  # protected: readable, but only the entry point has the passphrase
        return f"key file: {one_line(exc)}"
    if isinstance(loaded, WriteOnlyKey) and isinstance(key, WriteOnlyKey):
        same = loaded.repositories == key.repositories
    else:
        same = loaded == key
    if not same:
        return f"key file {path} changed since the agent started (restart the agent)"
    return None


class KeyChecker:
    """Proves, per target, that the agent's key opens what is there; the heartbeat
    reports the last result (``TargetSpace.key_check``).

    - A full key opens the repository (its config, so every data key the master key
      wraps, and the write-only session keys through the recipient key) and then a
      manifest: the newest ones, meaning those that appeared since the previous check
      (at most :data:`KEY_CHECK_MANIFESTS`); when none did, the newest one opened before
      (at the first check: the last one listed). The agent cannot tell a manifest's age
      without opening it.
    - A write-only key cannot read manifests. It proves that it belongs to this
      repository: the repository holds its index key (``keys/<index kid>``) and that
      key opens an index segment. The recipient public key comes from the same export
      as the index key, so it is this repository's; that the backups written with it
      open is proven by an agent holding the full key (the maintenance agent's check).

    Everything is read-only: nothing is ever written or created (no repository, no
    session key). The key file is read again too: a key file that became unreadable or
    was replaced fails the check, although the running agent still holds the old key.
    """

    def __init__(
        self,
        key: RepoKey,
        targets: Mapping[str, Target],
        key_file: str,
        *,
        interval_s: float = KEY_CHECK_INTERVAL_S,
    ) -> None:
        self.key = key
        self.targets = targets
        self.key_file = key_file
        self.interval_s = interval_s
        self.results: dict[str, KeyCheck] = {}
        self._seen: dict[str, set[str]] = {}  # target → manifests already there
        self._newest: dict[str, str] = {}  # target → the newest manifest opened

    def get(self, name: str) -> KeyCheck | None:
        return self.results.get(name)

    async def run(self) -> None:
        """Check every target now and then every ``interval_s``, until cancelled."""
        while True:
            await self.check_all()
            await anyio.sleep(self.interval_s)

    async def check_all(self) -> dict[str, KeyCheck]:
        for name in sorted(self.targets):
            self.results[name] = await self.check(name)
        return self.results

    async def check(self, name: str) -> KeyCheck:
        target = self.targets[name]
        write_only = isinstance(self.key, WriteOnlyKey)
        problem = await anyio.to_thread.run_sync(_key_file_problem, self.key_file, self.key)
        ok: bool | None
        try:
            with anyio.fail_after(PROBE_TIMEOUT_S * 4):
                ok, detail = (False, problem) if problem else await self._prove(name, target)
        except PROBE_ERRORS as exc:
            ok, detail = False, _scrub(one_line(exc), target, name)
        if ok is False:
            log.error("key check of target %s failed: %s", name, detail)
        return KeyCheck(ok=ok, detail=detail, at=utcnow(), write_only=write_only)

    async def _prove(self, name: str, target: Target) -> tuple[bool | None, str]:
        if isinstance(target, DownTarget) and (why := await target.recheck()) is not None:
            return False, f"target is down: {why}"
        if not await Repository.exists(target):
            return None, "no repository there yet (nothing backed up)"
        repo = await Repository.open(target, self.key, load_index=False)
        if repo.write_only is not None:
            return await self._prove_write_only(repo)
        names = await repo.list_manifests()
        seen = self._seen.get(name)
        self._seen[name] = set(names)
        if not names:
            return True, "repository opens; no backup in it yet"
        fresh = [] if seen is None else [n for n in names if n not in seen]
        if not fresh:  # nothing new: the newest one known (again), else the last listed
            last = self._newest.get(name)
            fresh = [last] if last in self._seen[name] else names[-1:]
        opened = []
        for backup_id in fresh[-KEY_CHECK_MANIFESTS:]:
            try:
                await repo.load_manifest(backup_id)
            except RepositoryError as exc:
                if await repo.has_manifest(backup_id):
                    raise
                log.info("manifest %s went (prune?) during the key check: %s", backup_id, exc)
                continue
            opened.append(backup_id)
            self._newest[name] = backup_id
        if not opened:
            return True, f"repository opens; no new manifest since the last check ({len(names)})"
        return True, f"opened the repository and manifest {', '.join(opened)}"

    async def _prove_write_only(self, repo: Repository) -> tuple[bool, str]:
        """Opening found ``keys/<index kid>``; now the index key must open a segment."""
        kid = repo.config.index_kid
        async for obj in repo.target.list(fmt.INDEX_PREFIX):
            sealed = await repo.target.get(obj.key)
            if sealed_kid(sealed) != kid:
                continue  # sealed before the index key existed
            try:
                segments.open_segment(repo.keys, obj.key, sealed, obj.key)
            except (IntegrityError, KeyError):
                return False, (
                    f"the write-only key's index key does not open {obj.key}: the key file "
                    "belongs to another repository (export it again with "
                    "`repo keys write-only-export`)"
                )
            return True, f"write-only key belongs to this repository (opened {obj.key})"
        return True, "write-only key belongs to this repository (its index key is there)"
