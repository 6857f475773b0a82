"""The backups of a repository as a read-only file tree (``repo mount``), without FUSE:
the inode table, lookups, listings and ranged reads. mosaic/commands/repo/mount_fuse.py
turns these into pyfuse3 operations, so this module needs neither pyfuse3 nor a mount.

Layout, one folder per dataset::

    <dataset>/by-date/<started, UTC>/…   one folder per backup (2026-12-03T14:20:04Z;
                                         a second backup started in the same second
                                         gets "-2", then "-3" …)
    <dataset>/by-id/<backup id>          a symlink to ../by-date/<started>
    <dataset>/latest                     a symlink to by-date/<the newest>

A backup's tree is read on first use (a lookup in, or a listing of, its folder) and
stays in memory until unmount; its entries carry the modes, owners, sizes, mtimes and
extended attributes of the manifest. A hard link is one inode under each of its names.
Entries a restore would refuse (``..``, empty names, a parent that is not a folder)
are left out and counted.

Reading a file fetches only the chunks covering the requested range: one ranged read
of each blob from its pack, authenticated, decompressed and re-hashed in a worker
thread, like restore (engine.restore.fetch). Decrypted chunks are kept in an LRU cache
of at most ``cache_bytes`` (64 MiB by default), plus the chunks being read at that
moment (at most ``PARALLEL_FETCHES``, each at most the repository's maximum chunk
size); two readers of one chunk share one fetch. A chunk that is missing or damaged
fails the read with :class:`shared.errors.IntegrityError` (the mount answers EIO),
never with wrong bytes. Secret files read like any other (the mount runs with the
key, as restore does); errors name them as ``conf/<secret>``.

Lookups raise :class:`FileNotFoundError` / :class:`NotADirectoryError` (errno for the
FUSE layer); repository failures raise the repository's own errors.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
import anyio.to_thread

from engine.backup.walk import shown_names
from engine.format import spec as fmt
from engine.format.crypto import sealed_kid
from engine.format.manifest import Manifest, Node
from engine.repository import Repository
from shared.errors import ConfigError, IntegrityError, ObjectNotFound

log = logging.getLogger(__name__)

ROOT_INODE = 1
CACHE_BYTES = 64 << 20
PARALLEL_FETCHES = 4
DIR_MODE = stat.S_IFDIR | 0o555  # the folders the mount makes up (root, datasets, …)


@dataclass(slots=True)
class Entry:
    """One inode. ``children`` maps a folder's names to inodes (sorted by name);
    ``manifest`` is set on a backup's folder until its tree is read."""

    inode: int
    mode: int  # st_mode, type bits included
    mtime_ns: int
    size: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    target: bytes = b""  # a symlink's target
    chunks: list[bytes] = field(default_factory=list)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    children: dict[bytes, int] | None = None
    manifest: Manifest | None = None
    shown: str = ""  # how errors name it (a secret's name withheld)
    starts: list[int] | None = None  # a file's chunk offsets, once opened

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def time_name(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ns(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def _safe(path: bytes) -> bool:
    parts = path.split(b"/")
    return bool(path) and b"\0" not in path and all(p not in (b"", b".", b"..") for p in parts)


class ChunkCache:
    """Decrypted chunks, most recently used kept, at most ``limit`` bytes (raised to
    the repository's maximum chunk size)."""

    def __init__(self, repo: Repository, limit: int = CACHE_BYTES) -> None:
        self.repo = repo
        # at least one chunk of the largest size: a file read in kernel-sized pieces
        # must not fetch its chunk again for every piece
        self.limit = max(limit, repo.config.chunker_max)
        self.bytes = 0
        self.fetches = 0  # chunks fetched from the target (a test counts them)
        self._lru: OrderedDict[bytes, bytes] = OrderedDict()
        self._inflight: dict[bytes, anyio.Event] = {}
        self._limiter = anyio.CapacityLimiter(PARALLEL_FETCHES)

    async def get(self, chunk_id: bytes, shown: str) -> bytes:
        while (event := self._inflight.get(chunk_id)) is not None:
            await event.wait()  # another reader fetches it; on failure we try ourselves
        data = self._lru.get(chunk_id)
        if data is not None:
            self._lru.move_to_end(chunk_id)
            return data
        event = self._inflight[chunk_id] = anyio.Event()
        try:
            async with self._limiter:
                data = await self._fetch(chunk_id, shown)
            self._keep(chunk_id, data)
            return data
        finally:
            del self._inflight[chunk_id]
            event.set()

    def _keep(self, chunk_id: bytes, data: bytes) -> None:
        if len(data) > self.limit:
            return
        self._lru[chunk_id] = data
        self.bytes += len(data)
        while self.bytes > self.limit:
            _, old = self._lru.popitem(last=False)
            self.bytes -= len(old)

    async def _fetch(self, chunk_id: bytes, shown: str) -> bytes:
        repo = self.repo
        entry = repo.index.get(chunk_id)
        if entry is None:
            raise IntegrityError(f"{shown}: chunk {chunk_id.hex()[:16]}… is in no index segment")
        key = fmt.pack_key(entry.pack_id)
        where = f"{repo.target.describe()}/{key} at offset {entry.offset} (part of {shown})"
        try:
            sealed = await repo.target.get_range(key, entry.offset, entry.length)
        except ObjectNotFound:
            raise IntegrityError(
                f"{shown}: pack {key} is missing from {repo.target.describe()}"
            ) from None
        if len(sealed) != entry.length:
            raise IntegrityError(f"{where}: expected {entry.length} bytes, got {len(sealed)}")
        kid = sealed_kid(sealed)
        if kid and not repo.keys.holds(kid):
            await repo.refresh_keys()  # a write-only agent's session key stored since open
        self.fetches += 1
        return await anyio.to_thread.run_sync(repo.open_blob, chunk_id, sealed, where)


class BackupTree:
    """The inode table of a mount; see the module docstring."""

    def __init__(self, repo: Repository, manifests: list[Manifest], cache_bytes: int) -> None:
        self.repo = repo
        self.cache = ChunkCache(repo, cache_bytes)
        self.entries: dict[int, Entry] = {}
        self._owner = (os.getuid(), os.getgid())  # of the folders and links made up here
        self.backups = len(manifests)
        self.skipped = 0  # unsafe entries left out of the trees read so far
        self._loading: dict[int, anyio.Lock] = {}
        newest = max((_ns(m.started_at) for m in manifests), default=0)
        uid, gid = self._owner
        root = self._add(
            Entry(inode=0, mode=DIR_MODE, mtime_ns=newest, uid=uid, gid=gid, children={})
        )
        by_dataset: dict[str, list[Manifest]] = {}
        for m in sorted(manifests, key=lambda m: (m.started_at, m.backup_id)):
            by_dataset.setdefault(m.dataset, []).append(m)
        for dataset, ms in sorted(by_dataset.items()):
            self._dataset(root, dataset, ms)

    @classmethod
    async def load(
        cls, repo: Repository, dataset: str | None = None, cache_bytes: int = CACHE_BYTES
    ) -> BackupTree:
        """The tree of every backup in ``repo`` (of ``dataset`` only, when given)."""
        manifests = [await repo.load_manifest(i) for i in await repo.list_manifests()]
        where = repo.target.describe()
        if not manifests:
            raise ConfigError(f"the repository at {where} holds no backups: nothing to mount")
        if dataset is not None:
            names = sorted({m.dataset for m in manifests})
            manifests = [m for m in manifests if m.dataset == dataset]
            if not manifests:
                raise ConfigError(
                    f"--dataset: the repository at {where} holds no backup of dataset "
                    f"{dataset!r} (it holds: {', '.join(names)}); choose one of those"
                )
        return cls(repo, manifests, cache_bytes)

    # --- building ----------------------------------------------------------------------

    def _add(self, entry: Entry) -> Entry:
        entry.inode = ROOT_INODE + len(self.entries)
        self.entries[entry.inode] = entry
        return entry

    def _folder(self, parent: Entry, name: str, mtime_ns: int) -> Entry:
        uid, gid = self._owner
        folder = Entry(inode=0, mode=DIR_MODE, mtime_ns=mtime_ns, uid=uid, gid=gid, children={})
        entry = self._add(folder)
        self._link(parent, os.fsencode(name), entry)
        return entry

    def _symlink(self, parent: Entry, name: str, target: str, mtime_ns: int) -> None:
        t = os.fsencode(target)
        uid, gid = self._owner
        link = Entry(
            inode=0,
            mode=stat.S_IFLNK | 0o777,
            mtime_ns=mtime_ns,
            size=len(t),
            target=t,
            uid=uid,
            gid=gid,
        )
        self._link(parent, os.fsencode(name), self._add(link))

    @staticmethod
    def _link(parent: Entry, name: bytes, entry: Entry) -> None:
        assert parent.children is not None
        parent.children[name] = entry.inode

    def _dataset(self, root: Entry, dataset: str, manifests: list[Manifest]) -> None:
        newest = _ns(manifests[-1].started_at)
        top = self._folder(root, dataset.replace("/", "_"), newest)
        by_date = self._folder(top, "by-date", newest)
        by_id = self._folder(top, "by-id", newest)
        taken: set[str] = set()
        name = ""
        for m in manifests:
            base = name = time_name(m.started_at)
            n = 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
            taken.add(name)
            folder = self._folder(by_date, name, _ns(m.started_at))
            folder.children = None  # read on first use
            folder.manifest = m
            self._symlink(
                by_id, m.backup_id.replace("/", "_"), f"../by-date/{name}", folder.mtime_ns
            )
        self._symlink(top, "latest", f"by-date/{name}", newest)
        for e in (top, by_date, by_id):
            assert e.children is not None
            e.children = dict(sorted(e.children.items()))

    async def _ensure_loaded(self, entry: Entry) -> dict[bytes, int]:
        """A folder's children; a backup's folder reads its tree first (once)."""
        if entry.children is not None:
            return entry.children
        lock = self._loading.setdefault(entry.inode, anyio.Lock())
        async with lock:
            if entry.children is None:
                assert entry.manifest is not None
                m = entry.manifest
                try:
                    nodes = await self.repo.read_tree(m)
                except IntegrityError as exc:
                    raise IntegrityError(
                        f"backup {m.backup_id}: its file tree cannot be read ({exc})"
                    ) from exc
                self._graft(entry, nodes, shown_names(m.source))
                entry.manifest = None
        assert entry.children is not None
        return entry.children

    def _graft(self, root: Entry, nodes: list[Node], name: Callable[[bytes], str]) -> None:
        """Add a backup's nodes under its folder ``root``. The tree lists parents before
        their children and a hard link after its first name (as restore needs them)."""
        root.children = {}
        dirs: dict[bytes, Entry] = {b"": root}
        files: dict[bytes, Entry] = {}  # first names, for the hard links to them
        seen: set[bytes] = set()
        for node in nodes:
            parent_path, _, leaf = node.path.rpartition(b"/")
            parent = dirs.get(parent_path)
            if not _safe(node.path) or parent is None or node.path in seen:
                self.skipped += 1
                continue
            seen.add(node.path)
            first = files.get(node.target) if node.type == "hardlink" else None
            if first is not None:
                first.nlink += 1
                self._link(parent, leaf, first)
                continue
            entry = self._add(self._entry(node, name(node.path)))
            self._link(parent, leaf, entry)
            if entry.is_dir:
                dirs[node.path] = entry
            elif stat.S_ISREG(entry.mode):
                files[node.path] = entry
        for e in dirs.values():
            assert e.children is not None
            e.children = dict(sorted(e.children.items()))

    @staticmethod
    def _entry(node: Node, shown: str) -> Entry:
        kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(node.type, stat.S_IFREG)
        perm = 0o777 if node.type == "symlink" else stat.S_IMODE(node.mode)
        return Entry(
            inode=0,
            mode=kind | perm,
            mtime_ns=node.mtime_ns,
            size=len(node.target) if node.type == "symlink" else node.size,
            uid=node.uid,
            gid=node.gid,
            target=node.target if node.type == "symlink" else b"",
            chunks=node.chunks if node.type != "symlink" else [],
            xattrs=node.xattrs,
            children={} if node.type == "dir" else None,
            shown=shown,
        )

    # --- the operations ----------------------------------------------------------------

    def get(self, inode: int) -> Entry:
        entry = self.entries.get(inode)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, "no such inode")
        return entry

    async def listing(self, inode: int) -> list[tuple[bytes, Entry]]:
        entry = self.get(inode)
        if not entry.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        children = await self._ensure_loaded(entry)
        return [(name, self.entries[i]) for name, i in children.items()]

    async def lookup(self, parent: int, name: bytes) -> Entry:
        entry = self.get(parent)
        if not entry.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        if name == b".":
            return entry
        inode = (await self._ensure_loaded(entry)).get(name)
        if inode is None:
            raise FileNotFoundError(errno.ENOENT, "no such entry")
        return self.entries[inode]

    async def open(self, inode: int) -> Entry:
        """A file ready to read: its chunk offsets known (from the index)."""
        entry = self.get(inode)
        if not stat.S_ISREG(entry.mode):
            raise IsADirectoryError(errno.EISDIR, "not a file")
        if entry.starts is None:
            await self.repo.find_missing(entry.chunks)
            starts, pos = [], 0
            for cid in entry.chunks:
                e = self.repo.index.get(cid)
                if e is None:
                    raise IntegrityError(
                        f"{entry.shown}: chunk {cid.hex()[:16]}… is in no index segment and "
                        "no pack (`mosaic-backup repo repair snapshots` lists what it hits)"
                    )
                starts.append(pos)
                pos += e.raw_length
            if pos != entry.size:
                raise IntegrityError(
                    f"{entry.shown}: its chunks hold {pos} bytes, the manifest says {entry.size}"
                )
            entry.starts = starts
        return entry

    async def read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Bytes ``offset`` to ``offset + size`` of an opened file (fewer at its end)."""
        assert entry.starts is not None, "open() first"
        end = min(offset + size, entry.size)
        if offset >= end:
            return b""
        i = bisect.bisect_right(entry.starts, offset) - 1
        parts: list[bytes] = []
        pos = offset
        while pos < end:
            start = entry.starts[i]
            data = await self.cache.get(entry.chunks[i], entry.shown)
            expected = (entry.starts[i + 1] if i + 1 < len(entry.starts) else entry.size) - start
            if len(data) != expected:
                raise IntegrityError(
                    f"{entry.shown}: chunk {entry.chunks[i].hex()[:16]}… holds {len(data)} "
                    f"bytes, the index says {expected}"
                )
            stop = min(end, start + len(data))
            parts.append(data[pos - start : stop - start])
            pos = stop
            i += 1
        return b"".join(parts)
