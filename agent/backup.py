"""Backup of a directory tree into a repository.

read → chunk (FastCDC) → id (keyed BLAKE3) → dedup check → zstd → AES-GCM run in a
worker thread, one bounded batch at a time, so memory stays at about one batch
(``BATCH_BYTES``) plus one open pack whatever the size of the files. Packs upload from
the event loop. With a parent backup, files whose size, mtime, ctime and inode are
unchanged reuse the parent's chunk list without being read (restic's rule; see README).
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio.to_thread

from agent.progress import Progress, ProgressFn, no_progress
from agent.sources.files import Entry, WalkStats, walk
from shared.errors import SourceError
from shared.messages import BackupSummary, BackupType, FilesSource, utcnow
from shared.repository import format as fmt
from shared.repository.manifest import Manifest, Node, encode_tree
from shared.repository.repository import Repository

BATCH_BYTES = 32 << 20


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


Batch = list[tuple[bytes, bytes | None, int]]


def _next_batch(repo: Repository, chunks: Iterator[object], otype: int) -> Batch:
    out: Batch = []
    size = 0
    for ch in chunks:
        data = ch.data  # type: ignore[attr-defined]
        blob_id, sealed = repo.prepare_blob(otype, data)
        out.append((blob_id, sealed, len(data)))
        size += len(data)
        if size >= BATCH_BYTES:
            break
    return out


async def _store(
    repo: Repository, batch: Batch, otype: int, counters: BackupCounters
) -> list[bytes]:
    ids = []
    for blob_id, sealed, length in batch:
        counters.chunks_total += 1
        if sealed is not None and await repo.add_sealed(otype, blob_id, sealed, length):
            counters.chunks_new += 1
            counters.bytes_new += length
        ids.append(blob_id)
    return ids


async def _backup_file(
    repo: Repository, entry: Entry, counters: BackupCounters, progress: Progress, report: ProgressFn
) -> tuple[list[bytes], int]:
    """Chunk and store one file; return its chunk ids and the bytes actually read."""
    try:
        f = await anyio.to_thread.run_sync(open, entry.abspath, "rb")
    except OSError as exc:
        raise SourceError(f"cannot read {os.fsdecode(entry.abspath)}: {exc.strerror}") from exc
    ids: list[bytes] = []
    size = 0
    try:
        chunks = iter(repo.chunker().cut_stream(f))
        while True:
            try:
                batch = await anyio.to_thread.run_sync(_next_batch, repo, chunks, fmt.OT_DATA)
            except OSError as exc:
                raise SourceError(f"cannot read {os.fsdecode(entry.abspath)}: {exc}") from exc
            if not batch:
                break
            ids += await _store(repo, batch, fmt.OT_DATA, counters)
            n = sum(b[2] for b in batch)
            counters.bytes_read += n
            size += n
            progress.bytes_done += n
            await report(progress)
    finally:
        f.close()
    return ids, size


def _unchanged(entry: Entry, parent: Node | None, repo: Repository) -> bool:
    st = entry.st
    return (
        parent is not None
        and parent.type == "file"
        and parent.size == st.st_size
        and parent.mtime_ns == st.st_mtime_ns
        and parent.ctime_ns == st.st_ctime_ns
        and parent.inode == st.st_ino
        and all(repo.known(c) for c in parent.chunks)
    )


async def backup_tree(
    repo: Repository,
    source: FilesSource,
    *,
    parent: dict[bytes, Node] | None = None,
    report: ProgressFn = no_progress,
) -> tuple[list[bytes], BackupCounters, WalkStats]:
    """Back up ``source`` into ``repo``; return the tree's chunk ids and counters.

    The caller commits the manifest; until then nothing references the new packs.
    """
    walk_stats = WalkStats()
    entries = await anyio.to_thread.run_sync(lambda: list(walk(source, walk_stats)))
    progress = Progress(
        bytes_total=sum(e.st.st_size for e in entries if stat.S_ISREG(e.st.st_mode)),
        files_total=sum(1 for e in entries if stat.S_ISREG(e.st.st_mode)),
    )
    counters = BackupCounters()
    nodes: list[Node] = []
    last_report = 0.0
    for entry in entries:
        st = entry.st
        common = {
            "path": entry.rel,
            "mode": stat.S_IMODE(st.st_mode),
            "mtime_ns": st.st_mtime_ns,
            "uid": st.st_uid,
            "gid": st.st_gid,
        }
        if stat.S_ISDIR(st.st_mode):
            counters.dirs += 1
            nodes.append(Node(type="dir", **common))  # type: ignore[arg-type]
        elif stat.S_ISLNK(st.st_mode):
            counters.symlinks += 1
            target = await anyio.to_thread.run_sync(os.readlink, entry.abspath)
            nodes.append(Node(type="symlink", target=target, **common))  # type: ignore[arg-type]
        else:
            counters.files += 1
            old = parent.get(entry.rel) if parent else None
            if old is not None and _unchanged(entry, old, repo):
                chunks, size = old.chunks, old.size
                counters.files_unchanged += 1
                counters.chunks_total += len(chunks)
                progress.bytes_done += st.st_size
            else:
                chunks, size = await _backup_file(repo, entry, counters, progress, report)
            nodes.append(
                Node(
                    type="file",
                    size=size,
                    inode=st.st_ino,
                    ctime_ns=st.st_ctime_ns,
                    chunks=chunks,
                    **common,  # type: ignore[arg-type]
                )
            )
            progress.files_done += 1
            now = time.monotonic()
            if now - last_report > 0.2:
                last_report = now
                await report(progress)
    await report(progress)
    tree_stream = encode_tree(nodes)
    tree_chunks = iter(repo.chunker().cut_buf(tree_stream))
    tree_ids: list[bytes] = []
    while batch := await anyio.to_thread.run_sync(_next_batch, repo, tree_chunks, fmt.OT_TREE):
        tree_ids += await _store(repo, batch, fmt.OT_TREE, BackupCounters())
    return tree_ids, counters, walk_stats


@dataclass(frozen=True, slots=True)
class BackupSpec:
    backup_id: str
    dataset: str
    agent: str
    source: FilesSource
    backup_type: BackupType = "full"
    parent_backup_id: str | None = None


async def backup_dataset(
    repo: Repository, spec: BackupSpec, *, report: ProgressFn = no_progress
) -> Manifest:
    """One whole backup: the parent's file cache, the tree, then the manifest (last)."""
    started = utcnow()
    t0 = time.monotonic()
    parent = None
    if spec.backup_type == "incremental" and spec.parent_backup_id:
        if await repo.has_manifest(spec.parent_backup_id):
            pm = await repo.load_manifest(spec.parent_backup_id)
            parent = {n.path: n for n in await repo.read_tree(pm)}
    uploaded_before = repo.bytes_uploaded
    packs_before = repo.packs_written
    tree, c, _ = await backup_tree(repo, spec.source, parent=parent, report=report)
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
    )
    await repo.commit_manifest(manifest)
    return manifest
