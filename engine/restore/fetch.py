"""Restore's data path: read each pack once, write every chunk where it belongs.

The files to restore are planned first (chunk → every (file, offset) that needs it),
the chunks are grouped by pack, and each pack is fetched with one ranged read covering
the blobs needed from it. Blobs are authenticated, decompressed and re-hashed in worker
threads and written with ``pwrite`` at their offsets, so several packs are processed at
once and a chunk shared by many files is fetched and decrypted once.

Damage never spreads: a chunk that is missing, truncated or fails authentication is
recorded (file, byte range, object, reason) and every other chunk is still written; the
caller decides what to do with the damaged files. All-zero chunks are not written, so
holes of sparse files stay holes (the caller sets each file's size).
"""

from __future__ import annotations

import errno
import os
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

import anyio
import anyio.to_thread

from engine.format import spec as fmt
from engine.format.manifest import Node
from engine.progress import Progress
from engine.repository import Repository
from shared.errors import IntegrityError, ObjectNotFound, RepositoryError, TargetError
from shared.tasks import task_group

# Packs fetched at once. A local disk answers at once, and on 2 cores 2 beat 4 (less
# RSS, as fast); a network target hides its latency behind more requests in flight.
PARALLEL_PACKS_LOCAL = max(2, min(4, os.cpu_count() or 1))
PARALLEL_PACKS_REMOTE = 4
MAX_GAP = 1 << 20  # read through gaps up to this size rather than issue another request


class RestoreWriteError(RepositoryError):
    """The destination refused a write (full disk, read-only): the restore stops."""

    code = "restore.write"


class _Blob(NamedTuple):
    offset: int
    length: int
    raw_length: int
    chunk_id: bytes
    places: list[tuple[bytes, int]]  # (file path, offset in file)
    needed_by: str  # the files it belongs to, as errors may name them


class Damage:
    """What could not be restored: per file path, byte ranges and why (thread-safe
    enough: worker threads only append to lists, under the GIL)."""

    def __init__(self) -> None:
        self.ranges: dict[bytes, list[tuple[int, int, str]]] = defaultdict(list)

    def add(self, path: bytes, start: int, end: int, why: str) -> None:
        self.ranges[path].append((start, end, why))

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def describe(self, path: bytes, shown: str) -> str:
        parts = sorted(self.ranges[path])
        where = ", ".join(
            f"bytes {a:,}–{b - 1:,}" if b > a else f"from byte {a:,}" for a, b, _ in parts
        )
        reasons = list(dict.fromkeys(why for _, _, why in parts))
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        return f"{shown}: {where} not restored: {reasons[0]}{more}"


class Plan(NamedTuple):
    packs: dict[bytes, list[_Blob]]  # pack id → blobs needed from it, ordered by offset
    blobs: int


def _needed_by(names: list[str]) -> str:
    more = len(names) - 1
    return names[0] + (f" and {more} other file{'s' if more > 1 else ''}" if more else "")


def plan(
    repo: Repository,
    files: list[tuple[bytes, Node]],
    damage: Damage,
    name: Callable[[bytes], str] = os.fsdecode,
) -> Plan:
    """Group the chunks to read by pack. A chunk the index does not know is recorded
    in ``damage`` for its file (its byte range where the other chunks pin it down) and
    the rest of the file is still planned. ``name`` shows a stored path in errors (a
    secret file's name withheld, engine.backup.walk.shown_names)."""
    places: dict[bytes, list[tuple[bytes, int]]] = defaultdict(list)
    users: dict[bytes, dict[str, None]] = defaultdict(dict)  # an ordered set per chunk
    for path, node in files:
        shown = name(node.path)
        entries = [repo.index.get(cid) for cid in node.chunks]
        missing = [i for i, e in enumerate(entries) if e is None]
        if missing:
            # Offsets are known before the first missing chunk and, counted from the
            # end, after the last one; the span between is what is lost.
            first, last = missing[0], missing[-1]
            head = sum(e.raw_length for e in entries[:first] if e is not None)
            tail = sum(e.raw_length for e in entries[last + 1 :] if e is not None)
            damage.add(
                path,
                head,
                node.size - tail,
                f"chunk {node.chunks[first].hex()[:16]}… is in no index segment and no "
                "pack (lost; `mosaic-backup repo repair snapshots` lists the backups it hits)",
            )
            spans = [(0, first, 0), (last + 1, len(entries), node.size - tail)]
        else:
            total = sum(e.raw_length for e in entries if e is not None)
            if total != node.size:
                damage.add(
                    path, 0, node.size, f"chunks add up to {total} bytes, manifest says {node.size}"
                )
                continue
            spans = [(0, len(entries), 0)]
        for lo, hi, off in spans:
            for i in range(lo, hi):
                e = entries[i]
                assert e is not None
                cid = node.chunks[i]
                places[cid].append((path, off))
                users[cid][shown] = None
                off += e.raw_length
    packs: dict[bytes, list[_Blob]] = defaultdict(list)
    for cid, where in places.items():
        e = repo.index[cid]
        packs[e.pack_id].append(
            _Blob(e.offset, e.length, e.raw_length, cid, where, _needed_by(list(users[cid])))
        )
    for blobs in packs.values():
        blobs.sort()
    return Plan(packs, len(places))


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


