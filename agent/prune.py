"""Prune: forget backups, then garbage-collect the packs no backup references.

Runs where the key is (``repo prune``); the coordinator never touches repository data.
Forgetting deletes ``manifests/<id>``; garbage collection (GC) then deletes every pack
none of whose blobs a remaining manifest references (trees and file chunks). A pack
with one referenced blob stays whole (no repacking).

Safety argument — GC never deletes a chunk that a finished, running or future backup
references. A backup B references chunk c either because it uploaded c itself (inside
its lease, see lease.py) or because c was in the index B loaded at ``Repository.open``
— which happens *before* B takes its lease (and pre-hooks and the parent's tree read
run in between: call that gap W). The sweep therefore goes:

1. store GC's own lease (purpose "gc"), then list leases: if any other live one exists,
   delete nothing ("deferred"); expired ones are ignored (and removed), so a crashed
   writer delays GC by at most its ttl;
2. mark: read every index segment, the data/ listing and every manifest's tree;
3. write ONE new index segment listing exactly the packs that stay, then delete the old
   segments (the *swap*): from now on no index lists a garbage pack, so a backup that
   opens the repository later re-uploads any garbage chunk it needs;
4. wait ``margin`` (≥ W plus clock skew), then look again: if any other live lease or
   any manifest not marked in 2 exists, write the garbage packs back into the index
   ("undo") and defer; otherwise delete the garbage packs.

Why that suffices: a backup with a manifest from before step 1 was marked. One whose
lease was live at step 1 deferred GC. One whose lease started after step 1 is either
still live or finished (its manifest exists) at step 4 — undo — or started after step
4's check; it then opened the repository after the swap (W ≤ margin), so its index
never listed a garbage pack. Packs a late writer uploaded and GC saw as unindexed fall
under the same rule. The check in step 4 uses only presence, not lease timestamps, so
clock skew only matters for expiry (a lease within ``margin`` of expiring counts live).

Crash safety: a crash after the new segment is written leaves duplicates (harmless);
after the old segments are deleted, garbage packs stay in data/ but unindexed. No index
entry ever points at a missing pack. Each run also reads the headers of unindexed packs
and re-indexes those holding a referenced blob (a late writer's dedup hit across a GC
crash in step 4), and treats the rest as garbage (crashed backups' trailing packs).
Object-Locked packs refuse deletion with a non-retryable TargetError: they are
reported with the target's reason (it names the retain-until date), never fatal, and
retried by later runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import msgspec

from shared.errors import IntegrityError, ObjectNotFound, TargetError
from shared.repository import format as fmt
from shared.repository.crypto import open_sealed, seal
from shared.repository.index import ChunkIndex, IndexEntry
from shared.repository.lease import LeaseInfo, lease, live_leases
from shared.repository.manifest import Manifest
from shared.repository.pack import PackEntry, read_pack_entries
from shared.repository.repository import Repository

DEFAULT_MARGIN = timedelta(minutes=5)

_seg_enc = msgspec.msgpack.Encoder()
_seg_dec = msgspec.msgpack.Decoder(list[tuple[bytes, list[PackEntry]]])


@dataclass(frozen=True, slots=True)
class Pack:
    pack_id: bytes
    size: int  # bytes on the target; 0 when the data/ listing did not show it
    entries: tuple[PackEntry, ...]
    indexed: bool  # False: found only in data/ (a crashed writer's, or an undone GC's)

    @property
    def key(self) -> str:
        return fmt.pack_key(self.pack_id)


@dataclass(slots=True)
class GcPlan:
    segments: list[str]  # index segments read; replaced by the sweep
    marked: list[str]  # backups whose chunks were marked
    forgotten: frozenset[str]
    keep: list[Pack]
    garbage: list[Pack]
    leases: list[LeaseInfo]  # other live writers: the sweep is deferred
    expired: list[str]  # lease keys of crashed writers
    unreadable: list[str] = field(default_factory=list)  # orphan packs left alone

    @property
    def reindex(self) -> list[Pack]:
        return [p for p in self.keep if not p.indexed]


@dataclass(slots=True)
class GcReport:
    plan: GcPlan
    deleted: list[Pack] = field(default_factory=list)
    locked: list[tuple[Pack, str]] = field(default_factory=list)
    deferred: str | None = None

    @property
    def bytes_freed(self) -> int:
        return sum(p.size for p in self.deleted)


def plan_forget(manifests: Iterable[Manifest], keep_ids: Collection[str]) -> list[str]:
    """The backups to forget: every manifest not kept (the caller decides ``keep_ids``)."""
    return sorted(m.backup_id for m in manifests if m.backup_id not in keep_ids)


async def forget(repo: Repository, backup_ids: Iterable[str]) -> None:
    """Delete the manifests; their chunks become garbage for the next GC."""
    for backup_id in backup_ids:
        await repo.target.delete(fmt.manifest_key(backup_id))


def _pack_id(key: str) -> bytes | None:
    try:
        pack_id = bytes.fromhex(key.rsplit("/", 1)[-1])
    except ValueError:
        return None
    return pack_id if key == fmt.pack_key(pack_id) else None


async def _read_segment(repo: Repository, key: str) -> list[tuple[bytes, list[PackEntry]]]:
    where = f"{repo.target.describe()}/{key}"
    _, payload = open_sealed(repo.keys, key.encode(), await repo.target.get(key), where)
    try:
        return _seg_dec.decode(payload)
    except msgspec.DecodeError as exc:
        raise IntegrityError(f"{where}: index segment is invalid ({exc})") from exc


async def _read_header(repo: Repository, pack_id: bytes, size: int) -> list[PackEntry]:
    """A pack's own table, read from its tail (two range reads, not the whole pack)."""
    key, where = fmt.pack_key(pack_id), f"{repo.target.describe()}/{fmt.pack_key(pack_id)}"
    n = fmt.PACK_TRAILER.size
    trailer = await repo.target.get_range(key, max(size - n, 0), n)
    if len(trailer) != n or size < n:
        raise IntegrityError(f"{where}: truncated pack ({size} bytes)")
    hlen, _ = fmt.PACK_TRAILER.unpack(trailer)
    if hlen > size - n:
        raise IntegrityError(f"{where}: pack trailer is damaged")
    header = await repo.target.get_range(key, size - n - hlen, hlen)
    return read_pack_entries(repo.keys, header + trailer, where)


