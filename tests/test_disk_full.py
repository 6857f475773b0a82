"""A backup onto a full target: one line naming the cause and the place, exit 1, and a
repository that still verifies (no half-written manifest, earlier backups intact).

The target is a real 8 MiB tmpfs. The pipeline's stages fail in a race (the packer's
upload fails, a sealer then finds the packer gone, the reader finds the sealers gone);
before the fix some runs ended in an ``anyio.BrokenResourceError`` traceback instead of
the cause, so the backup is repeated several times.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from engine.backup.pipeline import root_cause
from tests.fixtures.mounts import mounted
from tests.harness import cli, write_toml

RUNS = 8


@pytest.fixture
def small_target(tmp_path: Path) -> Iterator[Path]:
    with mounted(tmp_path / "tgt", size="8m") as mnt:
        yield mnt


def test_backup_onto_a_full_target_says_why_in_one_line(tmp_path: Path, small_target: Path) -> None:
    repo = small_target / "repo"
    cfg = write_toml(
        tmp_path / "agent.toml",
        f'name = "a1"\nnats_url = "nats://127.0.0.1:1"\nkey_file = "{tmp_path / "repo.key"}"\n'
        f'[targets.t]\ntype = "local"\npath = "{repo}"\n',
    )
    src = tmp_path / "src"
    src.mkdir()
    first = random.Random(1).randbytes(300 << 10)
    (src / "first.bin").write_bytes(first)
    ok = cli("repo", "backup", "--config", str(cfg), str(src))
    assert ok.returncode == 0, ok.stderr
    # 24 MiB that does not compress, onto what is left of 8 MiB
    (src / "big.bin").write_bytes(random.Random(2).randbytes(24 << 20))
    lines = []
    for _ in range(RUNS):
        done = cli("repo", "backup", "--config", str(cfg), str(src))
        said = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr and "BrokenResourceError" not in done.stderr
        assert len(said) == 1, done.stderr
        assert "no space left" in said[0].lower() and str(repo) in said[0], said[0]
        lines.append(said[0])
    assert len(lines) == RUNS

    verified = cli("repo", "verify", "--config", str(cfg), "--all", "--read-data")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "checked 1 backup" in verified.stdout and "no damage found" in verified.stdout
    listed = cli("repo", "list", "--config", str(cfg))
    ids = [w for w in listed.stdout.split() if w.startswith("local-src-")]
    assert len(ids) == 1  # no manifest of a failed backup
    out = tmp_path / "out"
    restored = cli("repo", "restore", "--config", str(cfg), ids[0], "--to", str(out))
    assert restored.returncode == 0, restored.stderr
    assert (out / "first.bin").read_bytes() == first
    assert os.listdir(out) == ["first.bin"]


async def test_the_root_cause_wins_over_the_stages_that_found_it_gone() -> None:
    """However anyio orders the leaves, the pipeline raises the error that stopped it."""
    cause = OSError(28, "No space left on device")
    group = BaseExceptionGroup(
        "stages",
        [anyio.BrokenResourceError(), BaseExceptionGroup("packer", [cause]), anyio.EndOfStream()],
    )
    assert root_cause(group) is cause
    only = anyio.BrokenResourceError()
    assert root_cause(BaseExceptionGroup("stages", [only])) is only