def _lost(damage: Damage, blob: _Blob, why: str) -> None:
    for path, off in blob.places:
        damage.add(path, off, off + blob.raw_length, why)


def _is_zero(plain: bytes) -> bool:
    # first and last byte first: almost every data chunk leaves here at once
    return not plain[0] and not plain[-1] and plain.count(0) == len(plain)


def _write(
    repo: Repository, key: str, base: int, data: bytes, run: list[_Blob], damage: Damage
) -> int:
    view = memoryview(data)
    written = 0
    for b in run:
        where = f"{repo.target.describe()}/{key} at offset {b.offset} (part of {b.needed_by})"
        sealed = view[b.offset - base : b.offset - base + b.length]
        try:
            if len(sealed) != b.length:
                raise IntegrityError(f"{where}: expected {b.length} bytes, got {len(sealed)}")
            plain = repo.open_blob(b.chunk_id, sealed, where)
        except IntegrityError as exc:
            _lost(damage, b, f"{exc} (`mosaic-backup repo repair packs` salvages the rest)")
            written += b.raw_length * len(b.places)
            continue
        zero = bool(plain) and _is_zero(plain)
        for path, off in b.places:
            if not zero:  # holes stay holes: restore sets every file's size at the end
                _pwrite(path, plain, off)
            written += len(plain)
    return written


def _pwrite(path: bytes, data: bytes, off: int) -> None:
    # the files were created by restore (after checking every path)
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.pwrite(fd, data, off)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        os.close(fd)


def write_error(path: bytes, exc: OSError) -> RestoreWriteError:
    where = os.fsdecode(os.path.dirname(path))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            st = os.statvfs(path)
            free = f"{st.f_bavail * st.f_frsize:,} bytes free"
        except OSError:
            free = "free space unknown"
        return RestoreWriteError(
            f"restore destination {where}: no space left on the device ({free}); "
            "free some space or restore elsewhere (the files written so far are incomplete)"
        )
    return RestoreWriteError(f"restore destination {where}: cannot write ({exc.strerror})")


async def fetch_and_write(
    repo: Repository,
    files: list[tuple[bytes, Node]],
    progress: Progress,
    name: Callable[[bytes], str] = os.fsdecode,
) -> Damage:
    """Write the files' content (they exist already, empty); return what could not be
    restored. Damage never stops the other files; a destination that cannot be
    written (full disk) does, with RestoreWriteError. ``name`` shows a stored path."""
    damage = Damage()
    await repo.find_missing([c for _, n in files for c in n.chunks])
    planned = await anyio.to_thread.run_sync(plan, repo, files, damage, name)
    local = repo.target.capabilities.local_disk
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
                    why = f"pack {key} is missing from {repo.target.describe()}"
                    for b in run:
                        _lost(damage, b, why)
                    continue
                except TargetError as exc:
                    for b in run:
                        _lost(damage, b, f"could not read pack {key} ({exc}); try again")
                    continue
                written = await anyio.to_thread.run_sync(_write, repo, key, base, data, run, damage)
                progress.bytes_done += written

    async with task_group() as tg:
        for pack_id, blobs in planned.packs.items():
            tg.start_soon(one_pack, pack_id, blobs)
    return damage