async def plan_gc(
    repo: Repository,
    *,
    now: datetime,
    margin: timedelta,
    forgotten: Collection[str] = (),
    own_lease: str | None = None,
) -> GcPlan:
    """Steps 1–2: leases, then mark. Reads only. Replaces ``repo.index`` with a fresh
    one (segments + orphan packs), so trees committed since the open can be read."""
    live, expired = await live_leases(repo.target, repo.keys, now=now - margin)
    others = [x for x in live if x.lease_id != own_lease]
    if own_lease is not None:  # GC's own lease may look expired on a shifted clock
        expired = [k for k in expired if k != f"{fmt.LOCKS_PREFIX}{own_lease}"]
    segments: list[str] = []
    indexed: dict[bytes, list[PackEntry]] = {}
    async for obj in repo.target.list(fmt.INDEX_PREFIX):
        segments.append(obj.key)
        for pack_id, entries in await _read_segment(repo, obj.key):
            indexed.setdefault(pack_id, entries)  # duplicates (crash, undo) are equal
    sizes: dict[bytes, int] = {}
    async for obj in repo.target.list(fmt.DATA_PREFIX):
        pid = _pack_id(obj.key)
        if pid is not None:
            sizes[pid] = obj.size
    orphans: dict[bytes, list[PackEntry]] = {}
    unreadable: list[str] = []
    for pid in sorted(sizes.keys() - indexed.keys()):
        try:
            orphans[pid] = await _read_header(repo, pid, sizes[pid])
        except (IntegrityError, ObjectNotFound):
            unreadable.append(fmt.pack_key(pid))  # unknown content: never delete it
    index = ChunkIndex()
    for pid, entries in (*orphans.items(), *indexed.items()):  # indexed ones win
        for e in entries:
            index[e.id] = IndexEntry(pid, e.offset, e.length, e.otype, e.raw_length)
    index.compact()
    repo.index = index
    referenced: set[bytes] = set()
    marked: list[str] = []
    for backup_id in sorted(await repo.list_manifests()):
        if backup_id in forgotten:
            continue
        m = await repo.load_manifest(backup_id)
        referenced.update(m.tree)
        for node in await repo.read_tree(m):  # raises on damage: GC never guesses
            referenced.update(node.chunks)
        marked.append(backup_id)
    keep: list[Pack] = []
    garbage: list[Pack] = []
    for pid, entries in (*indexed.items(), *orphans.items()):
        p = Pack(pid, sizes.get(pid, 0), tuple(entries), pid in indexed)
        (keep if any(e.id in referenced for e in entries) else garbage).append(p)
    return GcPlan(
        segments, marked, frozenset(forgotten), keep, garbage, others, expired, unreadable
    )


