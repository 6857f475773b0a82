"""Restore details: hard links, partial restore, refusing to overwrite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format.manifest import Manifest
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import LocalTarget
from mosaic.compare import tree_differences
from shared.errors import RepositoryError
from shared.wire.sources import FilesSource
from tests.harness import REPO_ROOT, make_tree


async def _backup(tmp_path: Path, src: Path) -> tuple[Repository, Manifest]:
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
    spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    return repo, await backup_dataset(repo, spec)


async def test_hard_links_are_restored_as_hard_links(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    os.link(src / "a" / "hello.txt", src / "a" / "b" / "hello-again.txt")
    os.link(src / "big.bin", src / "big-link.bin")
    repo, m = await _backup(tmp_path, src)
    assert m.summary.files == 9
    dest = tmp_path / "out"
    await restore_tree(repo, m, dest)
    assert tree_differences(src, dest) == []
    assert os.path.samefile(dest / "a" / "hello.txt", dest / "a" / "b" / "hello-again.txt")
    assert os.path.samefile(dest / "big.bin", dest / "big-link.bin")
    assert (dest / "big.bin").stat().st_nlink == 2


async def test_partial_restore_of_paths(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    os.link(src / "a" / "hello.txt", src / "hello-link.txt")
    repo, m = await _backup(tmp_path, src)
    dest = tmp_path / "out"
    files, nbytes = await restore_tree(repo, m, dest, include=["a/b", "hello-link.txt"])
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert got == ["a", "a/b", "a/b/c", "a/b/c/deep.json", "a/b/empty-inner", "hello-link.txt"]
    # the link's first name was not restored, so it is a plain copy with the same bytes
    assert (dest / "hello-link.txt").read_bytes() == (src / "a" / "hello.txt").read_bytes()
    assert (
        files == 2
        and nbytes
        == (src / "a/b/c/deep.json").stat().st_size + (src / "a" / "hello.txt").stat().st_size
    )


async def test_restore_never_overwrites(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    repo, m = await _backup(tmp_path, src)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "precious.txt").write_text("mine")
    with pytest.raises(RepositoryError, match="not empty"):
        await restore_tree(repo, m, dest)
    assert (dest / "precious.txt").read_text() == "mine"
    assert sorted(p.name for p in dest.iterdir()) == ["precious.txt"]


def test_cli_partial_restore_and_dump(tmp_path: Path) -> None:
    from shared.config.targets import LocalTargetConfig
    from tests.harness import agent_toml, cli

    src = make_tree(tmp_path / "src", big_mib=3)
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name="h",
        nats_url="nats://127.0.0.1:1",
        key_file=tmp_path / "k",
        targets={"l": LocalTargetConfig(path=str(tmp_path / "r"))},
    )
    assert cli("repo", "backup", "--config", str(cfg), str(src), "--dataset", "d").returncode == 0
    backup_id = sorted(p.name for p in (tmp_path / "r" / "manifests").iterdir())[-1]
    dump = subprocess.run(
        [
            sys.executable,
            "-m",
            "mosaic.cli",
            "repo",
            "dump",
            "--config",
            str(cfg),
            backup_id,
            "big.bin",
        ],
        capture_output=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert dump.returncode == 0 and dump.stdout == (src / "big.bin").read_bytes()
    proc = cli(
        "repo",
        "restore",
        "--config",
        str(cfg),
        backup_id,
        "--to",
        str(tmp_path / "o"),
        "--path",
        "a/hello.txt",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*")) == [
        "a",
        "a/hello.txt",
    ]
    missing = cli("repo", "dump", "--config", str(cfg), backup_id, "nope.txt")
    assert missing.returncode == 1 and "has no file 'nope.txt'" in missing.stderr
