"""The storage-target interface: bytes at keys.

A target knows nothing about chunks, packs or encryption; the repository layer above
it does. Keys are '/'-separated relative names (``data/3f/3f2a…``); a target maps them
to files, S3 objects or SFTP paths under its own root or prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Protocol, runtime_checkable

import msgspec


class ObjectInfo(msgspec.Struct, frozen=True):
    key: str
    size: int


class SpaceInfo(msgspec.Struct, frozen=True):
    """A target's space in bytes, counted as ``df`` counts it (:meth:`from_statvfs`).

    - ``total``: the file system's size, f_blocks × f_frsize (df's "Size").
    - ``free``: what a non-root writer may still use, f_bavail × f_frsize (df's "Avail").
    - ``used``: f_blocks − f_bfree blocks (df's "Used"). Blocks reserved for root (5 % on
      a default ext4) and file-system overhead are in neither ``used`` nor ``free``, so
      ``used + free`` may be less than ``total``; "how full" is ``used / (used + free)``.
      None only in values built before this field existed."""

    total: int
    free: int
    used: int | None = None

    @classmethod
    def from_statvfs(cls, *, frsize: int, blocks: int, bfree: int, bavail: int) -> SpaceInfo:
        """From statvfs figures (local ``os.statvfs``, or an SFTP server's statvfs)."""
        return cls(total=blocks * frsize, free=bavail * frsize, used=(blocks - bfree) * frsize)


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a target's medium and credentials allow, asked instead of its type.

    - ``append_only``: deletes and overwrites are refused (``append_only = true`` on a
      local or SFTP target): prune must run elsewhere, leases are never removed.
    - ``local_disk``: reads cost no network round trip (the restore reads fewer packs
      at once: two cores are busy decrypting, not waiting).
    Every target reads ranges (``get_range``); ``space()`` returns None where the medium
    cannot tell its free space (S3)."""

    append_only: bool = False
    local_disk: bool = False


class TemporaryInfo(msgspec.Struct, frozen=True):
    """A write that never finished (``list_temporary``, on targets that have them): a
    ``.tmp-*`` file of a killed upload, or an S3 multipart upload never completed.
    ``list`` never shows these; prune removes them once older than the lease ttl."""

    key: str  # the temporary name (local, SFTP) or the final key (S3 upload)
    size: int
    modified: datetime  # UTC; when the upload started (S3) or last wrote (files)
    upload_id: str = ""  # S3 only


@runtime_checkable
class Target(Protocol):
    """Contract every target implements (tested by tests/test_target_contract.py).

    - ``put`` stores the whole value atomically: a reader sees the old object, no object,
      or the complete new one, never a prefix. Overwriting an existing key is allowed
      (the repository only does it for idempotent content-addressed writes). Retry-safe.
    - ``get`` / ``get_range`` raise :class:`shared.errors.ObjectNotFound` for a missing
      key. ``get_range`` returns exactly ``length`` bytes from ``offset``, or fewer only
      when the object ends first. Retry-safe.
    - ``exists`` / ``stat`` never raise for a missing key (False / None).
    - ``list`` yields every key under ``prefix`` (a key prefix, not only a folder) in
      ascending key order, with sizes. Retry-safe.
    - ``delete`` removes a key; deleting a missing key is not an error. Retry-safe.
    - ``space`` returns total and free bytes where the medium knows them, else None.
    - ``describe`` is a human name without credentials, for messages.
    - ``aclose`` releases connections; it is idempotent.

    Backends do not retry reads themselves (beyond what their SDK does per request):
    :func:`engine.storage.open.open_target` wraps remote targets in
    :class:`engine.storage.retry.RetryingTarget`, whose reads raise
    :class:`shared.errors.TargetUnreadable` once transient faults outlast its attempts.
    A backend may offer ``list_after(prefix, start_after)`` (``list`` from the first key
    after ``start_after``) so that a broken listing resumes where it stopped.
    """

    name: str
    capabilities: Capabilities

    async def put(self, key: str, data: bytes) -> None: ...

    async def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` only if ``key`` does not exist; True if this call stored it.

        Atomic against concurrent creators: of two racing calls exactly one returns True
        and the object holds its data. Used where two writers must agree on one value
        (the repository's config at initialisation)."""
        ...

    async def get(self, key: str) -> bytes: ...

    async def get_range(self, key: str, offset: int, length: int) -> bytes: ...

    async def exists(self, key: str) -> bool: ...

    async def stat(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]: ...

    async def delete(self, key: str) -> None: ...

    async def space(self) -> SpaceInfo | None: ...

    def describe(self) -> str: ...

    async def aclose(self) -> None: ...


def check_key(key: str) -> str:
    """Reject keys that could escape a target's root (``..``, absolute, empty parts)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key
