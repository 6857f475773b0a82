"""Verify backups without restoring them (like ``restic check``).

A restore stops at the first bad blob, and damage found on the day of a restore is found
too late. Verify walks what a set of backups references and keeps going past damage, so
one run names every damaged object (pack, manifest, index segment) and the backups and
files it breaks. Structural checks (default) cost one ``stat`` per pack plus the tree
blobs: manifests open, trees decode, referenced chunks are indexed, packs exist and are
long enough. ``read_data`` downloads each pack once and checks its name (BLAKE3), its
table, and every blob (authenticate, decompress, re-hash); ``subset`` reads a seeded
random share, so a big repository can be read a slice per run. The caller opens the
repository; engine/maintenance/verify_open.py loads the index so that a damaged index segment
is one more reported object, not a repository that cannot be opened. Damaged files of a
files backup are named as restore names them: a secret's name withheld (``conf/<secret>``,
engine.backup.walk.shown), so several secrets in one folder count as one entry.

Damage is only reported when it is certain. A read that fails at the target (after the
retries of engine/storage/retry.py) is "could not read", kept apart in
``VerifyReport.unreadable``: it says nothing about the bytes. A blob, pack, manifest or
index segment that looks damaged is read once more, fresh, and reported only when the
second read shows the same. A backup forgotten while verify runs (a concurrent prune) is
not damage either: its manifest is no longer listed, so it is skipped, and what only it
referenced is no longer checked. Each damaged object names the repair command
(:func:`repair_for`). docs/integrity.md describes the outcomes and exit codes.
"""

from __future__ import annotations

import math
import os
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from engine.backup.walk import shown_names
from engine.format import spec as fmt
from engine.format.manifest import Manifest, Node, decode_tree
from engine.format.pack import check_pack_id, read_pack_entries
from engine.index import IndexEntry
from engine.progress import Progress, ProgressFn, no_progress
from engine.repository import Repository
from shared.errors import (
    IntegrityError,
    ObjectNotFound,
    RepositoryError,
    TargetError,
    TargetUnreadable,
)

MISSING_PACK = "missing from the target"
REPAIR_INDEX = "mosaic-backup repo repair index"
REPAIR_PACKS = "mosaic-backup repo repair packs, then mosaic-backup repo repair snapshots"
MISSING_CHUNK = "referenced, but in no index segment (missing)"
UNINDEXED = "index/"  # where chunks missing from the index are reported, together
PACK_TAIL = fmt.OVERHEAD + fmt.PACK_TRAILER.size  # the smallest possible table + trailer
Members = list[tuple[bytes, IndexEntry]]  # (chunk id, where the index places it)


@dataclass
class Problem:
    """Everything wrong with one stored object, and what it breaks."""

    obj: str  # the object's key (pack, manifest, index segment), or UNINDEXED
    messages: list[str] = field(default_factory=list)
    chunks: set[bytes] = field(default_factory=set)  # referenced chunks it makes unreadable
    backups: set[str] = field(default_factory=set)
    files: dict[str, set[bytes]] = field(default_factory=dict)  # backup → shown paths

    @property
    def repair(self) -> str | None:
        return repair_for(self.obj)


def repair_for(obj: str) -> str | None:
    """The command that repairs damage to ``obj``: a chunk no index lists, or a damaged
    index segment, needs the index rebuilt from the packs; a damaged or missing pack
    needs its readable blobs salvaged, then the backups that used it rewritten."""
    if obj.startswith(fmt.INDEX_PREFIX):  # UNINDEXED included
        return REPAIR_INDEX
    if obj.startswith(fmt.DATA_PREFIX):
        return REPAIR_PACKS
    return None


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def could_not_read(exc: BaseException) -> bool:
    """A read failed at the target (not "no such object"): the bytes were not seen."""
    return isinstance(exc, TargetError) and not isinstance(exc, ObjectNotFound)


@dataclass
class VerifyReport:
    problems: dict[str, Problem] = field(default_factory=dict)
    backups: list[str] = field(default_factory=list)
    packs: int = 0
    packs_read: int = 0
    blobs_checked: int = 0
    bytes_read: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # object → why, one line
    forgotten: list[str] = field(default_factory=list)  # backups forgotten during the run
    rereads: int = 0  # objects that looked damaged but read clean a second time

    @property
    def ok(self) -> bool:
        """No damage found (objects that could not be read are not damage)."""
        return not self.problems

    @property
    def complete(self) -> bool:
        """Every object verify meant to check was read."""
        return not self.unreadable

    def unread(self, obj: str, exc: BaseException) -> None:
        why = one_line(exc)
        if isinstance(exc, TargetUnreadable):
            why = f"{exc.attempts} attempts failed, the last: {exc.reason}"
        self.unreadable.setdefault(obj, why)

    def add(
        self, obj: str, message: str, *, chunks: Iterable[bytes] = (), backup: str | None = None
    ) -> None:
        """Record a finding; one already reported for the same chunks is not repeated."""
        p = self.problems.setdefault(obj, Problem(obj))
        chunks = set(chunks)
        if backup is not None:
            p.backups.add(backup)
        if chunks and chunks <= p.chunks:
            return
        p.chunks |= chunks
        if message not in p.messages:
            p.messages.append(message)


