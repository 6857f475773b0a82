"""Backup of a directory tree into a repository.

The tree is walked first (stat only), then one reader thread reads the files in walk
order through the parallel pipeline in :mod:`engine.backup.pipeline` (chunk, hash, claim new ids;
seal on every core; concurrent pack uploads), building the tree's nodes as it goes. The
tree itself is then chunked like any data and stored as TREE blobs.

Incremental rule (as restic's): with a parent backup, a file whose size, mtime, ctime and
inode are unchanged, and whose chunks are all in the index, reuses the parent's chunk
list without being read. See docs/files.md for the limits of that rule.

Damage never spreads: a file that cannot be read is left out with a warning (or fails
the backup, with ``on_unreadable = "fail"``); a file whose size, mtime or ctime differ
after reading from what the walk saw is stored as read and named in a "changed"
warning (its node keeps the walk's times, so the next incremental reads it again).

Sparse files (fewer blocks allocated than their size) are read by SEEK_DATA/SEEK_HOLE:
holes become zeros in the buffer without a read, and a run of whole chunks inside a
hole is emitted without scanning or hashing (see :meth:`Cutter.cut_sparse`). The
chunks are exactly those of reading the zeros, so sparse and dense copies deduplicate.
See docs/files.md.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import anyio.to_thread
from opentelemetry import context as otel_context

from engine.backup import filecache
from engine.backup.cutter import Cutter
from engine.backup.pipeline import (
    READ_BATCH_BYTES,
    Emit,
    Plain,
    Sealed,
    run_pipeline,
)
from engine.backup.snapshot import snapshot_root
from engine.backup.stream import Stream
from engine.backup.walk import (
    Entry,
    Globs,
    WalkStats,
    display_name,
    unreadable_error,
    walk,
    why,
)
from engine.format import spec as fmt
from engine.format.manifest import Manifest, Node, NodeType, encode_tree
from engine.lease import lease
from engine.progress import Progress, ProgressFn, no_progress
from engine.repository import Repository
from shared import tracing
from shared.errors import SourceError
from shared.tasks import task_group
from shared.vocab import BackupSummary, BackupType, utcnow
from shared.wire.sources import FilesSource, Source


@dataclass(slots=True)
class BackupCounters:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_read: int = 0
    bytes_new: int = 0
    chunks_total: int = 0
    chunks_new: int = 0
    files_unchanged: int = 0
    hardlinks: int = 0


def _unchanged(st: os.stat_result, parent: Node | None, repo: Repository) -> bool:
    return (
        parent is not None
        and parent.type == "file"
        and parent.size == st.st_size
        and parent.mtime_ns == st.st_mtime_ns
        and parent.ctime_ns == st.st_ctime_ns
        and parent.inode == st.st_ino
        and all(repo.known(c) for c in parent.chunks)
    )


def _node(
    entry: Entry,
    kind: NodeType,
    *,
    chunks: list[bytes] | None = None,
    size: int = 0,
    target: bytes = b"",
) -> Node:
    st = entry.st
    regular = kind in ("file", "hardlink")
    return Node(
        path=entry.rel,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        size=size,
        inode=st.st_ino if regular else 0,
        ctime_ns=st.st_ctime_ns if regular else 0,
        chunks=chunks or [],
        target=target,
        xattrs=entry.xattrs or {},
    )


class _Reader:
    """The reading stage (one worker thread): walk order, chunk, hash, claim ids.

    Builds the tree's nodes as it goes; new chunks leave through ``emit`` in batches.
    """

    def __init__(
        self,
        repo: Repository,
        entries: list[Entry | Stream],
        parent: dict[bytes, Node] | None,
        progress: Progress,
        *,
        source: FilesSource | None = None,
        stats: WalkStats | None = None,
    ) -> None:
        self.repo = repo
        self.entries = entries
        self.parent = parent or {}
        self.progress = progress
        self.counters = BackupCounters()
        self.source = source
        self.secrets = Globs(source.secret if source else [])
        self.strict = source is not None and source.on_unreadable == "fail"
        self.stats = stats if stats is not None else WalkStats()
        self._batch: Plain = []
        self._batch_bytes = 0
        self._zero_id: bytes | None = None

    def __call__(self, emit: Emit) -> list[Node]:
        nodes: list[Node] = []
        chunker = Cutter(self.repo.chunker())
        c = self.counters
        links: dict[tuple[int, int], Node] = {}
        stream_dirs: set[bytes] = set()
        for entry in self.entries:
            if isinstance(entry, Stream):
                nodes.extend(self._stream_dirs(entry.name, stream_dirs))
                nodes.append(self._read_stream(entry, chunker, emit))
                continue
            st = entry.st
            if stat.S_ISDIR(st.st_mode):
                c.dirs += 1
                nodes.append(_node(entry, "dir"))
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(entry.abspath)
                except OSError as exc:
                    self._unreadable(entry, "read the link", exc)
                    continue
                c.symlinks += 1
                nodes.append(_node(entry, "symlink", target=target))
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
                # another name of a file already in this backup: restored as a hard link
                first = links[(st.st_dev, st.st_ino)]
                c.files += 1
                c.hardlinks += 1
                nodes.append(
                    _node(
                        entry, "hardlink", chunks=first.chunks, size=first.size, target=first.path
                    )
                )
                self.progress.bytes_done += first.size
                self.progress.files_done += 1
            else:
                old = self.parent.get(entry.rel)
                if old is not None and _unchanged(st, old, self.repo):
                    chunks, size = old.chunks, old.size
                    c.files_unchanged += 1
                    c.chunks_total += len(chunks)
                    self.progress.bytes_done += size
                else:
                    got = self._read_file(entry, chunker, emit)
                    if got is None:  # left out, with a warning
                        self.progress.files_done += 1
                        continue
                    chunks, size = got
                c.files += 1
                nodes.append(_node(entry, "file", chunks=chunks, size=size))
                if st.st_nlink > 1:
                    links[(st.st_dev, st.st_ino)] = nodes[-1]
                self.progress.files_done += 1
        emit(self._batch)
        self._batch = []
        return nodes

    def _stream_dirs(self, name: bytes, seen: set[bytes]) -> list[Node]:
        """Folder nodes for the parents of a nested stream name (``packages/x.txt``),
        each once and before its content, as restore requires."""
        parts = name.split(b"/")[:-1]
        new = [b"/".join(parts[: i + 1]) for i in range(len(parts))]
        now = time.time_ns()
        out = [Node(path=d, type="dir", mode=0o700, mtime_ns=now) for d in new if d not in seen]
        seen.update(new)
        self.counters.dirs += len(out)
        return out

    def _read_stream(self, stream: Stream, chunker: Cutter, emit: Emit) -> Node:
        """One stream of a source, as a file node; fails unless its producer succeeded."""
        self.progress.files_total += 1
        handle = stream.open()
        try:
            cuts = (ch.data for ch in chunker.fastcdc.cut_stream(handle.reader))
            chunks, size = self._consume(cuts, emit)
            handle.finish()
        except BaseException:
            handle.abort()
            raise
        self.counters.files += 1
        self.progress.files_done += 1
        now = time.time_ns()
        return Node(
            path=stream.name, type="file", mode=0o600, mtime_ns=now, size=size, chunks=chunks
        )

    def _name(self, entry: Entry) -> str:
        # a secret file's name stays out of warnings and errors (they travel in events)
        if self.source is None:
            return "a secret file" if entry.secret else os.fsdecode(entry.abspath)
        return display_name(self.source, entry.rel, self.secrets)

    def _unreadable(self, entry: Entry, doing: str, exc: OSError) -> None:
        name = self._name(entry)
        if self.strict:
            raise unreadable_error(name, doing, exc) from exc
        reason = "vanished" if isinstance(exc, FileNotFoundError) else why(exc)
        self.stats.warn(name, "unreadable", f"cannot {doing}: {reason}")

    def _read_file(
        self, entry: Entry, chunker: Cutter, emit: Emit
    ) -> tuple[list[bytes], int] | None:
        """The file's chunk ids and size as read; None when it was left out."""
        st = entry.st
        try:
            with open(entry.abspath, "rb", buffering=0) as f:
                if st.st_blocks * 512 < st.st_size:  # holes: read only the data
                    zero = chunker.zero_chunk()
                    if self._zero_id is None:
                        self._zero_id = self.repo.keys.chunk_id(zero)
                    ids, size = self._consume(chunker.cut_sparse(f), emit, zero, self._zero_id)
                else:
                    ids, size = self._consume(chunker.cut_file(f), emit)
                after = os.fstat(f.fileno())
        except OSError as exc:
            if self.source is None:
                raise SourceError(f"cannot read {self._name(entry)}: {exc.strerror}") from exc
            self._unreadable(entry, "read", exc)
            return None
        if (size, after.st_mtime_ns, after.st_ctime_ns) != (
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        ):
            self.stats.warn(
                self._name(entry),
                "changed",
                f"changed while read ({st.st_size} bytes when found, {size} read, "
                f"{after.st_size} now); stored as read",
            )
        return ids, size

    def _consume(
        self,
        chunks: Iterator[memoryview],
        emit: Emit,
        zero: memoryview | None = None,
        zero_id: bytes = b"",
    ) -> tuple[list[bytes], int]:
        """Hash every chunk, claim the new ones and hand them to the sealers. A chunk
        that *is* ``zero`` (the cutter's shared run-of-zeros chunk) has ``zero_id``."""
        ids: list[bytes] = []
        size = 0
        c, repo = self.counters, self.repo
        for data in chunks:
            n = len(data)
            bid = zero_id if data is zero else repo.keys.chunk_id(data)
            ids.append(bid)
            size += n
            c.chunks_total += 1
            self.progress.bytes_done += n
            if repo.reserve(bid):
                c.chunks_new += 1
                c.bytes_new += n
                self._batch.append((bid, bytes(data)))
                self._batch_bytes += n
                if self._batch_bytes >= READ_BATCH_BYTES:
                    batch, self._batch, self._batch_bytes = self._batch, [], 0
                    emit(batch)
        c.bytes_read += size
        return ids, size


