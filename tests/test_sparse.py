"""Sparse files on backup: holes are found with SEEK_DATA/SEEK_HOLE instead of read.

What a user cares about: the restored file has exactly the source's bytes (its holes
come back as zeros), and the chunks are exactly those of the same bytes written out in
full — so a sparse file and a dense copy deduplicate, and backups made before this
reader existed keep deduplicating with new ones.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format.manifest import Node
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import LocalTarget
from shared.wire.sources import FilesSource

MIB = 1 << 20


def _sparse(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)


def _layouts(rng: random.Random) -> dict[str, tuple[int, list[tuple[int, bytes]]]]:
    """Holes at the start, the end, between data; data across the cutter's limits
    (chunks of at most 4 MiB in tests' repositories, a buffer of twice that)."""
    return {
        "all-hole.img": (40 * MIB, []),
        "hole-at-end.img": (30 * MIB, [(0, rng.randbytes(3 * MIB + 5))]),
        "data-at-end.img": (25 * MIB + 17, [(25 * MIB + 17 - 4096, rng.randbytes(4096))]),
        "scattered.img": (
            64 * MIB + 3,
            [
                (5 * MIB + 3, b"x"),
                (20 * MIB + 12345, rng.randbytes(300 << 10)),
                (21 * MIB, rng.randbytes(9 * MIB)),
                (47 * MIB - 1, rng.randbytes(2)),
                (64 * MIB - 100, rng.randbytes(103)),
            ],
        ),
        "small-holes.img": (
            12 * MIB,
            [(i * 256 << 10, rng.randbytes(64 << 10)) for i in range(0, 48, 3)],
        ),
    }


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


async def test_sparse_files_round_trip_with_the_chunks_of_a_dense_copy(tmp_path: Path) -> None:
    rng = random.Random(11)
    sparse, dense = tmp_path / "sparse", tmp_path / "dense"
    sparse.mkdir()
    dense.mkdir()
    for name, (size, pieces) in _layouts(rng).items():
        _sparse(sparse / name, size, pieces)
        (dense / name).write_bytes((sparse / name).read_bytes())  # every byte allocated
        assert os.stat(sparse / name).st_blocks * 512 < size, f"{name} is not sparse here"
        assert os.stat(dense / name).st_blocks * 512 >= size

    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
    nodes: dict[str, dict[bytes, Node]] = {}
    for tag, src in (("sparse", sparse), ("dense", dense)):
        spec = BackupSpec(backup_id=tag, dataset=tag, agent="a", source=FilesSource(path=str(src)))
        m = await backup_dataset(repo, spec)
        nodes[tag] = {n.path: n for n in await repo.read_tree(m)}
        out = tmp_path / f"out-{tag}"
        await restore_tree(repo, m, out)
        for name in _layouts(random.Random(0)):
            assert _sha(out / name) == _sha(src / name), f"{tag}/{name} differs after restore"
            assert (out / name).stat().st_size == (src / name).stat().st_size
    for path, node in nodes["sparse"].items():
        assert node.chunks == nodes["dense"][path].chunks, f"{path!r}: chunks differ"
        assert node.size == nodes["dense"][path].size


async def test_a_mostly_empty_image_stores_its_data_once(tmp_path: Path) -> None:
    """A 512 MiB image with 1.5 MiB of data: read as 512 MiB (its size), stored as its data
    plus one chunk of zeros, and restored byte-identical."""
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(5).randbytes(MIB)
    _sparse(src / "disk.img", 512 * MIB, [(100 * MIB + 7, data[: MIB // 2]), (450 * MIB, data)])
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
    spec = BackupSpec(backup_id="b", dataset="d", agent="a", source=FilesSource(path=str(src)))
    m = await backup_dataset(repo, spec)
    assert m.summary.bytes_read == 512 * MIB
    # each data piece lands in at most two chunks of up to 4 MiB, plus the zero chunk
    assert m.summary.bytes_new <= 4 * 4 * MIB + 4 * MIB
    out = tmp_path / "out"
    await restore_tree(repo, m, out)
    assert _sha(out / "disk.img") == _sha(src / "disk.img")