def _why(exc: Exception, where: str) -> str:
    """The message without its ``where:`` prefix (the report names the object already)."""
    text = str(exc)
    return text.removeprefix(f"{where}: ")


def _unindexed(report: VerifyReport, chunk_id: bytes, backup: str) -> None:
    message = f"chunk {chunk_id.hex()[:16]}…: {MISSING_CHUNK}"
    report.add(UNINDEXED, message, chunks=[chunk_id], backup=backup)


# --- checks ----------------------------------------------------------------------------


async def _fetch_blob(
    repo: Repository, chunk_id: bytes, report: VerifyReport, backup: str
) -> bytes | None:
    """One blob by range GET, or None after reporting why it cannot be read. What looks
    damaged is read again once and reported only if the second read agrees."""
    e = repo.index.get(chunk_id)
    if e is None:
        _unindexed(report, chunk_id, backup)
        return None
    key = fmt.pack_key(e.pack_id)
    where = f"blob {chunk_id.hex()[:16]}… at offset {e.offset}"
    damage = ""
    for _ in range(2):
        try:
            data = await repo.target.get_range(key, e.offset, e.length)
            if len(data) != e.length:
                raise IntegrityError(f"{where}: cut short (truncated pack)")
            plain = await anyio.to_thread.run_sync(repo.open_blob, chunk_id, data, where)
        except ObjectNotFound:
            damage = MISSING_PACK
        except RepositoryError as exc:
            damage = str(exc)
        except TargetError as exc:
            report.unread(key, exc)
            return None
        else:
            report.rereads += bool(damage)
            return plain
    report.add(key, damage, chunks=[chunk_id], backup=backup)
    return None


async def read_tree(repo: Repository, m: Manifest, report: VerifyReport) -> list[Node] | None:
    """The backup's nodes, or None when any tree blob is damaged (each one reported)."""
    parts = [await _fetch_blob(repo, c, report, m.backup_id) for c in m.tree]
    if any(p is None for p in parts):
        return None
    try:
        return list(decode_tree(b"".join(p for p in parts if p is not None), "tree"))
    except IntegrityError as exc:
        report.add(fmt.manifest_key(m.backup_id), _why(exc, "tree"), backup=m.backup_id)
        return None


def _size_findings(size: int, members: Members) -> list[tuple[str, list[bytes]]]:
    end = max((e.offset + e.length for _, e in members), default=0)
    cut = [c for c, e in members if e.offset + e.length > size]
    if cut:
        return [(f"truncated: {size} bytes, but the index has blobs up to byte {end}", cut)]
    if size < end + PACK_TAIL:
        return [(f"truncated: {size} bytes, its table after byte {end} is cut", [])]
    return []


def check_pack(
    repo: Repository, pack_id: bytes, data: bytes, members: Members
) -> tuple[list[tuple[str, list[bytes]]], int]:
    """Every check of one whole pack (CPU; any thread): findings and blobs checked."""
    found: list[tuple[str, list[bytes]]] = []
    try:
        check_pack_id(pack_id, data, "pack")
    except IntegrityError as exc:
        found.append((_why(exc, "pack"), []))
    found += _size_findings(len(data), members)
    try:
        table = read_pack_entries(repo.keys, data, "table")
    except RepositoryError as exc:
        found.append((f"table: {_why(exc, 'table')}", []))
        table = []
    listed = {(e.id, e.offset, e.length) for e in table}
    blobs = dict.fromkeys(listed, False) | {(c, e.offset, e.length): True for c, e in members}
    unlisted = sum(1 for c, e in members if (c, e.offset, e.length) not in listed)
    if table and unlisted:
        found.append((f"the index places {unlisted} blobs here that its table does not list", []))
    view = memoryview(data)
    for (chunk_id, offset, length), indexed in sorted(blobs.items(), key=lambda b: b[0][1]):
        if offset + length > len(data):
            continue  # reported with the size
        where = f"blob {chunk_id.hex()[:16]}… at offset {offset}"
        try:
            repo.open_blob(chunk_id, view[offset : offset + length], where)
        except RepositoryError as exc:
            found.append((str(exc), [chunk_id] if indexed else []))
    return found, len(blobs)


