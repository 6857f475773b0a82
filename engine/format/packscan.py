"""Reading a pack's own table from its tail, without the index.

The index is a cache of what the pack headers say; when a segment is damaged or
missing, the headers answer instead (Repository.scan_unindexed_packs, ``repo repair
index``). Two ranged reads per pack: the trailer, then the sealed header.
"""

from __future__ import annotations

from engine.format import spec as fmt
from engine.format.crypto import Keyring
from engine.format.pack import PackEntry, read_pack_entries
from engine.storage.base import Target
from shared.errors import IntegrityError


def pack_id_of(key: str) -> bytes | None:
    """The pack id named by a ``data/xx/<id>`` key, or None for anything else."""
    try:
        pack_id = bytes.fromhex(key.rsplit("/", 1)[-1])
    except ValueError:
        return None
    return pack_id if len(pack_id) == 32 and key == fmt.pack_key(pack_id) else None


async def read_header(target: Target, keys: Keyring, key: str, size: int) -> list[PackEntry]:
    where = f"{target.describe()}/{key}"
    n = fmt.PACK_TRAILER.size
    if size < n:
        raise IntegrityError(f"{where}: truncated pack ({size} bytes)")
    trailer = await target.get_range(key, size - n, n)
    if len(trailer) != n:
        raise IntegrityError(f"{where}: truncated pack ({size} bytes)")
    hlen, magic = fmt.PACK_TRAILER.unpack(trailer)
    if magic != fmt.PACK_MAGIC or hlen > size - n:
        raise IntegrityError(f"{where}: pack trailer is damaged")
    header = await target.get_range(key, size - n - hlen, hlen)
    entries = read_pack_entries(keys, header + trailer, where)
    end = size - n - hlen
    if any(e.offset + e.length > end for e in entries):
        raise IntegrityError(f"{where}: pack header describes blobs beyond the pack's data")
    return entries
