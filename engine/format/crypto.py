"""Sealing and opening objects: compression, AES-256-GCM, the versioned header.

See format.py for the byte layout. A :class:`Keyring` holds the unwrapped data keys of
one repository (by key id), the id of the key new objects are sealed with, and the
chunk-id key. When the repository has an index key (write-only agents, writeonly.py),
``meta`` is its id: index segments and leases are sealed with it, everything else with
``current``.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.format import spec as fmt
from shared.errors import IntegrityError, RepositoryError

_META_TYPES = frozenset({fmt.OT_INDEX, fmt.OT_LEASE})


class Keyring:
    def __init__(
        self,
        data_keys: dict[bytes, bytes],
        current: bytes,
        id_key: bytes,
        *,
        meta: bytes | None = None,
    ) -> None:
        self._aead = {kid: AESGCM(k) for kid, k in data_keys.items()}
        self.current = current
        self.id_key = id_key
        self.meta = meta

    def holds(self, kid: bytes) -> bool:
        return kid in self._aead

    def kid_for(self, otype: int) -> bytes:
        """The key id a new object of type ``otype`` is sealed with."""
        if self.meta is not None and otype in _META_TYPES:
            return self.meta
        return self.current

    def add(self, kid: bytes, key: bytes) -> None:
        self._aead[kid] = AESGCM(key)

    def aead(self, kid: bytes, where: str) -> AESGCM:
        try:
            return self._aead[kid]
        except KeyError:
            raise RepositoryError(
                f"{where}: sealed with data key {kid.hex()}, which this repository does not hold"
            ) from None

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self.id_key).digest()


_pools: dict[int, queue.SimpleQueue[zstandard.ZstdCompressor]] = {}
_pools_lock = threading.Lock()


@contextmanager
def _compressor(level: int) -> Iterator[zstandard.ZstdCompressor]:
    """A compressor from a shared pool: a ZstdCompressor is not thread-safe and holds
    megabytes of context, so keep one per concurrent user rather than one per thread
    (worker-thread pools can have dozens of threads)."""
    with _pools_lock:
        pool = _pools.setdefault(level, queue.SimpleQueue())
    try:
        c = pool.get_nowait()
    except queue.Empty:
        c = zstandard.ZstdCompressor(level=level)
    try:
        yield c
    finally:
        pool.put(c)


_dpool: queue.SimpleQueue[zstandard.ZstdDecompressor] = queue.SimpleQueue()


@contextmanager
def _decompressor() -> Iterator[zstandard.ZstdDecompressor]:
    try:
        d = _dpool.get_nowait()
    except queue.Empty:
        d = zstandard.ZstdDecompressor()
    try:
        yield d
    finally:
        _dpool.put(d)


def seal(
    keys: Keyring,
    otype: int,
    object_id: bytes,
    payload: bytes | memoryview,
    *,
    zstd_level: int | None = 3,
) -> bytes:
    """Compress (when it pays) and encrypt ``payload`` into one sealed object."""
    comp = fmt.COMP_NONE
    body: bytes | memoryview = payload
    if zstd_level is not None and len(payload) >= 64:
        with _compressor(zstd_level) as c:
            packed = c.compress(payload)
        if len(packed) < len(payload) - len(payload) // 64:
            comp, body = fmt.COMP_ZSTD, packed
    nonce = os.urandom(12)
    kid = keys.kid_for(otype)
    header = fmt.HEADER.pack(fmt.MAGIC, fmt.FORMAT_VERSION, otype, comp, kid, nonce)
    aead = keys.aead(kid, "seal")
    return header + aead.encrypt(nonce, bytes(body), header + object_id)


def sealed_kid(data: bytes | memoryview) -> bytes:
    """The key id in a sealed object's header (b"" when it is too short to have one)."""
    if len(data) < fmt.HEADER_SIZE:
        return b""
    return bytes(data[6:14])


def open_sealed(
    keys: Keyring, object_id: bytes, data: bytes | memoryview, where: str
) -> tuple[int, bytes]:
    """Authenticate, decrypt and decompress one sealed object; return (type, payload).

    ``where`` names the object in error messages (pack key and offset, manifest key…).
    """
    if len(data) < fmt.OVERHEAD:
        raise IntegrityError(f"{where}: truncated object ({len(data)} bytes)")
    magic, version, otype, comp, kid, nonce = fmt.HEADER.unpack_from(data)
    if magic != fmt.MAGIC:
        raise IntegrityError(f"{where}: bad magic {bytes(magic)!r}, not a mosaic object")
    if version != fmt.FORMAT_VERSION:
        raise RepositoryError(
            f"{where}: format version {version}; this program reads version "
            f"{fmt.FORMAT_VERSION} (upgrade mosaic-backup)"
        )
    header = bytes(data[: fmt.HEADER_SIZE])
    try:
        plain = keys.aead(kid, where).decrypt(
            nonce, memoryview(data)[fmt.HEADER_SIZE :], header + object_id
        )
    except InvalidTag:
        raise IntegrityError(
            f"{where}: authentication failed — the object was modified or damaged"
        ) from None
    if comp == fmt.COMP_ZSTD:
        try:
            with _decompressor() as d:
                plain = d.decompress(plain)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{where}: zstd payload is damaged ({exc})") from exc
    elif comp != fmt.COMP_NONE:
        raise IntegrityError(f"{where}: unknown compression {comp}")
    return otype, plain
