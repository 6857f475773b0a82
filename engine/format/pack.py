"""Pack files: many sealed blobs in one object, with an encrypted table at the end.

Packing keeps S3 PUT counts low and makes a pack's name (BLAKE3 of its bytes) a check
of the whole file. The table lets ``catalog rebuild`` and ``verify`` read a pack without
the index. Layout in format.py.
"""

from __future__ import annotations

import blake3
import msgspec

from engine.format import spec as fmt
from engine.format.crypto import Keyring, open_sealed, seal
from shared.errors import IntegrityError


class PackEntry(msgspec.Struct, frozen=True, array_like=True):
    otype: int
    id: bytes
    offset: int
    length: int
    raw_length: int


_entries_dec = msgspec.msgpack.Decoder(list[PackEntry])
_enc = msgspec.msgpack.Encoder()


class PackWriter:
    """Accumulates sealed blobs until the pack is big enough to upload."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.entries: list[PackEntry] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, otype: int, blob_id: bytes, sealed: bytes, raw_length: int) -> None:
        self.entries.append(PackEntry(otype, blob_id, self.size, len(sealed), raw_length))
        self._parts.append(sealed)
        self.size += len(sealed)

    def finish(self, keys: Keyring) -> tuple[bytes, bytes, list[PackEntry]]:
        """Return (pack id, pack bytes, entries)."""
        header = seal(keys, fmt.OT_PACK_HEADER, fmt.PACK_HEADER_ID, _enc.encode(self.entries))
        self._parts.append(header)
        self._parts.append(fmt.PACK_TRAILER.pack(len(header), fmt.PACK_MAGIC))
        data = b"".join(self._parts)
        return blake3.blake3(data).digest(), data, self.entries


def read_pack_entries(keys: Keyring, data: bytes, where: str) -> list[PackEntry]:
    """Decode the table at the end of a whole pack."""
    if len(data) < fmt.PACK_TRAILER.size:
        raise IntegrityError(f"{where}: truncated pack ({len(data)} bytes)")
    hlen, magic = fmt.PACK_TRAILER.unpack_from(data, len(data) - fmt.PACK_TRAILER.size)
    if magic != fmt.PACK_MAGIC or hlen > len(data) - fmt.PACK_TRAILER.size:
        raise IntegrityError(f"{where}: pack trailer is damaged")
    start = len(data) - fmt.PACK_TRAILER.size - hlen
    _, payload = open_sealed(keys, fmt.PACK_HEADER_ID, data[start : start + hlen], where)
    return _entries_dec.decode(payload)


def check_pack_id(pack_id: bytes, data: bytes, where: str) -> None:
    actual = blake3.blake3(data).digest()
    if actual != pack_id:
        raise IntegrityError(
            f"{where}: content hash {actual.hex()[:16]}… does not match its name (damaged)"
        )
