"""The backup reader cuts files through one reused buffer (engine.backup.cutter.Cutter).

What a user cares about: every file comes back byte for byte, and the chunk ids are
exactly those pyfastcdc's own streaming chunker gives — so a backup made by this
version deduplicates against repositories written by earlier ones (no re-upload).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import LocalTarget
from mosaic.compare import tree_differences
from shared.wire.sources import FilesSource

MIB = 1 << 20


def _write_tree(root: Path) -> None:
    rng = random.Random(7)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(300)]
    root.mkdir()
    # sizes around the chunker's limits (min 256 KiB, max 4 MiB) and the reader's
    # buffer (8 MiB): a file is read in several fills and its tail moves to the front
    sizes = [0, 1, 256 << 10, 4 * MIB, 4 * MIB + 1, 8 * MIB, 8 * MIB + 3, 13 * MIB + 77]
    for i, size in enumerate(sizes):
        (root / f"random-{i}.bin").write_bytes(rng.randbytes(size))
    text = b" ".join(rng.choice(words) for _ in range(2_000_000))
    (root / "text.log").write_bytes(text[: 11 * MIB])
    small = root / "small"
    small.mkdir()
    for i in range(50):
        (small / f"f{i}.txt").write_bytes(rng.randbytes(rng.randint(0, 40_000)))


async def test_reused_buffer_cuts_like_pyfastcdc_streams_and_restores(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write_tree(src)
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
    spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    manifest = await backup_dataset(repo, spec)

    nodes = {n.path: n for n in await repo.read_tree(manifest) if n.type == "file"}
    assert len(nodes) == 59
    for path, node in nodes.items():
        data = (src / path.decode()).read_bytes()
        expected = [repo.keys.chunk_id(c.data) for c in repo.chunker().cut_stream(io.BytesIO(data))]
        assert node.chunks == expected, f"{path!r}: chunk ids differ from pyfastcdc's"
        assert node.size == len(data)

    dest = tmp_path / "out"
    await restore_tree(repo, manifest, dest)
    assert tree_differences(src, dest) == []