def choose_packs(packs: Iterable[bytes], percent: float, seed: int) -> list[bytes]:
    """A share of the packs, the same for the same seed and packs (``--subset``)."""
    ordered = sorted(packs)
    if percent >= 100:
        return ordered
    k = math.ceil(len(ordered) * percent / 100)
    return sorted(random.Random(seed).sample(ordered, k))


async def _each(items: Iterable[bytes], fn: Callable[[bytes], Awaitable[None]], n: int) -> None:
    """Run ``fn`` over ``items`` with at most ``n`` at a time (n workers, one iterator)."""
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await fn(item)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(worker)


# --- the run ---------------------------------------------------------------------------


async def _load(
    repo: Repository, backup_id: str, rep: VerifyReport, listed: bool
) -> Manifest | None:
    """The manifest, or None after reporting why not. A manifest that fails is read once
    more; one that was ``listed`` (``--all``) and is gone from a new listing was
    forgotten meanwhile: skipped, not damage."""
    key = fmt.manifest_key(backup_id)
    damage = ""
    for _ in range(2):
        try:
            m = await repo.load_manifest(backup_id)
        except TargetError as exc:
            rep.unread(key, exc)
            return None
        except RepositoryError as exc:
            damage = _why(exc, f"{repo.target.describe()}/{key}")
        else:
            rep.rereads += bool(damage)
            return m
        if listed:
            try:
                still = backup_id in await repo.list_manifests()
            except TargetError as exc:
                rep.unread(fmt.MANIFESTS_PREFIX, exc)
                return None
            if not still:
                rep.forgotten.append(backup_id)
                return None
    rep.add(key, damage, backup=backup_id)
    return None


async def verify(
    repo: Repository,
    backup_ids: list[str] | None,
    *,
    read_data: bool = False,
    subset: float = 100.0,
    seed: int = 0,
    found: VerifyReport | None = None,
    report: ProgressFn = no_progress,
    concurrency: int = 4,
) -> VerifyReport:
    """Check ``backup_ids`` (None: every backup); ``found`` holds findings of the open.

    Raises TargetError only when the list of manifests cannot be read at all."""
    rep = found or VerifyReport()
    ids = sorted(await repo.list_manifests()) if backup_ids is None else list(backup_ids)
    manifests, readable, refs = await _references(repo, ids, rep, listed=backup_ids is None)
    packs = _packs_of(repo, refs.values())
    members: dict[bytes, Members] = defaultdict(list)
    for chunk_id, e in repo.index.items():
        if e.pack_id in packs:
            members[e.pack_id].append((chunk_id, e))
    sizes = await _stat_packs(repo, packs, members, rep)
    if read_data:
        chosen = [p for p in choose_packs(packs, subset, seed) if p in sizes]
        progress = Progress(bytes_total=sum(sizes[p] for p in chosen))

        async def read_one(pack_id: bytes) -> None:
            if await _read_pack(repo, pack_id, members[pack_id], rep, progress):
                await report(progress)

        await _each(chosen, read_one, concurrency)
    if manifests:
        manifests = await _drop_forgotten(repo, rep, manifests, refs)
    rep.backups = [b for b in ids if b not in rep.forgotten]
    rep.packs = len(_packs_of(repo, refs.values()))
    await _attribute(repo, rep, manifests, readable)
    return rep


async def _references(
    repo: Repository, ids: list[str], rep: VerifyReport, *, listed: bool
) -> tuple[list[Manifest], set[str], dict[str, set[bytes]]]:
    """(the manifests that open, the backups whose tree reads, backup → every chunk it
    references); chunks the index does not know are reported here."""
    manifests: list[Manifest] = []
    readable: set[str] = set()
    refs: dict[str, set[bytes]] = {}
    for backup_id in ids:
        m = await _load(repo, backup_id, rep, listed=listed)
        if m is None:
            continue
        manifests.append(m)
        nodes = await read_tree(repo, m, rep)
        if nodes is not None:
            readable.add(backup_id)
        refs[backup_id] = {*m.tree, *(c for n in nodes or () for c in n.chunks)}
        for chunk_id in sorted(refs[backup_id]):
            if chunk_id not in repo.index:
                _unindexed(rep, chunk_id, backup_id)
    return manifests, readable, refs


