"""A repository on one target: chunk ids, packs, the index, manifests.

Layering: target (bytes at keys) → this module (chunks, packs, index, crypto) → the
agent's pipeline (streams → chunks). The in-memory index maps a chunk id to the pack,
offset and length of its sealed blob; it is rebuilt at open from the ``index/`` objects.

Write path: ``prepare_blob`` (pure CPU, safe in a worker thread) → ``add_sealed``
(appends to the open pack and uploads it when full) → ``commit_manifest`` (uploads the
last pack, one index segment for this run's packs, then the manifest — the manifest is
written last, so a backup exists only once everything it references is stored).

Opened with a write-only key (writeonly.py) a Repository writes with a session key that
only the recipient private key unwraps, reads only the index, and refuses every read of
backup content with :class:`WriteOnlyKeyError`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import NamedTuple

import anyio.to_thread
import msgspec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyfastcdc import FastCDC

from engine import opening, recovery
from engine.format import packscan, segments
from engine.format import spec as fmt
from engine.format.crypto import Keyring, open_sealed, seal, sealed_kid
from engine.format.manifest import (
    Manifest,
    Node,
    decode_tree,
    manifest_decoder,
    manifest_encoder,
)
from engine.format.pack import PackEntry, PackWriter
from engine.format.repoconfig import RepoConfig
from engine.format.segments import SegmentPack
from engine.index import ChunkIndex, IndexEntry
from engine.keys.files import RepoKey
from engine.keys.writeonly import (
    WriteOnlyKey,
    is_recipient_wrapped,
    refusal,
    unwrap_from_recipient,
)
from engine.storage.base import Target
from shared import tracing
from shared.errors import (
    IntegrityError,
    ObjectNotFound,
    RepositoryError,
)

log = logging.getLogger(__name__)


class WriteOptions(NamedTuple):
    """How a writer packs: pack size, zstd level, and how many packs may be uploaded
    before an index checkpoint (a crashed backup re-uploads at most that many)."""

    pack_size: int = 4 << 20
    zstd_level: int = 3
    index_every: int = 16


DEFAULT_OPTIONS = WriteOptions()


class SealedPack(NamedTuple):
    pack_id: bytes
    data: bytes
    entries: list[PackEntry]


class Repository:
    def __init__(
        self,
        target: Target,
        keys: Keyring,
        config: RepoConfig,
        options: WriteOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.target = target
        self.keys = keys
        self.config = config
        self.pack_size = options.pack_size
        self.zstd_level = options.zstd_level
        self.index_every = options.index_every
        self.index = ChunkIndex()
        self._pending: set[bytes] = set()
        self._lock = threading.Lock()
        self._writer = PackWriter()
        self._unindexed: list[SegmentPack] = []
        self.bytes_uploaded = 0
        self.packs_written = 0
        # Set when opened with a write-only key: reads of backup content are refused.
        self.write_only: WriteOnlyKey | None = None
        # The recipient private key (full key only): unwraps write-only session keys.
        self.recipient: X25519PrivateKey | None = None
        # A write-only session key not yet stored: (object name, wrapped bytes).
        self._session_key_obj: tuple[str, bytes] | None = None
        # What recovery.py copies (full key only): the sealed config as stored and the
        # master-wrapped data keys (kid hex → bytes).
        self.sealed_config = b""
        self.wrapped_keys: dict[str, bytes] = {}
        # Index segments that did not open at load, and packs whose header did not
        # (key → reason), for verify and ``repo repair``.
        self.damaged_segments: list[str] = []
        self.unreadable_packs: dict[str, str] = {}
        self._scanned = False  # scan_unindexed_packs ran

    # --- opening ---------------------------------------------------------------------

    @staticmethod
    async def exists(target: Target) -> bool:
        """True when ``target`` holds a repository or anything of one (a damaged one
        included): such a location is never treated as empty (recovery.py)."""
        return await recovery.location_state(target) not in ("empty", "initialising")

    @classmethod
    async def open(
        cls,
        target: Target,
        master_key: RepoKey,
        *,
        create: bool = False,
        options: WriteOptions = DEFAULT_OPTIONS,
        load_index: bool = True,
    ) -> Repository:
        """Open the repository on ``target``; with ``create``, initialise an empty one.

        Nothing is written unless the target holds no repository object at all and
        ``create`` is set; a wrong key is detected before any write. A location with
        objects but no readable ``config`` raises DamagedRepositoryError naming the
        repair — except that readers open it from ``recovery/config`` (with a warning).
        ``master_key`` may be a write-only key. (engine.opening does the finding.)
        ``load_index=False`` leaves the index empty, for a caller that reads the segments
        itself (engine.maintenance.verify_open).
        """
        if isinstance(master_key, WriteOnlyKey):
            opened = await opening.open_write_only(target, master_key)
        else:
            opened = await opening.open_full(target, master_key, create=create)
        repo = cls(target, opened.keys, opened.config, options)
        repo.recipient, repo.write_only = opened.recipient, opened.write_only
        repo._session_key_obj = opened.session_key
        repo.sealed_config, repo.wrapped_keys = (
            opened.sealed_config,
            dict(opened.wrapped_keys or {}),
        )
        if load_index and not opened.created:
            await repo._load_index()
        if create and opened.write_only is None:
            await recovery.ensure_copies(target, opened.sealed_config)
        return repo

    async def _store_session_key(self) -> None:
        """Store the wrapped session key before the first object sealed with it."""
        if self._session_key_obj is not None:
            name, wrapped = self._session_key_obj
            await self.target.put(name, wrapped)
            self._session_key_obj = None

    def refuse_write_only(self, what: str) -> None:
        """Raise the one-line refusal when this Repository holds a write-only key."""
        if self.write_only is not None:
            raise refusal(self.write_only.path, what)

    async def refresh_keys(self) -> None:
        """Unwrap session keys stored since open (needs the recipient private key)."""
        if self.recipient is None:
            return
        where = self.target.describe()
        async for obj in self.target.list(fmt.KEYS_PREFIX):
            try:
                kid = bytes.fromhex(obj.key[len(fmt.KEYS_PREFIX) :])
            except ValueError:
                continue
            if self.keys.holds(kid):
                continue
            raw = await self.target.get(obj.key)
            if is_recipient_wrapped(raw):
                kid, key = unwrap_from_recipient(self.recipient, raw, f"{where}/{obj.key}")
                self.keys.add(kid, key)

    async def _ensure_key_for(self, sealed: bytes | memoryview) -> None:
        kid = sealed_kid(sealed)
        if kid and not self.keys.holds(kid):
            await self.refresh_keys()

    async def reload_index(self) -> None:
        """Re-read the index from the target (nothing may be pending). A backup calls
        this right after taking its lease, so that garbage collection, which hides its
        garbage from the index before deleting it, can never be raced by a backup that
        loaded the index earlier and deduplicates against a pack about to go."""
        if self._pending or len(self._writer) or self._unindexed:
            raise RepositoryError("reload_index with unflushed writes")
        await self.refresh_keys()  # session keys of write-only jobs since open
        self.index = ChunkIndex()
        await self._load_index()

    async def _load_index(self) -> None:
        """Read every index segment; a segment that fails to open is skipped and the
        packs it described are read from their own headers instead, so one damaged
        segment never blocks a restore or a prune. A segment that vanishes between the
        listing and the read was replaced by a concurrent prune: list again."""
        for attempt in range(5):
            self.index = ChunkIndex()
            self.damaged_segments = []
            self._scanned = False
            try:
                await self._load_segments()
                break
            except ObjectNotFound:
                if attempt == 4:
                    raise RepositoryError(
                        f"{self.target.describe()}: the index kept changing while it was "
                        "read (a prune running?); try again"
                    ) from None
        if self.damaged_segments and self.write_only is None:
            packs = await self.scan_unindexed_packs()
            log.warning(
                "%s: %d index segment(s) could not be read (%s); read %d pack header(s) "
                "instead. Run `mosaic-backup repo repair index` to rewrite the index.",
                self.target.describe(),
                len(self.damaged_segments),
                ", ".join(self.damaged_segments[:3]),
                packs,
            )
        self.index.compact()

    async def _load_segments(self) -> None:
        async for obj in self.target.list(fmt.INDEX_PREFIX):
            where = f"{self.target.describe()}/{obj.key}"
            sealed = await self.target.get(obj.key)
            if self.write_only is not None and not self.keys.holds(sealed_kid(sealed)):
                # Sealed before the index key existed (or by a writer that opened the
                # repository before): not readable here, only costs deduplication.
                continue
            if self.recipient is not None:
                await self._ensure_key_for(sealed)
            try:
                packs = segments.open_segment(self.keys, obj.key, sealed, where)
            except (IntegrityError, KeyError):
                self.damaged_segments.append(obj.key)
                continue
            for pack in packs:
                for e in pack.entries:
                    self.index[e.id] = IndexEntry(
                        pack.pack_id, e.offset, e.length, e.otype, e.raw_length
                    )

    async def scan_unindexed_packs(self) -> int:
        """Add the blobs of every pack the index does not know, read from the packs'
        own headers (the fallback for a damaged or deleted index segment, and what
        ``repo repair index`` builds on); return how many packs were read. Packs whose
        header cannot be read are listed in ``unreadable_packs``."""
        self.refuse_write_only("reading pack headers")
        known = self.index.pack_ids()
        found = 0
        async for obj in self.target.list(fmt.DATA_PREFIX):
            pack_id = packscan.pack_id_of(obj.key)
            if pack_id is None or pack_id in known:
                continue
            try:
                entries = await packscan.read_header(self.target, self.keys, obj.key, obj.size)
            except (IntegrityError, ObjectNotFound) as exc:
                if obj.key not in self.unreadable_packs:
                    self.unreadable_packs[obj.key] = str(exc)
                continue
            for e in entries:
                if e.id not in self.index:
                    self.index[e.id] = IndexEntry(
                        pack_id, e.offset, e.length, e.otype, e.raw_length
                    )
            found += 1
        self._scanned = True
        return found

    async def find_missing(self, chunk_ids: Iterable[bytes]) -> list[bytes]:
        """The ids the index lacks; before answering, read the headers of unindexed
        packs once (a deleted index segment must not make intact data unreachable)."""
        missing = [c for c in chunk_ids if c not in self.index]
        if missing and not self._scanned and self.write_only is None:
            await self.scan_unindexed_packs()
            self.index.compact()
            missing = [c for c in missing if c not in self.index]
        return missing

    def chunker(self) -> FastCDC:
        c = self.config
        return FastCDC(
            avg_size=c.chunker_avg,
            min_size=c.chunker_min,
            max_size=c.chunker_max,
            seed=c.chunker_seed,
        )

    # --- writing ---------------------------------------------------------------------

    def known(self, blob_id: bytes) -> bool:
        return blob_id in self.index or blob_id in self._pending

    def reserve(self, blob_id: bytes) -> bool:
        """Claim a new blob id for this writer; False if stored or claimed already.

        Thread-safe, so the reading thread of a backup can claim ids while the event
        loop uploads packs. A claimed id must then be passed to :meth:`add_sealed` with
        ``reserved=True``.
        """
        with self._lock:
            if blob_id in self.index or blob_id in self._pending:
                return False
            self._pending.add(blob_id)
            return True

    def seal_blob(self, otype: int, blob_id: bytes, data: bytes | memoryview) -> bytes:
        """Compress and encrypt one blob (pure CPU, releases the GIL in zstd)."""
        return seal(self.keys, otype, blob_id, data, zstd_level=self.zstd_level)

    def prepare_blob(self, otype: int, data: bytes | memoryview) -> tuple[bytes, bytes | None]:
        """Return (chunk id, sealed blob or None when the repository has it already).

        Pure CPU work; call from a worker thread. The id is only reserved by
        :meth:`add_sealed`, so two identical new chunks in one batch both seal (harmless).
        """
        blob_id = self.keys.chunk_id(data)
        if self.known(blob_id):
            return blob_id, None
        return blob_id, self.seal_blob(otype, blob_id, data)

    async def add_sealed(
        self,
        otype: int,
        blob_id: bytes,
        sealed: bytes,
        raw_length: int,
        *,
        reserved: bool = False,
        flush: bool = True,
    ) -> bool:
        """Put a sealed blob into the open pack; False if it was a duplicate.

        With ``flush`` a full pack is uploaded before returning; without it the caller
        checks :meth:`pack_full` and uploads through :meth:`take_pack` and
        :meth:`upload_pack` (concurrent uploads).
        """
        if not reserved and not self.reserve(blob_id):
            return False
        self._writer.add(otype, blob_id, sealed, raw_length)
        if flush and self.pack_full():
            await self.flush_pack()
        return True

    def pack_full(self) -> bool:
        return self._writer.size >= self.pack_size

    def take_pack(self) -> SealedPack | None:
        """Close the open pack (seals its header, hashes it); None if it is empty."""
        if not len(self._writer):
            return None
        writer, self._writer = self._writer, PackWriter()
        pack_id, data, entries = writer.finish(self.keys)
        return SealedPack(pack_id, data, entries)

    async def upload_pack(self, pack: SealedPack) -> None:
        """Store a closed pack, then make its blobs findable (index after the put).

        One span per pack (several MiB), never per chunk: a bounded number per backup."""
        await self._store_session_key()
        key = fmt.pack_key(pack.pack_id)
        with tracing.span(
            "upload pack",
            scope="mosaic.agent",
            attributes={
                "mosaic.target": self.target.describe(),
                "mosaic.key": key,
                "mosaic.bytes": len(pack.data),
                "mosaic.blobs": len(pack.entries),
            },
        ):
            await self.target.put(key, pack.data)
        self.bytes_uploaded += len(pack.data)
        self.packs_written += 1
        self._unindexed.append(SegmentPack(pack.pack_id, list(pack.entries)))
        for e in pack.entries:
            self.index[e.id] = IndexEntry(pack.pack_id, e.offset, e.length, e.otype, e.raw_length)
            self._pending.discard(e.id)
        if len(self._unindexed) >= self.index_every:
            await self._write_index_segment()

    async def flush_pack(self) -> None:
        """Close and upload the open pack (the one path for the last, partly full one)."""
        pack = await anyio.to_thread.run_sync(self.take_pack)
        if pack is not None:
            await self.upload_pack(pack)

    async def write_index(self) -> None:
        """Upload the open pack and an index segment for every pack not yet indexed."""
        await self.flush_pack()
        await self._write_index_segment()

    async def _write_index_segment(self) -> None:
        """A checkpoint: the packs uploaded so far become findable by later backups, so
        a backup killed now re-uploads only what came after (it stays unreferenced until
        a manifest points at it)."""
        packs, self._unindexed = self._unindexed, []
        if not packs:
            return
        key = segments.new_key()
        sealed = segments.seal_segment(self.keys, key, packs)
        await self.target.put(key, sealed)
        self.bytes_uploaded += len(sealed)

    async def commit_manifest(self, manifest: Manifest) -> None:
        await self.write_index()
        key = fmt.manifest_key(manifest.backup_id)
        sealed = seal(self.keys, fmt.OT_MANIFEST, key.encode(), manifest_encoder.encode(manifest))
        await self._store_session_key()
        await self.target.put(key, sealed)
        self.bytes_uploaded += len(sealed)

    # --- reading ---------------------------------------------------------------------

    async def read_blob(self, blob_id: bytes) -> bytes:
        """Fetch, authenticate and decompress one blob; check its id."""
        self.refuse_write_only("reading backup data")
        entry = self.index.get(blob_id)
        if entry is None and not await self.find_missing([blob_id]):
            entry = self.index.get(blob_id)
        if entry is None:
            raise IntegrityError(f"chunk {blob_id.hex()}: not in the repository index (missing)")
        key = fmt.pack_key(entry.pack_id)
        where = f"{self.target.describe()}/{key} at offset {entry.offset}"
        try:
            data = await self.target.get_range(key, entry.offset, entry.length)
        except ObjectNotFound:
            raise IntegrityError(f"pack {key}: missing from {self.target.describe()}") from None
        if len(data) != entry.length:
            raise IntegrityError(
                f"{where}: expected {entry.length} bytes, got {len(data)} (truncated)"
            )
        await self._ensure_key_for(data)
        return self.open_blob(blob_id, data, where)

    def open_blob(self, blob_id: bytes, data: bytes | memoryview, where: str) -> bytes:
        """Authenticate, decompress and re-hash one sealed blob (CPU; any thread)."""
        self.refuse_write_only("reading backup data")
        _, plain = open_sealed(self.keys, blob_id, data, where)
        if self.keys.chunk_id(plain) != blob_id:
            raise IntegrityError(f"{where}: content does not match chunk id {blob_id.hex()[:16]}…")
        return plain

    async def load_manifest(self, backup_id: str) -> Manifest:
        self.refuse_write_only("reading a backup's manifest")
        key = fmt.manifest_key(backup_id)
        where = f"{self.target.describe()}/{key}"
        try:
            sealed = await self.target.get(key)
        except ObjectNotFound:
            raise RepositoryError(f"backup {backup_id}: no manifest at {where}") from None
        await self._ensure_key_for(sealed)
        _, payload = open_sealed(self.keys, key.encode(), sealed, where)
        try:
            return manifest_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise IntegrityError(f"{where}: manifest is invalid ({exc})") from exc

    async def has_manifest(self, backup_id: str) -> bool:
        return await self.target.exists(fmt.manifest_key(backup_id))

    async def list_manifests(self) -> list[str]:
        return [
            o.key[len(fmt.MANIFESTS_PREFIX) :] async for o in self.target.list(fmt.MANIFESTS_PREFIX)
        ]

    async def read_tree(self, manifest: Manifest) -> list[Node]:
        stream = b"".join([await self.read_blob(i) for i in manifest.tree])
        return list(decode_tree(stream, f"backup {manifest.backup_id} tree"))
