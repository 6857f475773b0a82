"""Restore's data path: read each pack once, write every chunk where it belongs.

The files to restore are planned first (chunk → every (file, offset) that needs it),
the chunks are grouped by pack, and each pack is fetched with one ranged read covering
the blobs needed from it. Blobs are authenticated, decompressed and re-hashed in worker
threads and written with ``pwrite`` at their offsets, so several packs are processed at
once and a chunk shared by many files is fetched and decrypted once.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

import anyio
import anyio.to_thread

from agent.progress import Progress
from shared.errors import IntegrityError, ObjectNotFound
from shared.repository import format as fmt
from shared.repository.manifest import Node
from shared.repository.repository import Repository
from shared.targets.local import LocalTarget
from shared.tasks import task_group

# Packs fetched at once. A local disk answers at once, and on 2 cores 2 beat 4 (less
# RSS, as fast); a network target hides its latency behind more requests in flight.
PARALLEL_PACKS_LOCAL = max(2, min(4, os.cpu_count() or 1))
PARALLEL_PACKS_REMOTE = 4
MAX_GAP = 1 << 20  # read through gaps up to this size rather than issue another request


class _Blob(NamedTuple):
    offset: int
    length: int
    chunk_id: bytes
    places: list[tuple[bytes, int]]  # (file path, offset in file)
    needed_by: str  # the files it belongs to, as errors may name them


def _needed_by(names: list[str]) -> str:
    more = len(names) - 1
    return names[0] + (f" and {more} other file{'s' if more > 1 else ''}" if more else "")


def plan(
    repo: Repository, files: list[tuple[bytes, Node]], name: Callable[[bytes], str] = os.fsdecode
) -> dict[bytes, list[_Blob]]:
    """pack id → blobs needed from it, ordered by offset. ``name`` shows a stored path
    in errors (a secret file's name withheld, agent.sources.files.shown_names)."""
    places: dict[bytes, list[tuple[bytes, int]]] = defaultdict(list)
    users: dict[bytes, dict[str, None]] = defaultdict(dict)  # an ordered set per chunk
    for path, node in files:
        off = 0
        shown = name(node.path)
        for cid in node.chunks:
            entry = repo.index.get(cid)
            if entry is None:
                raise IntegrityError(
                    f"chunk {cid.hex()} of {shown}: not in the repository index (missing)"
                )
            places[cid].append((path, off))
            users[cid][shown] = None
            off += entry.raw_length
        if off != node.size:
            raise IntegrityError(
                f"{shown}: chunks add up to {off} bytes, manifest says {node.size}"
            )
    packs: dict[bytes, list[_Blob]] = defaultdict(list)
    for cid, where in places.items():
        e = repo.index[cid]
        packs[e.pack_id].append(_Blob(e.offset, e.length, cid, where, _needed_by(list(users[cid]))))
    for blobs in packs.values():
        blobs.sort()
    return packs


def _ranges(blobs: list[_Blob]) -> list[list[_Blob]]:
    """Group blobs into runs that one ranged read covers."""
    runs: list[list[_Blob]] = [[blobs[0]]]
    for b in blobs[1:]:
        last = runs[-1][-1]
        if b.offset - (last.offset + last.length) <= MAX_GAP:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def _write(repo: Repository, key: str, base: int, data: bytes, run: list[_Blob]) -> int:
    view = memoryview(data)
    written = 0
    for b in run:
        where = f"{repo.target.describe()}/{key} at offset {b.offset} (part of {b.needed_by})"
        sealed = view[b.offset - base : b.offset - base + b.length]
        if len(sealed) != b.length:
            raise IntegrityError(f"{where}: expected {b.length} bytes, got {len(sealed)}")
        plain = repo.open_blob(b.chunk_id, sealed, where)
        for path, off in b.places:
            # created here on first write (restore checked the paths and made the folders)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.pwrite(fd, plain, off)
            finally:
                os.close(fd)
            written += len(plain)
    return written


async def fetch_and_write(
    repo: Repository,
    files: list[tuple[bytes, Node]],
    progress: Progress,
    name: Callable[[bytes], str] = os.fsdecode,
) -> None:
    """Write the files' content (a file is created by its first chunk); ``name`` shows
    a stored path in errors."""
    packs = await anyio.to_thread.run_sync(plan, repo, files, name)
    local = isinstance(repo.target, LocalTarget)
    limiter = anyio.CapacityLimiter(PARALLEL_PACKS_LOCAL if local else PARALLEL_PACKS_REMOTE)

    async def one_pack(pack_id: bytes, blobs: list[_Blob]) -> None:
        key = fmt.pack_key(pack_id)
        async with limiter:
            for run in _ranges(blobs):
                base = run[0].offset
                end = run[-1].offset + run[-1].length
                try:
                    data = await repo.target.get_range(key, base, end - base)
                except ObjectNotFound:
                    raise IntegrityError(
                        f"pack {key}: missing from {repo.target.describe()} "
                        f"(holds part of {run[0].needed_by})"
                    ) from None
                written = await anyio.to_thread.run_sync(_write, repo, key, base, data, run)
                progress.bytes_done += written

    async with task_group() as tg:
        for pack_id, blobs in packs.items():
            tg.start_soon(one_pack, pack_id, blobs)
