"""What one backup is: the manifest and the records of its file tree.

Both are msgpack (compact, exact integers, bytes for paths that need not be UTF-8).
Fields only ever get added, with defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Literal

import msgspec

from shared.vocab import BackupSummary
from shared.wire.sources import Source

NodeType = Literal["file", "dir", "symlink", "hardlink"]


class Node(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One entry of a backed-up tree; ``path`` is relative, '/'-separated, raw bytes.

    ``target`` is a symlink's target, or for a ``hardlink`` the path of the first name of
    the same file in this tree (a hardlink also carries that file's chunks and size, so
    it can be restored as a plain copy when its first name is not restored).

    ``xattrs`` (added in format v1 without a version bump) maps extended attribute names
    to values; it is omitted when empty, and older readers ignore it (msgspec skips
    unknown fields), so their restores just lack the attributes."""

    path: bytes
    type: NodeType
    mode: int
    mtime_ns: int
    size: int = 0
    uid: int = 0
    gid: int = 0
    inode: int = 0
    ctime_ns: int = 0
    chunks: list[bytes] = []
    target: bytes = b""
    xattrs: dict[str, bytes] = {}


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    backup_id: str
    dataset: str
    agent: str
    backup_type: str
    parent: str | None = None
    source: Source
    started_at: datetime
    finished_at: datetime
    tree: list[bytes]
    summary: BackupSummary
    hostname: str = ""
    # the retention tier the coordinator gave the backup (shared.vocab.Tier), so
    # a catalog rebuilt from the repository keeps it; None in older manifests
    tier: str | None = None


_node_enc = msgspec.msgpack.Encoder()
_node_dec = msgspec.msgpack.Decoder(Node)
manifest_encoder = msgspec.msgpack.Encoder()
manifest_decoder = msgspec.msgpack.Decoder(Manifest)


def encode_tree(nodes: Iterable[Node]) -> bytes:
    """Concatenate length-prefixed node records (the tree stream)."""
    out = bytearray()
    for node in nodes:
        rec = _node_enc.encode(node)
        out += len(rec).to_bytes(4, "little")
        out += rec
    return bytes(out)


def decode_tree(stream: bytes, where: str) -> Iterator[Node]:
    from shared.errors import IntegrityError

    pos = 0
    while pos < len(stream):
        if pos + 4 > len(stream):
            raise IntegrityError(f"{where}: tree stream ends inside a record length")
        n = int.from_bytes(stream[pos : pos + 4], "little")
        rec = stream[pos + 4 : pos + 4 + n]
        if len(rec) != n:
            raise IntegrityError(f"{where}: tree stream ends inside a record")
        try:
            yield _node_dec.decode(rec)
        except msgspec.DecodeError as exc:
            raise IntegrityError(f"{where}: tree record at byte {pos} is invalid ({exc})") from exc
        pos += 4 + n
