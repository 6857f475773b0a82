"""``repo export`` is the way out: the system's ``tar`` (no mosaic-backup) turns the
archive back into the backed-up tree — content, modes, symlinks, nanosecond mtimes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format import spec as fmt
from engine.format.manifest import Manifest, Node, encode_tree
from engine.keys.files import create_key_file
from engine.repository import Repository
from engine.restore.export import ChunkReader, export_tar
from engine.storage.local import LocalTarget
from mosaic.compare import tree_differences
from shared.config.targets import LocalTargetConfig
from shared.errors import IntegrityError, UnsafePathError
from shared.vocab import BackupSummary, utcnow
from shared.wire.sources import FilesSource
from tests.harness import REPO_ROOT, agent_toml, cli, make_tree

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


async def _backup(tmp_path: Path) -> tuple[Path, Path]:
    """A backed-up tree (backup id b1) and the agent config that opens its repository."""
    src = make_tree(tmp_path / "src", big_mib=3)
    os.utime(src / "a" / "hello.txt", ns=(0, 1_234_567_890_123_456_789))  # odd nanoseconds
    os.utime(src / "script.sh", ns=(0, -86_400_500_000_000))  # before 1970
    (src / os.fsdecode(b"raw-\xff-name.txt")).write_bytes(b"not UTF-8\n")
    key_file = tmp_path / "repo.key"
    repo = await Repository.open(
        LocalTarget("t", tmp_path / "repo"), create_key_file(key_file), create=True
    )
    spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    await backup_dataset(repo, spec)
    config = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=key_file,
        targets={"t": LocalTargetConfig(path=str(tmp_path / "repo"))},
    )
    return src, config


def _export_to_stdout(config: Path, archive: Path, *extra: str) -> None:
    args = ["repo", "export", "--config", str(config), "b1", "-o", "-", *extra]
    with archive.open("wb") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "mosaic.cli", *args],
            stdout=f,
            stderr=subprocess.PIPE,
            text=False,
            cwd=REPO_ROOT,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr.decode()


def _sh(command: str) -> None:
    proc = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("zstd", "to_stdout"), [(False, False), (False, True), (True, False), (True, True)]
)
async def test_system_tar_restores_the_tree(tmp_path: Path, zstd: bool, to_stdout: bool) -> None:
    src, config = await _backup(tmp_path)
    archive = tmp_path / ("out.tar.zst" if zstd else "out.tar")
    extra = ["--zstd"] if zstd else []
    if to_stdout:
        _export_to_stdout(config, archive, *extra)
    else:
        proc = cli("repo", "export", "--config", str(config), "b1", "-o", str(archive), *extra)
        assert proc.returncode == 0, proc.stderr
        assert "exported" in proc.stderr and proc.stdout == ""
    assert archive.read_bytes().startswith(ZSTD_MAGIC) == zstd
    dest = tmp_path / "extracted"
    dest.mkdir()
    if not zstd:
        _sh(f"tar -xpf '{archive}' -C '{dest}'")
    elif to_stdout:
        _sh(f"zstd -dc '{archive}' | tar -xpf - -C '{dest}'")
    else:
        _sh(f"tar --zstd -xpf '{archive}' -C '{dest}'")
    assert tree_differences(src, dest) == []


async def test_failed_export_leaves_no_archive(tmp_path: Path) -> None:
    _, config = await _backup(tmp_path)
    packs = [p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()]
    max(packs, key=lambda p: p.stat().st_size).unlink()  # a file's data is gone
    proc = cli("repo", "export", "--config", str(config), "b1", "-o", str(tmp_path / "x.tar"))
    assert proc.returncode == 1 and "missing" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml", "repo", "repo.key", "src"]


async def test_unsafe_paths_are_refused_before_writing(tmp_path: Path) -> None:
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
    nodes = [
        Node(path=b"a", type="dir", mode=0o755, mtime_ns=0),
        Node(path=b"a/../../escaped.txt", type="file", mode=0o644, mtime_ns=0),
    ]
    tree_id, sealed = repo.prepare_blob(fmt.OT_TREE, encode_tree(nodes))
    assert sealed is not None
    await repo.add_sealed(fmt.OT_TREE, tree_id, sealed, len(encode_tree(nodes)))
    zero = BackupSummary(
        files=0,
        dirs=0,
        symlinks=0,
        bytes_read=0,
        bytes_new=0,
        bytes_stored=0,
        chunks_total=0,
        chunks_new=0,
        packs_written=0,
        duration_s=0.0,
    )
    manifest = Manifest(
        backup_id="evil",
        dataset="d",
        agent="a",
        backup_type="full",
        source=FilesSource(path="/x"),
        started_at=utcnow(),
        finished_at=utcnow(),
        tree=[tree_id],
        summary=zero,
    )
    await repo.commit_manifest(manifest)
    out = io.BytesIO()
    with pytest.raises(UnsafePathError):
        await export_tar(repo, manifest, out)
    assert out.getvalue() == b""


def test_chunk_reader_streams_exact_sizes() -> None:
    chunks = {b"1": b"hello ", b"2": b"chunked ", b"3": b"world"}
    node = Node(path=b"f", type="file", mode=0o644, mtime_ns=0, size=19, chunks=[*chunks])
    reader = ChunkReader(node, chunks.__getitem__, "f")
    pieces = [reader.read(4) for _ in range(5)]
    assert b"".join(pieces) == b"hello chunked world" and pieces[-1] == b"rld"
    reader.finish()

    short = ChunkReader(msgspec.structs.replace(node, size=25), chunks.__getitem__, "f")
    with pytest.raises(IntegrityError, match="25 bytes"):
        short.read(25)
    long = ChunkReader(msgspec.structs.replace(node, size=10), chunks.__getitem__, "f")
    assert long.read(10) == b"hello chun"
    with pytest.raises(IntegrityError):
        long.finish()