async def _put_segment(repo: Repository, packs: Sequence[Pack]) -> str | None:
    if not packs:
        return None
    key = f"{fmt.INDEX_PREFIX}{uuid.uuid4().hex}"
    payload = _seg_enc.encode([(p.pack_id, list(p.entries)) for p in packs])
    await repo.target.put(key, seal(repo.keys, fmt.OT_INDEX, key.encode(), payload))
    return key


async def write_kept_index(repo: Repository, plan: GcPlan) -> str | None:
    """Step 3a: one segment listing every pack that stays (orphans re-indexed)."""
    return await _put_segment(repo, plan.keep)


async def drop_old_segments(repo: Repository, plan: GcPlan) -> None:
    """Step 3b, only after :func:`write_kept_index` succeeded."""
    for key in plan.segments:
        await repo.target.delete(key)


async def restore_index(repo: Repository, plan: GcPlan) -> str | None:
    """The undo of step 3: list the garbage packs again (they were never deleted)."""
    return await _put_segment(repo, [p for p in plan.garbage if p.entries])


async def delete_packs(repo: Repository, plan: GcPlan, report: GcReport) -> None:
    """Step 4: delete the garbage; an Object-Locked pack is reported, not fatal."""
    for p in plan.garbage:
        try:
            await repo.target.delete(p.key)
        except TargetError as exc:
            if exc.retryable:
                raise
            report.locked.append((p, str(exc)))
            continue
        report.deleted.append(p)


def _who(leases: Sequence[LeaseInfo]) -> str:
    return "; ".join(
        f"{x.purpose} by {x.holder} running since {x.started:%Y-%m-%d %H:%M:%S} UTC"
        for x in sorted(leases, key=lambda x: x.started)
    )


async def _late_writers(repo: Repository, plan: GcPlan, own: str, now: datetime) -> str | None:
    live, _ = await live_leases(repo.target, repo.keys, now=now)
    others = [x for x in live if x.lease_id != own]
    if others:
        return _who(others)
    new = set(await repo.list_manifests()) - set(plan.marked) - plan.forgotten
    return f"backups committed during GC: {', '.join(sorted(new))}" if new else None


async def collect_garbage(
    repo: Repository,
    *,
    now: datetime | None = None,
    margin: timedelta = DEFAULT_MARGIN,
    dry_run: bool = False,
    forgotten: Collection[str] = (),
    holder: str = "prune",
) -> GcReport:
    """Plan and, unless ``dry_run`` (which writes nothing), sweep; see the module doc.

    ``now`` shifts GC's clock (tests of lease expiry); ``forgotten`` are backups whose
    manifests the caller deleted, or would delete in a dry run."""
    skew = (now - datetime.now(UTC)) if now is not None else timedelta(0)

    def clock() -> datetime:
        return datetime.now(UTC) + skew

    if dry_run:
        plan = await plan_gc(repo, now=clock(), margin=margin, forgotten=forgotten)
        return GcReport(plan, deferred=_who(plan.leases) or None)
    async with lease(repo.target, repo.keys, holder=holder, purpose="gc") as mine:
        plan = await plan_gc(
            repo, now=clock(), margin=margin, forgotten=forgotten, own_lease=mine.lease_id
        )
        report = GcReport(plan)
        for key in plan.expired:
            await repo.target.delete(key)
        if plan.leases:
            report.deferred = _who(plan.leases)
            return report
        if not plan.garbage and not plan.reindex:
            return report
        await write_kept_index(repo, plan)
        await drop_old_segments(repo, plan)
        await anyio.sleep(margin.total_seconds())
        late = await _late_writers(repo, plan, mine.lease_id, clock() - margin)
        if late is not None:
            await restore_index(repo, plan)
            report.deferred = late
            return report
        await delete_packs(repo, plan, report)
    return report
