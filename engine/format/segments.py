"""Index segments: which blobs each pack holds, one sealed object ``index/<random>``.

The one codec of the format: the repository writes segments as checkpoints while a
backup uploads packs, prune writes the kept index, repair writes a rebuilt one; the
repository, prune and verify read them. A segment is a msgpack list of
``[pack_id, [entry, …]]`` (:class:`SegmentPack`), sealed as :data:`spec.OT_INDEX` with
its key as the object id, so a segment copied under another name fails to open.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import msgspec

from engine.format import spec as fmt
from engine.format.crypto import Keyring, open_sealed, seal
from engine.format.pack import PackEntry
from shared.errors import IntegrityError


class SegmentPack(msgspec.Struct, frozen=True, array_like=True):
    pack_id: bytes
    entries: list[PackEntry]


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(list[SegmentPack])


def new_key() -> str:
    """A fresh segment key: segments are never overwritten, only added and deleted."""
    return f"{fmt.INDEX_PREFIX}{uuid.uuid4().hex}"


def seal_segment(keys: Keyring, key: str, packs: Sequence[SegmentPack]) -> bytes:
    return seal(keys, fmt.OT_INDEX, key.encode(), _enc.encode(list(packs)))


def open_segment(keys: Keyring, key: str, sealed: bytes, where: str) -> list[SegmentPack]:
    """The packs a sealed segment lists; IntegrityError when it is damaged or invalid."""
    _, payload = open_sealed(keys, key.encode(), sealed, where)
    try:
        return _dec.decode(payload)
    except msgspec.DecodeError as exc:
        raise IntegrityError(f"{where}: index segment is invalid ({exc})") from exc
