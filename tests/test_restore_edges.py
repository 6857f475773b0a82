"""Restore on awkward ground: sparse files stay sparse, a full destination is one line.

Real parts: the real command, a real repository on disk, and a size-limited tmpfs
mounted by the test (we are root here) as the destination that fills up.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config.targets import LocalTargetConfig
from tests.fixtures.mounts import mounted
from tests.harness import agent_toml, cli


def _cfg(tmp: Path) -> Path:
    return agent_toml(
        tmp / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=tmp / "key",
        targets={"t": LocalTargetConfig(path=str(tmp / "repo"))},
    )


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _backup(cfg: Path, src: Path, repo: Path | None = None) -> str:
    p = cli("repo", "backup", "--config", str(cfg), str(src), "--dataset", "d", timeout=300)
    assert p.returncode == 0, p.stderr
    return next((repo or cfg.parent / "repo").joinpath("manifests").iterdir()).name


def test_sparse_file_is_restored_sparse(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "disk.img"
    with sparse.open("wb") as f:
        f.truncate(1 << 30)  # 1 GiB, almost all hole
        f.seek(300 << 20)
        f.write(os.urandom(1 << 20))
        f.seek((1 << 30) - 4096)
        f.write(b"tail" * 1024)
    cfg = _cfg(tmp_path)
    backup_id = _backup(cfg, src)
    out = tmp_path / "out"
    p = cli("repo", "restore", "--config", str(cfg), backup_id, "--to", str(out), timeout=300)
    assert p.returncode == 0, p.stderr
    restored = out / "disk.img"
    assert restored.stat().st_size == 1 << 30
    assert _sha(restored) == _sha(sparse)
    # allocated: the data written, not the gigabyte (st_blocks counts 512-byte units)
    assert restored.stat().st_blocks * 512 < 16 << 20


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted(tmp_path / "small", size="6m") as mnt:
        yield mnt


def test_restore_into_a_full_destination_is_one_line(tmp_path: Path, small_tmpfs: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}.bin").write_bytes(os.urandom(2 << 20))
    cfg = _cfg(tmp_path)
    backup_id = _backup(cfg, src)
    before = sorted((tmp_path / "repo").rglob("*"))
    p = cli("repo", "restore", "--config", str(cfg), backup_id, "--to", str(small_tmpfs / "out"))
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1, p.stderr
    assert "no space left" in lines[0] and str(small_tmpfs / "out") in lines[0]
    assert "bytes free" in lines[0]
    # the repository is untouched and still restores elsewhere
    assert sorted((tmp_path / "repo").rglob("*")) == before
    p = cli("repo", "restore", "--config", str(cfg), backup_id, "--to", str(tmp_path / "ok"))
    assert p.returncode == 0, p.stderr
    assert {f.name: _sha(f) for f in (tmp_path / "ok").iterdir()} == {
        f.name: _sha(f) for f in src.iterdir()
    }


def test_wal_archive_into_a_full_spool_is_one_line(small_tmpfs: Path, tmp_path: Path) -> None:
    seg = tmp_path / "000000010000000000000001"
    seg.write_bytes(os.urandom(16 << 20))  # a WAL segment larger than the spool
    p = cli("wal-archive", "--spool", str(small_tmpfs), str(seg), seg.name)
    assert p.returncode == 1  # PostgreSQL keeps the segment and retries
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left" in lines[0] and "bytes free" in lines[0]
    assert list(small_tmpfs.iterdir()) == []  # no half segment, no temporary left


def test_prune_on_a_full_target_is_one_line_and_the_repository_verifies(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    repo = small_tmpfs / "repo"
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=tmp_path / "key",
        targets={"t": LocalTargetConfig(path=str(repo))},
        extra="pack_size = 1048576\n",
    )
    src = tmp_path / "src"
    src.mkdir()
    # two backups sharing packs: forgetting the first leaves packs half used -> repack
    for i in range(4):
        (src / f"keep{i}.bin").write_bytes(os.urandom(300 << 10))
        (src / f"drop{i}.bin").write_bytes(os.urandom(300 << 10))
    first = _backup(cfg, src, repo)
    for i in range(4):
        (src / f"drop{i}.bin").unlink()
    p = cli("repo", "backup", "--config", str(cfg), str(src), "--dataset", "d")
    assert p.returncode == 0, p.stderr
    filler = small_tmpfs / "filler"
    with filler.open("wb") as f:  # fill the target to the last block
        try:
            while True:
                f.write(bytes(64 << 10))
                f.flush()
        except OSError:
            pass
    p = cli(
        "repo", "prune", "--config", str(cfg), "--forget", first,
        "--margin", "0", "--max-unused", "0",
    )  # fmt: skip
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "no space left" in errors[0].lower(), p.stderr
    filler.unlink()
    p = cli("repo", "verify", "--config", str(cfg), "--all", "--read-data")
    assert p.returncode == 0, p.stdout + p.stderr
