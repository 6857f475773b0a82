"""A repository written by mosaic-backup 0.1.0 (before recovery copies existed) still
lists, restores and verifies, takes new backups without being initialised over, and
gains its recovery copies on the first write.

The fixture in tests/data/ was written once by the released code (commit df91199,
``repo backup`` twice) and is never regenerated: it is what users have on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.config.targets import LocalTargetConfig
from tests.harness import agent_toml, cli

DATA = Path(__file__).parent / "data"


@pytest.fixture
def old(tmp_path: Path) -> tuple[Path, Path, Path]:
    repo = tmp_path / "repo"
    shutil.copytree(DATA / "repo-v0.1", repo, symlinks=True)
    key = tmp_path / "key"
    shutil.copy(DATA / "repo-v0.1.key", key)
    key.chmod(0o600)
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name="old",
        nats_url="nats://127.0.0.1:1",
        key_file=key,
        targets={"t": LocalTargetConfig(path=str(repo))},
    )
    return cfg, repo, key


def _content(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _run(cfg: Path, *args: str) -> str:
    p = cli("repo", *args, "--config", str(cfg))
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_a_v0_1_repository_restores_and_takes_new_backups(
    old: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    cfg, repo, key = old
    ids = sorted(p.name for p in (repo / "manifests").iterdir())
    assert len(ids) == 2 and not (repo / "recovery").exists()
    listed = _run(cfg, "list")
    assert all(i in listed for i in ids)
    _run(cfg, "restore", ids[-1], "--to", str(tmp_path / "out"))
    assert _content(tmp_path / "out") == _content(DATA / "repo-v0.1-source")
    assert (tmp_path / "out" / "link").readlink() == Path("a.txt")
    _run(cfg, "verify", "--all", "--read-data")

    src = tmp_path / "src"
    shutil.copytree(DATA / "repo-v0.1-source", src, symlinks=True)
    (src / "added.txt").write_text("written by this version\n")
    keys_before = sorted(p.name for p in (repo / "keys").iterdir())
    _run(cfg, "backup", str(src), "--dataset", "frozen")
    assert sorted(p.name for p in (repo / "keys").iterdir()) == keys_before  # no re-init
    assert (repo / "recovery" / "config").read_bytes() == (repo / "config").read_bytes()
    assert "recovery" in json.loads(key.read_text())
    _run(cfg, "restore", ids[0], "--to", str(tmp_path / "first"))
    _run(cfg, "verify", "--all", "--read-data")


def test_a_v0_1_repository_that_lost_config_comes_back_from_the_key_file(
    old: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    cfg, repo, _ = old
    _run(cfg, "list")  # this version records the recovery copy in the key file
    (repo / "config").unlink()
    p = cli("repo", "backup", "--config", str(cfg), str(DATA / "repo-v0.1-source"))
    assert p.returncode != 0 and "damaged repository" in p.stderr
    assert not (repo / "config").exists()
    _run(cfg, "repair", "config")
    ids = sorted(p.name for p in (repo / "manifests").iterdir())
    _run(cfg, "restore", ids[-1], "--to", str(tmp_path / "out"))
    assert _content(tmp_path / "out") == _content(DATA / "repo-v0.1-source")
