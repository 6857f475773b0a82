"""Prune: forget backups, then garbage-collect what no kept backup uses.

Runs where the key is (``repo prune``); the coordinator never touches repository data.
Forgetting deletes ``manifests/<id>``; garbage collection (GC) then decides per pack from
the blobs it *uses* (engine/maintenance/repack.py): a pack with none is deleted, packs with too many
duplicate or unreferenced bytes (``max_unused``) are repacked — their used blobs copied
as they are into new packs — and ``.tmp-*`` files / S3 multipart uploads of killed
writes older than the lease ttl are removed. docs/prune.md is the operator's view.

Safety argument — GC never deletes a chunk that a finished, running or future backup
references. A backup B references chunk c either because it uploaded c itself (inside
its lease, see lease.py) or because c was in the index B loaded at ``Repository.open``
— which happens *before* B takes its lease (and pre-hooks and the parent's tree read
run in between: call that gap W). The sweep therefore goes:

1. store GC's own lease (purpose "gc"), then list leases: if any other live one exists,
   delete nothing ("deferred"); expired ones are ignored (and removed), so a crashed
   writer delays GC by at most its ttl — and not at all when its holder is provably
   dead (same host, pid gone: lease.py's liveness), or by a few renewal intervals when
   it is on another host and its renewals stopped (lease.py's ``stale``); the report
   says which;
2. mark: read every index segment, the data/ listing and every kept manifest's tree. If
   a kept manifest or tree cannot be read, its chunks are unknown: GC is *held back*
   (no pack deleted or repacked, the reason reported), forgetting still happened;
3. repack: copy the used blobs of the chosen packs into new packs (uploaded, not yet
   indexed — a crash leaves unindexed duplicates, collected by a later run);
4. write ONE new index segment listing exactly the packs that stay (the new ones
   included), then delete the old segments (the *swap*): from now on no index lists a
   garbage or repacked pack, so a backup that opens the repository later re-uploads any
   chunk it needs that only those held;
5. wait ``margin`` (≥ W plus clock skew), then look again: if any other live lease or
   any manifest not marked in 2 exists, write the garbage and repacked packs back into
   the index ("undo") and defer; otherwise delete them.

Why that suffices: a backup with a manifest from before step 1 was marked. One whose
lease was live at step 1 deferred GC. One whose lease started after step 1 is either
still live or finished (its manifest exists) at step 5 — undo — or started after step
5's check; it then opened the repository after the swap (W ≤ margin), so its index
never listed a pack that goes. Packs a late writer uploaded and GC saw as unindexed
fall under the same rule. The check in step 5 uses only presence, not lease timestamps,
so clock skew only matters for expiry (a lease within ``margin`` of expiring counts
live). Temporary files are removed only when no other writer holds a lease.

Crash safety: every step adds before it removes (new packs, then the index that lists
them, then old segments, then old packs), so no index entry ever points at a missing
pack. A damaged index segment is read as absent: its packs are found as unindexed
packs by their headers and re-indexed by the swap, which replaces the damaged segment.
Each run reads the headers of unindexed packs and re-indexes those that serve a used
blob (a late writer's dedup hit across a GC crash in step 5), and treats the rest as
garbage (crashed backups' trailing packs, duplicates). Object-Locked packs refuse
deletion with a non-retryable TargetError: they are reported with the target's reason
(it names the retain-until date), never fatal, and retried by later runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, cast

import anyio

from engine.format import packscan
from engine.format import segments as segment_codec
from engine.format import spec as fmt
from engine.format.manifest import Manifest
from engine.format.pack import PackEntry
from engine.index import ChunkIndex, IndexEntry
from engine.lease import DEFAULT_TTL, LeaseInfo, lease, liveness, read_leases, stale
from engine.maintenance.repack import DEFAULT_MAX_UNUSED, Pack, Repacker, Usage, decide
from engine.repository import Repository
from engine.storage.base import TemporaryInfo
from shared.errors import IntegrityError, ObjectNotFound, RepositoryError, TargetError

__all__ = ["DEFAULT_MARGIN", "DEFAULT_MAX_UNUSED", "GcPlan", "GcReport", "Pack"]

DEFAULT_MARGIN = timedelta(minutes=5)


class _Temporaries(Protocol):
    """Targets with unfinished writes to find (local, SFTP, S3); not in the Target
    protocol, so looked up with ``getattr``."""

    def list_temporary(self) -> AsyncIterator[TemporaryInfo]: ...

    async def delete_temporary(self, item: TemporaryInfo) -> None: ...


@dataclass(slots=True)
class GcPlan:
    segments: list[str]  # index segments read; replaced by the sweep
    marked: list[str]  # backups whose chunks were marked
    forgotten: frozenset[str]
    keep: list[Pack]
    garbage: list[Pack]  # no used blob
    leases: list[LeaseInfo]  # other live writers: the sweep is deferred
    expired: list[str]  # lease keys of crashed writers (expired, unreadable or dead)
    unreadable: list[str] = field(default_factory=list)  # orphan packs left alone
    repack: list[Usage] = field(default_factory=list)  # used blobs copied, then deleted
    dead: list[tuple[LeaseInfo, str]] = field(default_factory=list)  # holder gone: why
    held: list[tuple[str, str]] = field(default_factory=list)  # (backup, why unreadable)
    damaged_segments: list[str] = field(default_factory=list)  # read as absent
    temporaries: list[TemporaryInfo] = field(default_factory=list)  # older than the ttl
    used_bytes: int = 0
    unused_kept: int = 0

    @property
    def reindex(self) -> list[Pack]:
        return [p for p in self.keep if not p.indexed]

    @property
    def held_back(self) -> str | None:
        """Why GC deletes no pack this run (a kept backup could not be read)."""
        if not self.held:
            return None
        ids = ", ".join(b for b, _ in self.held)
        return f"backups {ids} could not be read, so their chunks are unknown and kept"

    @property
    def estimated_freed(self) -> int:
        """What a sweep would free: garbage, plus repacked packs less what is copied."""
        gone = sum(p.size for p in self.garbage) + sum(u.pack.size for u in self.repack)
        return gone - sum(u.used_bytes for u in self.repack)


@dataclass(slots=True)
class GcReport:
    plan: GcPlan
    deleted: list[Pack] = field(default_factory=list)  # garbage and repacked, deleted
    locked: list[tuple[Pack, str]] = field(default_factory=list)
    deferred: str | None = None
    repacked: list[Pack] = field(default_factory=list)  # copied (deleted unless undone)
    new_packs: list[Pack] = field(default_factory=list)
    repack_failed: list[tuple[Pack, str]] = field(default_factory=list)  # kept as is
    temporaries_removed: list[TemporaryInfo] = field(default_factory=list)

    @property
    def bytes_written(self) -> int:
        return sum(p.size for p in self.new_packs)

    @property
    def bytes_freed(self) -> int:
        """Net space reclaimed: packs and temporaries deleted less the new packs."""
        tmp = sum(t.size for t in self.temporaries_removed)
        return sum(p.size for p in self.deleted) + tmp - self.bytes_written


def plan_forget(manifests: Iterable[Manifest], keep_ids: Collection[str]) -> list[str]:
    """The backups to forget: every manifest not kept (the caller decides ``keep_ids``)."""
    return sorted(m.backup_id for m in manifests if m.backup_id not in keep_ids)


async def forget(repo: Repository, backup_ids: Iterable[str]) -> None:
    """Delete the manifests; their chunks become garbage for the next GC."""
    for backup_id in backup_ids:
        await repo.target.delete(fmt.manifest_key(backup_id))


async def _read_segment(repo: Repository, key: str) -> list[segment_codec.SegmentPack]:
    where = f"{repo.target.describe()}/{key}"
    return segment_codec.open_segment(repo.keys, key, await repo.target.get(key), where)


async def _leases(
    repo: Repository, cutoff: datetime, own: str | None
) -> tuple[list[LeaseInfo], list[tuple[LeaseInfo, str]], list[str]]:
    """(other live leases, leases whose holder is provably dead, keys to remove)."""
    found, unreadable = await read_leases(repo.target, repo.keys)
    gone = list(unreadable)
    live: list[LeaseInfo] = []
    dead: list[tuple[LeaseInfo, str]] = []
    for r in found:
        if r.info.lease_id == own:
            continue  # GC's own lease may look expired on a shifted clock
        if r.expired(cutoff):
            gone += r.keys
            continue
        state, why = liveness(r.info)
        if state == "unknown":  # another host or container: its renewals speak for it
            late = stale(r.info, cutoff)
            state, why = ("dead", late) if late else (state, why)
        if state == "dead":
            dead.append((r.info, why))
            gone += r.keys
        else:
            live.append(r.info)
    return live, dead, sorted(gone)


async def _mark(
    repo: Repository, forgotten: Collection[str]
) -> tuple[set[bytes], list[str], list[tuple[str, str]]]:
    """(referenced blob ids, backups marked, backups that could not be read)."""
    referenced: set[bytes] = set()
    marked: list[str] = []
    held: list[tuple[str, str]] = []
    for backup_id in sorted(await repo.list_manifests()):
        if backup_id in forgotten:
            continue
        try:
            m = await repo.load_manifest(backup_id)
        except IntegrityError as exc:
            held.append((backup_id, f"manifest unreadable: {exc}"))
            continue
        except RepositoryError:
            if await repo.has_manifest(backup_id):
                raise
            continue  # forgotten meanwhile (by another prune): nothing to keep
        referenced.update(m.tree)
        try:
            nodes = await repo.read_tree(m)
        except IntegrityError as exc:
            held.append((backup_id, f"tree unreadable: {exc}"))
            continue
        for node in nodes:
            referenced.update(node.chunks)
        marked.append(backup_id)
    return referenced, marked, held


async def _stale_temporaries(repo: Repository, cutoff: datetime) -> list[TemporaryInfo]:
    lister = getattr(repo.target, "list_temporary", None)
    if lister is None:
        return []
    return [
        t async for t in cast(_Temporaries, repo.target).list_temporary() if t.modified < cutoff
    ]


async def plan_gc(
    repo: Repository,
    *,
    now: datetime,
    margin: timedelta,
    forgotten: Collection[str] = (),
    own_lease: str | None = None,
    max_unused: float | None = DEFAULT_MAX_UNUSED,
    temp_age: timedelta = DEFAULT_TTL,
) -> GcPlan:
    """Steps 1–2: leases, then mark and decide. Reads only. Replaces ``repo.index``
    with a fresh one (segments + orphan packs), so trees committed since the open can
    be read."""
    others, dead, expired = await _leases(repo, now - margin, own_lease)
    segments: list[str] = []
    damaged_segments: list[str] = []
    indexed: dict[bytes, list[PackEntry]] = {}
    async for obj in repo.target.list(fmt.INDEX_PREFIX):
        segments.append(obj.key)
        try:
            content = await _read_segment(repo, obj.key)
        except IntegrityError:
            damaged_segments.append(obj.key)  # its packs are found by their headers
            continue
        for listed in content:  # duplicates (crash, undo) are equal
            indexed.setdefault(listed.pack_id, listed.entries)
    sizes: dict[bytes, int] = {}
    async for obj in repo.target.list(fmt.DATA_PREFIX):
        pid = packscan.pack_id_of(obj.key)
        if pid is not None:
            sizes[pid] = obj.size
    orphans: dict[bytes, list[PackEntry]] = {}
    unreadable: list[str] = []
    for pid in sorted(sizes.keys() - indexed.keys()):
        try:
            orphans[pid] = await packscan.read_header(
                repo.target, repo.keys, fmt.pack_key(pid), sizes[pid]
            )
        except (IntegrityError, ObjectNotFound):
            unreadable.append(fmt.pack_key(pid))  # unknown content: never delete it
    index = ChunkIndex()
    for pid, entries in (*orphans.items(), *indexed.items()):  # indexed ones win
        for e in entries:
            index[e.id] = IndexEntry(pid, e.offset, e.length, e.otype, e.raw_length)
    index.compact()
    repo.index = index
    referenced, marked, held = await _mark(repo, forgotten)
    packs = [
        Pack(pid, sizes.get(pid, 0), tuple(entries), pid in indexed, pid in sizes)
        for pid, entries in (*indexed.items(), *orphans.items())
    ]
    plan = GcPlan(
        segments, marked, frozenset(forgotten), [], [], others, expired, unreadable,
        dead=dead, held=held, damaged_segments=damaged_segments,
        temporaries=await _stale_temporaries(repo, now - temp_age),
    )  # fmt: skip
    if held:  # some kept backup's chunks are unknown: every pack stays as it is
        plan.keep = packs
        return plan
    d = decide(packs, referenced, max_unused)
    plan.keep, plan.garbage, plan.repack = d.keep, d.garbage, d.repack
    plan.used_bytes, plan.unused_kept = d.used_bytes, d.unused_kept
    return plan


async def _put_segment(repo: Repository, packs: Sequence[Pack]) -> str | None:
    if not packs:
        return None
    key = segment_codec.new_key()
    listed = [segment_codec.SegmentPack(p.pack_id, list(p.entries)) for p in packs]
    await repo.target.put(key, segment_codec.seal_segment(repo.keys, key, listed))
    return key


async def repack(repo: Repository, plan: GcPlan, report: GcReport) -> None:
    """Step 3: copy the used blobs of ``plan.repack`` into new packs and upload them.
    A pack that cannot be read whole and intact is kept as it is (reported)."""
    copier = Repacker(repo.pack_size)

    async def upload(final: bool) -> None:
        new = copier.take(repo.keys) if final or copier.full() else None
        if new is not None:
            await repo.target.put(fmt.pack_key(new.pack_id), new.data)
            report.new_packs.append(Pack(new.pack_id, len(new.data), tuple(new.entries), True))

    for u in plan.repack:
        where = f"{repo.target.describe()}/{u.pack.key}"
        try:
            copier.add(u, await repo.target.get(u.pack.key), where)
        except (IntegrityError, ObjectNotFound) as exc:
            report.repack_failed.append((u.pack, str(exc)))
            continue
        report.repacked.append(u.pack)
        await upload(False)
    await upload(True)


async def write_kept_index(
    repo: Repository, plan: GcPlan, report: GcReport | None = None
) -> str | None:
    """Step 4a: one segment listing every pack that stays (orphans re-indexed, new
    packs of a repack; a planned repack not carried out keeps its pack listed)."""
    copied = {p.pack_id for p in report.repacked} if report else set()
    stays = [u.pack for u in plan.repack if u.pack.pack_id not in copied]
    return await _put_segment(repo, [*plan.keep, *stays, *(report.new_packs if report else ())])


async def drop_old_segments(repo: Repository, plan: GcPlan) -> None:
    """Step 4b, only after :func:`write_kept_index` succeeded."""
    for key in plan.segments:
        await repo.target.delete(key)


def _going(plan: GcPlan, report: GcReport | None) -> list[Pack]:
    return [*plan.garbage, *(report.repacked if report else ())]


async def restore_index(
    repo: Repository, plan: GcPlan, report: GcReport | None = None
) -> str | None:
    """The undo of step 4: list the garbage and repacked packs again (never deleted)."""
    return await _put_segment(repo, [p for p in _going(plan, report) if p.entries and p.present])


async def delete_packs(repo: Repository, plan: GcPlan, report: GcReport) -> None:
    """Step 5: delete garbage and repacked packs; an Object-Locked one is reported."""
    for p in _going(plan, report):
        try:
            await repo.target.delete(p.key)
        except TargetError as exc:
            if exc.retryable:
                raise
            report.locked.append((p, str(exc)))
            continue
        report.deleted.append(p)


async def remove_temporaries(repo: Repository, plan: GcPlan, report: GcReport) -> None:
    """Unfinished writes older than the lease ttl; only called with no other writer."""
    if not plan.temporaries:
        return
    target = cast(_Temporaries, repo.target)
    for t in plan.temporaries:
        await target.delete_temporary(t)
        report.temporaries_removed.append(t)


def _who(leases: Sequence[LeaseInfo]) -> str:
    out = []
    for x in sorted(leases, key=lambda x: x.started):
        state, why = liveness(x)
        when = f"{x.started:%Y-%m-%d %H:%M:%S} UTC"
        if state == "alive":
            out.append(f"{x.purpose} by {x.holder} running since {when}")
        else:  # never "running": we do not know that it is
            until = f"{x.expires:%Y-%m-%d %H:%M:%S} UTC"
            out.append(
                f"{x.purpose} by {x.holder}, lease taken {when}, valid until {until} ({why})"
            )
    return "; ".join(out)


async def _late_writers(repo: Repository, plan: GcPlan, own: str, now: datetime) -> str | None:
    others, _, _ = await _leases(repo, now, own)
    if others:
        return _who(others)
    new = set(await repo.list_manifests()) - set(plan.marked) - plan.forgotten
    new -= {b for b, _ in plan.held}
    return f"backups committed during GC: {', '.join(sorted(new))}" if new else None


async def collect_garbage(
    repo: Repository,
    *,
    now: datetime | None = None,
    margin: timedelta = DEFAULT_MARGIN,
    dry_run: bool = False,
    forgotten: Collection[str] = (),
    holder: str = "prune",
    max_unused: float | None = DEFAULT_MAX_UNUSED,
    temp_age: timedelta = DEFAULT_TTL,
) -> GcReport:
    """Plan and, unless ``dry_run`` (which writes nothing), sweep; see the module doc.

    ``now`` shifts GC's clock (tests of lease expiry); ``forgotten`` are backups whose
    manifests the caller deleted, or would delete in a dry run; ``max_unused`` is the
    repack threshold (engine.maintenance.repack); ``temp_age`` how old an unfinished write must be
    to be removed."""
    skew = (now - datetime.now(UTC)) if now is not None else timedelta(0)

    def clock() -> datetime:
        return datetime.now(UTC) + skew

    async def make_plan(own: str | None) -> GcPlan:
        return await plan_gc(
            repo,
            now=clock(),
            margin=margin,
            forgotten=forgotten,
            own_lease=own,
            max_unused=max_unused,
            temp_age=temp_age,
        )

    if dry_run:
        found = await make_plan(None)
        return GcReport(found, deferred=_who(found.leases) or None)
    async with lease(repo.target, repo.keys, holder=holder, purpose="gc") as mine:
        plan = await make_plan(mine.lease_id)
        report = GcReport(plan)
        for key in plan.expired:
            await repo.target.delete(key)
        if plan.leases:
            report.deferred = _who(plan.leases)
            return report
        await remove_temporaries(repo, plan, report)
        if plan.held or not (plan.garbage or plan.repack or plan.reindex or plan.damaged_segments):
            return report
        await repack(repo, plan, report)
        await write_kept_index(repo, plan, report)
        await drop_old_segments(repo, plan)
        await anyio.sleep(margin.total_seconds())
        late = await _late_writers(repo, plan, mine.lease_id, clock() - margin)
        if late is not None:
            await restore_index(repo, plan, report)
            report.deferred = late
            return report
        await delete_packs(repo, plan, report)
    return report