async def _report_every(progress: Progress, report: ProgressFn, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        await report(progress)


async def backup_tree(
    repo: Repository,
    source: Source,
    *,
    parent: dict[bytes, Node] | None = None,
    report: ProgressFn = no_progress,
    streams: list[Stream] | None = None,
    root: str | None = None,
    nodes_out: list[Node] | None = None,
) -> tuple[list[bytes], BackupCounters, WalkStats]:
    """Back up ``source`` into ``repo``; return the tree's chunk ids and counters.

    ``root``: read a files source's tree from there (its snapshot) instead of its path.

    The caller commits the manifest; until then nothing references the new packs.
    """
    walk_stats = WalkStats()
    items: list[Entry | Stream]
    files_source: FilesSource | None = None
    if isinstance(source, FilesSource):
        files_source = source
        entries = await anyio.to_thread.run_sync(
            lambda: list(walk(files_source, walk_stats, root=root))
        )
        files = [e for e in entries if stat.S_ISREG(e.st.st_mode)]
        progress = Progress(bytes_total=sum(e.st.st_size for e in files), files_total=len(files))
        items = list(entries)
    else:
        # The caller opened the source's streams (agent.sources.streams_of), or the
        # archived logs a log backup stores: the engine knows no source kinds.
        if streams is None:
            raise TypeError(f"a {type(source).__name__} needs its streams from the caller")
        items = list(streams)
        progress = Progress()  # streams have no size until they end
    reader = _Reader(repo, items, parent, progress, source=files_source, stats=walk_stats)
    # The reader's span, a sibling of the pack uploads (both children of the job's span).
    job_context = otel_context.get_current()

    def traced_reader(emit: Emit) -> list[Node]:
        with tracing.span("read source", scope="mosaic.agent", context=job_context) as sp:
            nodes = reader(emit)
            sp.set_attribute("mosaic.bytes_read", reader.counters.bytes_read)
            sp.set_attribute("mosaic.files", reader.counters.files)
            return nodes

    async with task_group() as tg:
        tg.start_soon(_report_every, progress, report, 0.25)
        nodes = await run_pipeline(repo, traced_reader)
        tg.cancel_scope.cancel()
    await report(progress)
    if nodes_out is not None:
        nodes_out.extend(nodes)
    tree_ids = await anyio.to_thread.run_sync(_store_tree, repo, encode_tree(nodes))
    for bid, blob, n in tree_ids[1]:
        await repo.add_sealed(fmt.OT_TREE, bid, blob, n, reserved=True)
    return tree_ids[0], reader.counters, walk_stats


def _store_tree(repo: Repository, stream: bytes) -> tuple[list[bytes], Sealed]:
    """Chunk the tree stream; seal the chunks the repository does not have yet."""
    ids: list[bytes] = []
    new: Sealed = []
    for ch in repo.chunker().cut_buf(stream):
        bid = repo.keys.chunk_id(ch.data)
        ids.append(bid)
        if repo.reserve(bid):
            new.append((bid, repo.seal_blob(fmt.OT_TREE, bid, ch.data), len(ch.data)))
    return ids, new


@dataclass(frozen=True, slots=True)
class BackupSpec:
    backup_id: str
    dataset: str
    agent: str
    source: Source
    backup_type: BackupType = "full"
    parent_backup_id: str | None = None
    # A stream source's streams (agent.sources.streams_of), or a log backup's logs;
    # None for a files source, which the engine walks.
    streams: list[Stream] | None = None
    state_dir: str | None = None  # the agent's; snapshots record themselves there
    tier: str | None = None  # the job's retention tier, recorded in the manifest


async def backup_dataset(
    repo: Repository, spec: BackupSpec, *, report: ProgressFn = no_progress
) -> Manifest:
    """One whole backup: the parent's file cache, the tree, then the manifest (last)."""
    started = utcnow()
    t0 = time.monotonic()
    parent = None
    # A write-only agent cannot read the parent's tree: it keeps its own file cache.
    local_cache = spec.state_dir if repo.write_only is not None else None
    if spec.backup_type == "incremental" and spec.parent_backup_id and local_cache:
        cached = await anyio.to_thread.run_sync(filecache.load, local_cache, spec.dataset)
        parent = cached[1] if cached else None
    elif spec.backup_type == "incremental" and spec.parent_backup_id:
        if await repo.has_manifest(spec.parent_backup_id):
            pm = await repo.load_manifest(spec.parent_backup_id)
            parent = {n.path: n for n in await repo.read_tree(pm)}
    uploaded_before = repo.bytes_uploaded
    packs_before = repo.packs_written
    holder = f"{spec.agent}@{socket.gethostname()}"
    async with lease(repo.target, repo.keys, holder=holder, purpose=f"backup {spec.backup_id}"):
        # The index the repository was opened with may predate a garbage collection
        # that has since hidden packs it is about to delete: read it again under the lease.
        await repo.reload_index()
        snap = snapshot_root(
            spec.source, spec.backup_id, state_dir=spec.state_dir, agent=spec.agent
        )
        async with snap as root:  # a snapshot, when asked for: always removed on exit
            nodes: list[Node] | None = [] if local_cache else None
            tree, c, stats = await backup_tree(
                repo,
                spec.source,
                parent=parent,
                report=report,
                streams=spec.streams,
                root=root,
                nodes_out=nodes,
            )
        await repo.flush_pack()  # the last, partly full pack: its upload is the job's child
        with tracing.span("write index", scope="mosaic.agent"):
            await repo.write_index()
        summary = BackupSummary(
            files=c.files,
            dirs=c.dirs,
            symlinks=c.symlinks,
            bytes_read=c.bytes_read,
            bytes_new=c.bytes_new,
            bytes_stored=repo.bytes_uploaded - uploaded_before,
            chunks_total=c.chunks_total,
            chunks_new=c.chunks_new,
            packs_written=repo.packs_written - packs_before,
            duration_s=time.monotonic() - t0,
            files_skipped=stats.skipped_special,
            files_unreadable=stats.unreadable,
            files_changed=stats.changed,
            warnings=stats.warnings,
        )
        manifest = Manifest(
            backup_id=spec.backup_id,
            dataset=spec.dataset,
            agent=spec.agent,
            backup_type=spec.backup_type,
            parent=spec.parent_backup_id if parent is not None else None,
            source=spec.source,
            started_at=started,
            finished_at=utcnow(),
            tree=tree,
            summary=summary,
            hostname=socket.gethostname(),
            tier=spec.tier,
        )
        with tracing.span(
            "commit manifest",
            scope="mosaic.agent",
            attributes={"mosaic.backup_id": spec.backup_id, "mosaic.bytes_new": c.bytes_new},
        ):
            await repo.commit_manifest(manifest)
    if local_cache and nodes is not None:
        await anyio.to_thread.run_sync(filecache.save, local_cache, manifest, nodes)
    return manifest