async def _stat_packs(
    repo: Repository, packs: set[bytes], members: dict[bytes, Members], rep: VerifyReport
) -> dict[bytes, int]:
    """Every pack's size, checked against the blobs the index puts in it."""
    sizes: dict[bytes, int] = {}

    async def stat_pack(pack_id: bytes) -> None:
        key = fmt.pack_key(pack_id)
        findings: list[tuple[str, list[bytes]]] = []
        for _ in range(2):  # what looks wrong is looked at again
            try:
                info = await repo.target.stat(key)
            except TargetError as exc:
                rep.unread(key, exc)
                return
            if info is None:
                findings = [(MISSING_PACK, [c for c, _ in members[pack_id]])]
                continue
            sizes[pack_id] = info.size
            findings = _size_findings(info.size, members[pack_id])
            if not findings:
                return
        for message, chunks in findings:
            rep.add(key, message, chunks=chunks)

    await _each(sorted(packs), stat_pack, 16)
    return sizes


async def _read_pack(
    repo: Repository, pack_id: bytes, members: Members, rep: VerifyReport, progress: Progress
) -> bool:
    """Read one pack whole and check every blob; damage is reported only when a fresh
    read agrees. True when something was read (progress moved)."""
    key = fmt.pack_key(pack_id)
    everything = [c for c, _ in members]
    findings: list[tuple[str, list[bytes]]] = []
    data, blobs = b"", 0
    for attempt in range(2):
        try:
            data = await repo.target.get(key)
        except ObjectNotFound:
            findings, data = [(MISSING_PACK, everything)], b""
            continue
        except TargetError as exc:
            rep.unread(key, exc)
            return False
        findings, blobs = await anyio.to_thread.run_sync(check_pack, repo, pack_id, data, members)
        if not findings:
            rep.rereads += attempt
            break
    for message, chunks in findings:
        rep.add(key, message, chunks=chunks)
    if not data:
        return False  # missing: nothing was read
    rep.packs_read += 1
    rep.blobs_checked += blobs
    rep.bytes_read += len(data)
    progress.bytes_done += len(data)
    return True


def _packs_of(repo: Repository, chunk_sets: Iterable[set[bytes]]) -> set[bytes]:
    return {e.pack_id for chunks in chunk_sets for c in chunks if (e := repo.index.get(c))}


async def _drop_forgotten(
    repo: Repository, rep: VerifyReport, manifests: list[Manifest], refs: dict[str, set[bytes]]
) -> list[Manifest]:
    """List the manifests again: a backup checked here but no longer listed was forgotten
    meanwhile (a concurrent prune, which then deletes its packs). It is skipped, and a
    finding about an object only it referenced is dropped: that object is garbage now,
    not damage. Returns the manifests still listed."""
    try:
        still = set(await repo.list_manifests())
    except TargetError as exc:
        rep.unread(fmt.MANIFESTS_PREFIX, exc)
        return manifests
    gone = {m.backup_id for m in manifests} - still
    if not gone:
        return manifests
    rep.forgotten += sorted(gone)
    for backup_id in gone:
        rep.problems.pop(fmt.manifest_key(backup_id), None)
        rep.unreadable.pop(fmt.manifest_key(backup_id), None)
    live = set().union(*(c for b, c in refs.items() if b not in gone))
    live_packs = {fmt.pack_key(p) for p in _packs_of(repo, [live])}
    for key in [k for k in rep.unreadable if k.startswith(fmt.DATA_PREFIX)]:
        if key not in live_packs:
            del rep.unreadable[key]
    for key, p in list(rep.problems.items()):
        if key.startswith(fmt.DATA_PREFIX) and key not in live_packs:
            del rep.problems[key]
        elif key == UNINDEXED:
            p.chunks &= live
            keep = {f"chunk {c.hex()[:16]}" for c in p.chunks}  # as _unindexed words it
            p.messages = [m for m in p.messages if m[: len("chunk ") + 16] in keep]
            if not p.chunks:
                del rep.problems[key]
        p.backups -= gone
    for backup_id in gone:
        refs.pop(backup_id, None)
    return [m for m in manifests if m.backup_id not in gone]


async def _attribute(
    repo: Repository, rep: VerifyReport, manifests: list[Manifest], readable: set[str]
) -> None:
    """Name the backups and files each damaged chunk breaks (trees are read again)."""
    bad: dict[bytes, list[Problem]] = defaultdict(list)
    for p in rep.problems.values():
        for chunk_id in p.chunks:
            bad[chunk_id].append(p)
    if not bad:
        return
    for m in manifests:
        for chunk_id in m.tree:
            for p in bad.get(chunk_id, ()):
                p.backups.add(m.backup_id)
        nodes = await read_tree(repo, m, VerifyReport()) if m.backup_id in readable else None
        name = shown_names(m.source)
        for node in nodes or ():
            for chunk_id in node.chunks:
                for p in bad.get(chunk_id, ()):
                    p.backups.add(m.backup_id)
                    p.files.setdefault(m.backup_id, set()).add(os.fsencode(name(node.path)))
