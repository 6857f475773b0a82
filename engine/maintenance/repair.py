"""Repairs of a damaged repository: the index, damaged packs, backups that lost data.

Each repair writes what replaces the damage before it removes anything, so a repair
killed at any point leaves a repository at least as readable as before:

- :func:`repair_index` reads every pack's own header and writes index segments that
  describe every readable pack, then deletes the segments it replaced (only those
  listed before the packs were, so a backup committing meanwhile keeps its segment).
- :func:`repair_packs` reads every pack whole; from one that is damaged (hash wrong,
  blobs failing authentication, header unreadable, truncated) the intact sealed blobs
  are copied as they are into a new pack, which is indexed before the damaged pack is
  deleted. Chunks that exist nowhere else are reported lost, with the backups and files
  they belong to.
- :func:`repair_snapshots` rewrites each backup that references lost chunks: files
  whose content is lost are left out of its tree (and named), the original manifest is
  kept under ``recovery/manifests/`` — like restic's ``repair snapshots``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import msgspec

from engine.backup.walk import shown_names
from engine.format import packscan, segments
from engine.format import spec as fmt
from engine.format.crypto import seal
from engine.format.manifest import Manifest, Node, encode_tree, manifest_encoder
from engine.format.pack import PackEntry, PackWriter, check_pack_id, read_pack_entries
from engine.format.segments import SegmentPack
from engine.index import ChunkIndex, IndexEntry
from engine.repository import Repository
from shared.errors import IntegrityError, ObjectNotFound, TargetError

SEGMENT_PACKS = 256  # packs described by one rewritten index segment
_enc = msgspec.msgpack.Encoder()
RECOVERY_MANIFESTS = f"{fmt.RECOVERY_PREFIX}manifests/"


@dataclass
class IndexRepair:
    packs_indexed: int = 0
    segments_written: int = 0
    segments_removed: int = 0
    unreadable_packs: dict[str, str] = field(default_factory=dict)  # key → reason


async def _write_segments(repo: Repository, packs: list[SegmentPack]) -> list[str]:
    keys: list[str] = []
    for i in range(0, len(packs), SEGMENT_PACKS):
        key = segments.new_key()
        part = packs[i : i + SEGMENT_PACKS]
        await repo.target.put(key, segments.seal_segment(repo.keys, key, part))
        keys.append(key)
    return keys


async def repair_index(repo: Repository, *, dry_run: bool = False) -> IndexRepair:
    """Rebuild the index from the pack headers (see module doc); ``repo.index`` is
    replaced by the rebuilt one."""
    repo.refuse_write_only("rebuilding the index")
    rep = IndexRepair()
    old_segments = [o.key async for o in repo.target.list(fmt.INDEX_PREFIX)]
    packs: list[SegmentPack] = []
    index = ChunkIndex()
    async for obj in repo.target.list(fmt.DATA_PREFIX):
        pack_id = packscan.pack_id_of(obj.key)
        if pack_id is None:
            continue
        try:
            entries = await packscan.read_header(repo.target, repo.keys, obj.key, obj.size)
        except (IntegrityError, ObjectNotFound) as exc:
            rep.unreadable_packs[obj.key] = str(exc)
            continue
        packs.append(SegmentPack(pack_id, entries))
        for e in entries:
            index[e.id] = IndexEntry(pack_id, e.offset, e.length, e.otype, e.raw_length)
    index.compact()
    rep.packs_indexed = len(packs)
    if dry_run:
        return rep
    written = await _write_segments(repo, packs)
    rep.segments_written = len(written)
    for key in old_segments:
        await repo.target.delete(key)
        rep.segments_removed += 1
    repo.index = index
    return rep


@dataclass
class PackRepair:
    packs_checked: int = 0
    damaged_packs: list[str] = field(default_factory=list)
    blobs_salvaged: int = 0
    chunks_lost: set[bytes] = field(default_factory=set)
    hits: list[str] = field(default_factory=list)  # "backup X: file Y" per lost chunk use
    index: IndexRepair | None = None


def _intact_blobs(
    repo: Repository, data: bytes, where: str, candidates: list[PackEntry]
) -> tuple[list[tuple[PackEntry, bytes]], list[PackEntry]]:
    """Split a pack's blobs into (entry, sealed bytes) that open, and those that don't."""
    good: list[tuple[PackEntry, bytes]] = []
    bad: list[PackEntry] = []
    for e in candidates:
        sealed = data[e.offset : e.offset + e.length]
        try:
            if len(sealed) != e.length:
                raise IntegrityError("truncated")
            repo.open_blob(e.id, sealed, where)
        except IntegrityError:
            bad.append(e)
            continue
        good.append((e, sealed))
    return good, bad


async def repair_packs(repo: Repository, *, dry_run: bool = False) -> PackRepair:
    """Salvage the intact blobs of every damaged pack (see module doc), then rebuild
    the index so it no longer points into removed packs."""
    repo.refuse_write_only("repairing packs")
    rep = PackRepair()
    by_pack: dict[bytes, list[PackEntry]] = defaultdict(list)
    for cid, e in repo.index.items():
        by_pack[e.pack_id].append(PackEntry(e.otype, cid, e.offset, e.length, e.raw_length))
    present: set[bytes] = set()
    salvaged: list[tuple[PackEntry, bytes]] = []
    doomed: list[str] = []
    lost: set[bytes] = set()
    async for obj in repo.target.list(fmt.DATA_PREFIX):
        pack_id = packscan.pack_id_of(obj.key)
        if pack_id is None:
            continue
        present.add(pack_id)
        rep.packs_checked += 1
        where = f"{repo.target.describe()}/{obj.key}"
        try:
            data = await repo.target.get(obj.key)
        except ObjectNotFound:
            continue  # removed since the listing
        try:
            check_pack_id(pack_id, data, where)
            read_pack_entries(repo.keys, data, where)
            continue  # intact
        except IntegrityError:
            pass
        try:
            header = read_pack_entries(repo.keys, data, where)
        except IntegrityError:
            header = []
        candidates = {e.id: e for e in (*by_pack.get(pack_id, []), *header)}
        good, bad = _intact_blobs(repo, data, where, list(candidates.values()))
        rep.damaged_packs.append(obj.key)
        salvaged += good
        lost |= {e.id for e in bad}
        doomed.append(obj.key)
    # Chunks of packs that are gone altogether.
    for pack_id, entries in by_pack.items():
        if pack_id not in present:
            rep.damaged_packs.append(fmt.pack_key(pack_id))
            lost |= {e.id for e in entries}
    salvaged_ids = {e.id for e, _ in salvaged}
    # A chunk also stored intact in another (undamaged) pack is not lost.
    doomed_ids = {packscan.pack_id_of(k) for k in doomed}
    elsewhere = {
        cid for cid, e in repo.index.items() if e.pack_id in present and e.pack_id not in doomed_ids
    }
    rep.chunks_lost = lost - salvaged_ids - elsewhere
    rep.blobs_salvaged = len(salvaged)
    if dry_run or not rep.damaged_packs:
        rep.hits = await lost_chunk_users(repo, rep.chunks_lost)
        return rep
    writer = PackWriter()
    new_packs: list[SegmentPack] = []
    for blob, sealed in salvaged:
        if blob.id in elsewhere:
            continue
        writer.add(blob.otype, blob.id, sealed, blob.raw_length)
        if writer.size >= repo.pack_size:
            new_packs.append(await _upload(repo, writer))
            writer = PackWriter()
    if len(writer):
        new_packs.append(await _upload(repo, writer))
    await _write_segments(repo, new_packs)  # the salvaged blobs are findable first
    for key in doomed:
        await repo.target.delete(key)
    rep.index = await repair_index(repo)
    # what the pack headers do not hold anywhere now is lost for good
    rep.chunks_lost = {c for c in rep.chunks_lost if c not in repo.index}
    rep.hits = await lost_chunk_users(repo, rep.chunks_lost)
    return rep


async def _upload(repo: Repository, writer: PackWriter) -> SegmentPack:
    pack_id, data, entries = writer.finish(repo.keys)
    await repo.target.put(fmt.pack_key(pack_id), data)
    return SegmentPack(pack_id, entries)


def _shown(m: Manifest, node: Node) -> str:
    return shown_names(m.source)(node.path)


async def lost_chunk_users(repo: Repository, lost: set[bytes]) -> list[str]:
    """'backup X: path' for every file (or tree) of every backup that uses a lost chunk."""
    if not lost:
        return []
    out: list[str] = []
    for backup_id in sorted(await repo.list_manifests()):
        try:
            m = await repo.load_manifest(backup_id)
        except (IntegrityError, TargetError) as exc:
            out.append(f"backup {backup_id}: manifest unreadable ({exc})")
            continue
        if lost & set(m.tree):
            out.append(f"backup {backup_id}: its file tree (nothing of it can be restored)")
            continue
        try:
            nodes = await repo.read_tree(m)
        except IntegrityError as exc:
            out.append(f"backup {backup_id}: file tree unreadable ({exc})")
            continue
        out += [f"backup {backup_id}: {_shown(m, n)}" for n in nodes if lost & set(n.chunks)]
    return out


@dataclass
class SnapshotRepair:
    checked: int = 0
    rewritten: dict[str, list[str]] = field(default_factory=dict)  # backup → files left out
    unrepairable: dict[str, str] = field(default_factory=dict)  # backup → why


async def repair_snapshots(repo: Repository, *, dry_run: bool = False) -> SnapshotRepair:
    """Rewrite every backup whose files reference chunks that exist nowhere."""
    repo.refuse_write_only("repairing backups")
    rep = SnapshotRepair()
    for backup_id in sorted(await repo.list_manifests()):
        rep.checked += 1
        try:
            m = await repo.load_manifest(backup_id)
        except (IntegrityError, TargetError) as exc:
            rep.unrepairable[backup_id] = f"manifest unreadable ({exc})"
            continue
        if await repo.find_missing(m.tree):
            rep.unrepairable[backup_id] = (
                "its file tree is lost; nothing of it can be restored "
                f"(`mosaic-backup repo prune --forget {backup_id}` removes it)"
            )
            continue
        try:
            nodes = await repo.read_tree(m)
        except IntegrityError as exc:
            rep.unrepairable[backup_id] = f"file tree unreadable ({exc})"
            continue
        missing = set(await repo.find_missing({c for n in nodes for c in n.chunks}))
        if not missing:
            continue
        bad = {n.path for n in nodes if missing & set(n.chunks)}
        # hard links to a dropped file go too (their content was the dropped file's)
        bad |= {n.path for n in nodes if n.type == "hardlink" and n.target in bad}
        rep.rewritten[backup_id] = [_shown(m, n) for n in nodes if n.path in bad]
        if dry_run:
            continue
        kept = [n for n in nodes if n.path not in bad]
        await _rewrite(repo, m, kept)
    return rep


async def _rewrite(repo: Repository, m: Manifest, nodes: list[Node]) -> None:
    key = fmt.manifest_key(m.backup_id)
    original = await repo.target.get(key)
    await repo.target.put(f"{RECOVERY_MANIFESTS}{m.backup_id}", original)
    stream = encode_tree(nodes)
    ids: list[bytes] = []
    for ch in repo.chunker().cut_buf(stream):
        bid, sealed = repo.prepare_blob(fmt.OT_TREE, ch.data)
        ids.append(bid)
        if sealed is not None:
            await repo.add_sealed(fmt.OT_TREE, bid, sealed, len(ch.data))
    fixed = msgspec.structs.replace(m, tree=ids)
    await repo.write_index()
    sealed_m = seal(repo.keys, fmt.OT_MANIFEST, key.encode(), manifest_encoder.encode(fixed))
    await repo.target.put(key, sealed_m)
