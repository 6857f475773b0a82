"""Which packs garbage collection deletes, repacks or keeps, and the copying of a repack.

A blob is *used* when a kept backup references it AND this pack is the one copy that
serves it; every other copy of it is a duplicate (a crashed first backup's packs, two
writers that stored the same chunk without seeing each other's index). Deciding on
"used" rather than "referenced" is what lets duplicate packs go: a pack of duplicates
holds referenced blobs, yet nothing needs it.

Which copy serves a blob is chosen here, not taken from the index order: among the
packs present in ``data/`` that hold it, the one with the most referenced bytes wins
(then an indexed pack over an unindexed one, then the lower pack id, so the choice is
the same on every run). That packs the used blobs into as few packs as possible, and
makes whole packs of duplicates fall out as garbage instead of needing a copy.

Then, like restic's ``--max-unused``: a pack with no used blob is deleted; of the rest,
packs with unused bytes (duplicates or blobs no kept backup references) are repacked,
most-unused first, until the unused bytes left in kept packs are at most
``max_unused`` × the used bytes of the repository (0.05 by default; 0 repacks every
pack with any unused blob; None never repacks). A threshold per repository rather than
per pack: a per-pack 5 % rule would copy 95 % of a pack to free 5 % of it on every run.

A repack copies the used blobs' sealed bytes as they are into new packs (a sealed
blob's associated data is its chunk id and key id, not its pack, so no decryption is
needed; the pack's own name, BLAKE3 of its bytes, is checked first, so damage is never
copied into a fresh, valid-looking pack).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from engine.format import spec as fmt
from engine.format.crypto import Keyring
from engine.format.pack import PackEntry, PackWriter, check_pack_id
from shared.errors import IntegrityError

DEFAULT_MAX_UNUSED = 0.05


@dataclass(frozen=True, slots=True)
class Pack:
    pack_id: bytes
    size: int  # bytes on the target; 0 when the data/ listing did not show it
    entries: tuple[PackEntry, ...]
    indexed: bool  # False: found only in data/ (a crashed writer's, or an undone GC's)
    present: bool = True  # False: an index lists it but data/ does not (damage)

    @property
    def key(self) -> str:
        return fmt.pack_key(self.pack_id)


@dataclass(frozen=True, slots=True)
class Usage:
    """One pack's share: the entries it serves to kept backups, and the rest."""

    pack: Pack
    used: tuple[PackEntry, ...]

    @property
    def used_bytes(self) -> int:
        return sum(e.length for e in self.used)

    @property
    def unused_bytes(self) -> int:
        return sum(e.length for e in self.pack.entries) - self.used_bytes


@dataclass(slots=True)
class Decision:
    keep: list[Pack]
    garbage: list[Pack]  # no used blob: deleted
    repack: list[Usage]  # used blobs copied into new packs, then the pack deleted
    used_bytes: int  # sealed bytes of every used blob
    unused_kept: int  # unused sealed bytes left in kept packs


def decide(
    packs: Sequence[Pack], referenced: Collection[bytes], max_unused: float | None
) -> Decision:
    """Pure: split ``packs`` into keep / garbage / repack (see the module doc)."""
    weight = {p.pack_id: sum(e.length for e in p.entries if e.id in referenced) for p in packs}
    server: dict[bytes, Pack] = {}
    for p in packs:
        if not p.present:
            continue  # never serve from a pack that is not there
        for e in p.entries:
            if e.id not in referenced:
                continue
            best = server.get(e.id)
            rank = (weight[p.pack_id], p.indexed, _neg(p.pack_id))
            if best is None or rank > (weight[best.pack_id], best.indexed, _neg(best.pack_id)):
                server[e.id] = p
    usages: list[Usage] = []
    for p in packs:
        if p.present:
            used = tuple(e for e in p.entries if server.get(e.id) is p)
        else:  # keep an absent pack's entries only for blobs no present pack holds, so
            # that verify still names the missing pack (damage stays visible)
            used = tuple(e for e in p.entries if e.id in referenced and e.id not in server)
        usages.append(Usage(p, used))
    garbage = [u.pack for u in usages if not u.used]
    live = [u for u in usages if u.used]
    used_bytes = sum(u.used_bytes for u in live)
    unused = sum(u.unused_bytes for u in live if u.pack.present)
    repack: list[Usage] = []
    if max_unused is not None:
        allowed = max_unused * used_bytes
        order = sorted(
            (u for u in live if u.unused_bytes > 0 and u.pack.present),
            key=lambda u: (-u.unused_bytes / max(u.unused_bytes + u.used_bytes, 1), u.pack.key),
        )
        for u in order:
            if unused <= allowed:
                break
            repack.append(u)
            unused -= u.unused_bytes
    chosen = {u.pack.pack_id for u in repack}
    keep = [u.pack for u in live if u.pack.pack_id not in chosen]
    return Decision(keep, garbage, repack, used_bytes, unused)


def _neg(pack_id: bytes) -> bytes:
    """Order key that prefers the lower pack id under ``>``."""
    return bytes(255 - b for b in pack_id)


@dataclass(slots=True)
class NewPack:
    pack_id: bytes
    data: bytes
    entries: list[PackEntry]


class Repacker:
    """Copies used sealed blobs into new packs of about ``pack_size`` bytes."""

    def __init__(self, pack_size: int) -> None:
        self.pack_size = pack_size
        self._writer = PackWriter()
        self._seen: set[bytes] = set()
        self.copied_bytes = 0

    def add(self, usage: Usage, data: bytes, where: str) -> None:
        """Take ``usage``'s used blobs out of the whole pack ``data`` (checked first)."""
        check_pack_id(usage.pack.pack_id, data, where)
        for e in usage.used:
            if e.id in self._seen:
                continue
            sealed = data[e.offset : e.offset + e.length]
            if len(sealed) != e.length:
                raise IntegrityError(f"{where}: blob at {e.offset} runs past the end")
            self._seen.add(e.id)
            self._writer.add(e.otype, e.id, sealed, e.raw_length)
            self.copied_bytes += e.length

    def full(self) -> bool:
        return self._writer.size >= self.pack_size

    def take(self, keys: Keyring) -> NewPack | None:
        """Close the open pack (None when empty); ``keys`` seals its header."""
        if not len(self._writer):
            return None
        writer, self._writer = self._writer, PackWriter()
        pack_id, data, entries = writer.finish(keys)
        return NewPack(pack_id, data, entries)
