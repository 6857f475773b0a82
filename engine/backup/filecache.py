"""The agent-side file cache of write-only agents.

An agent with a full key finds unchanged files through the parent backup's tree in the
repository. A write-only agent cannot read that tree (it cannot decrypt anything), so
after each backup it keeps the file metadata of that backup here, in its own state_dir:
``<state_dir>/file-cache/<BLAKE3 of the dataset name>.msgpack`` (mode 0600, replaced
atomically). It holds the tree's nodes — names, sizes, times, inodes and chunk ids of
the agent's own files, on the agent's own host, which can read those files anyway — and
the manifest, so a redelivered job whose backup is already stored can still report it,
and a log backup of a database knows which base backup it extends (engine/logchain.py:
the last manifest is that base, or a log backup whose parent is).

A missing or unreadable cache only costs time: every file is read again, and the index
still keeps unchanged chunks from being uploaded twice; a database's next incremental
becomes a new base backup.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import blake3
import msgspec

from engine.format.manifest import Manifest, Node

log = logging.getLogger(__name__)


class _Cache(msgspec.Struct, kw_only=True):
    manifest: Manifest
    nodes: list[Node]


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(_Cache)


def _path(state_dir: str, dataset: str) -> Path:
    name = blake3.blake3(dataset.encode()).hexdigest()[:32]
    return Path(state_dir) / "file-cache" / f"{name}.msgpack"


def save(state_dir: str, manifest: Manifest, nodes: list[Node]) -> None:
    """Record ``manifest`` and its nodes as the dataset's last backup."""
    path = _path(state_dir, manifest.dataset)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_enc.encode(_Cache(manifest=manifest, nodes=nodes)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(state_dir: str, dataset: str) -> tuple[Manifest, dict[bytes, Node]] | None:
    """The dataset's last backup as recorded here; None when there is none usable."""
    path = _path(state_dir, dataset)
    try:
        cache = _dec.decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as exc:
        log.warning("file cache %s is unreadable (%s); reading every file again", path, exc)
        return None
    return cache.manifest, {n.path: n for n in cache.nodes}
