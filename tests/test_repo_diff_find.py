"""``repo diff`` tells what changed between two backups of a dataset (the configuration
history), naming secrets without their content; ``repo find`` tells in which backups a
path exists, with its size and mtime in each. Real repository, real CLI."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.format.manifest import Node
from engine.trees import SecretNames, diff_trees
from shared.config.targets import LocalTargetConfig
from tests.harness import agent_toml, cli

T0 = 1_714_557_600  # 2024-05-01 10:00:00 UTC
T1 = T0 + 86_400  # a day later


@dataclass
class Repo:
    config: Path
    a: str  # dataset cfg, first backup
    b: str  # dataset cfg, second backup
    other: str  # dataset other
    other2: str  # dataset other, a binary file changed

    def run(self, *args: str) -> tuple[int, str, str]:
        proc = cli("repo", *args[:1], "--config", str(self.config), *args[1:])
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, proc.stdout, proc.stderr


def _write(path: Path, data: str, mtime: int = T0, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    path.chmod(mode)
    os.utime(path, (mtime, mtime))


def _backup(config: Path, folder: Path, dataset: str) -> str:
    proc = cli("repo", "backup", "--config", str(config), str(folder), "--dataset", dataset)
    assert proc.returncode == 0, proc.stderr
    found = re.search(rf"local-{dataset}-\d{{8}}T\d+Z", proc.stdout)
    assert found, proc.stdout
    return found.group(0)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    tmp = tmp_path_factory.mktemp("diff")
    config = agent_toml(
        tmp / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=tmp / "repo.key",
        targets={"t": LocalTargetConfig(path=str(tmp / "repo"))},
    )
    src = tmp / "src"
    _write(src / "etc" / "app.conf", "listen 80\nworkers 2\n")  # 20 bytes
    _write(src / "etc" / "old.conf", "gone soon\n")  # 10 bytes
    _write(src / "etc" / "db.env", "PASSWORD=first-secret\n")  # secret by default globs
    _write(src / "bin" / "run.sh", "#!/bin/sh\necho hi\n")  # 18 bytes
    a = _backup(config, src, "cfg")
    _write(src / "etc" / "app.conf", "listen 8080\nworkers 2\nlog on\n", T1)  # 29 bytes
    (src / "etc" / "old.conf").unlink()
    _write(src / "etc" / "new.conf", "brand new\n", T1)  # 10 bytes
    (src / "bin" / "run.sh").chmod(0o755)  # mode only: mtime and content stay
    _write(src / "etc" / "db.env", "PASSWORD=second-secret\n", T1)
    b = _backup(config, src, "cfg")
    _write(tmp / "other" / "etc" / "app.conf", "unrelated\n")
    (tmp / "other" / "blob.bin").write_bytes(b"\0\1\2")
    other = _backup(config, tmp / "other", "other")
    (tmp / "other" / "blob.bin").write_bytes(b"\0\1\3\4")
    other2 = _backup(config, tmp / "other", "other")
    return Repo(config=config, a=a, b=b, other=other, other2=other2)


def rows(stdout: str) -> list[list[str]]:
    """The body rows of a rich table, cells stripped."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in stdout.splitlines()
        if line.startswith("│")
    ]


def test_diff_names_each_change_with_its_category_and_sizes(repo: Repo) -> None:
    code, out, _ = repo.run("diff", repo.a, repo.b)
    assert code == 0
    assert rows(out) == [
        ["metadata-only", "bin/run.sh", "file", "18 B", "18 B", "mode"],
        ["modified", "etc/app.conf", "file", "20 B", "29 B", "size, content, mtime"],
        ["changed", "etc/<secret>", "—", "—", "—", ""],
        ["added", "etc/new.conf", "file", "—", "10 B", ""],
        ["removed", "etc/old.conf", "file", "10 B", "—", ""],
    ]
    assert "1 added, 1 removed, 1 modified, 1 metadata-only, 1 secret changed" in out
    assert "db.env" not in out and "PASSWORD" not in out


def test_diff_content_shows_the_text_diff_but_never_a_secret(repo: Repo) -> None:
    code, out, _ = repo.run("diff", repo.a, repo.b, "--content")
    assert code == 0
    assert "--- a/etc/app.conf\n+++ b/etc/app.conf\n" in out
    assert "-listen 80\n+listen 8080\n workers 2\n+log on\n" in out
    assert "etc/<secret>: changed (a secret file: content not shown)" in out
    assert "db.env" not in out and "PASSWORD" not in out and "first-secret" not in out
    assert "--- a/bin/run.sh" not in out  # same content: no diff


def test_diff_content_of_a_binary_file_is_one_line(repo: Repo) -> None:
    code, out, _ = repo.run("diff", repo.other, repo.other2, "--content")
    assert code == 0
    assert [r[:5] for r in rows(out)] == [["modified", "blob.bin", "file", "3 B", "4 B"]]
    assert "blob.bin: binary or over 1.0 MiB, content not shown" in out
    assert "--- a/blob.bin" not in out


def test_diff_path_limits_to_a_folder(repo: Repo) -> None:
    code, out, _ = repo.run("diff", repo.a, repo.b, "--path", "bin")
    assert code == 0
    assert [r[:2] for r in rows(out)] == [["metadata-only", "bin/run.sh"]]
    assert "under bin: 1 metadata-only" in out


def test_diff_of_the_same_backup_finds_nothing(repo: Repo) -> None:
    code, out, _ = repo.run("diff", repo.b, repo.b)
    assert code == 0
    assert rows(out) == [] and "no differences" in out


def test_diff_across_datasets_is_one_line_and_exit_1(repo: Repo) -> None:
    code, out, err = repo.run("diff", repo.a, repo.other)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "BACKUP_B" in lines[0] and "'other'" in lines[0] and "'cfg'" in lines[0]
    assert "--dataset cfg" in lines[0]


def test_diff_of_an_unknown_backup_is_one_line(repo: Repo) -> None:
    code, _, err = repo.run("diff", repo.a, "local-cfg-nosuch")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "local-cfg-nosuch" in err


def test_find_lists_each_backup_holding_a_path(repo: Repo) -> None:
    code, out, _ = repo.run("find", "etc/app.conf")
    assert code == 0
    got = [(r[0], r[1], r[3], r[5], r[6]) for r in rows(out)]
    assert got == [
        (repo.a, "cfg", "etc/app.conf", "20 B", "2024-05-01 10:00:00"),
        (repo.b, "cfg", "etc/app.conf", "29 B", "2024-05-02 10:00:00"),
        (repo.other, "other", "etc/app.conf", "10 B", "2024-05-01 10:00:00"),
        (repo.other2, "other", "etc/app.conf", "10 B", "2024-05-01 10:00:00"),
    ]
    code, out, _ = repo.run("find", "old.conf")  # a name at any depth
    assert [(r[0], r[5]) for r in rows(out)] == [(repo.a, "10 B")]


def test_find_filters_by_dataset_and_date(repo: Repo) -> None:
    _, out, _ = repo.run("find", "etc/*.conf", "--dataset", "cfg")
    assert {r[0] for r in rows(out)} == {repo.a, repo.b}
    assert "etc/app.conf" in {r[3] for r in rows(out)}
    b_started = datetime.strptime(repo.b.split("-")[-1], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    _, out, _ = repo.run("find", "**/*.conf", "--dataset", "cfg", "--since", b_started.isoformat())
    assert sorted(r[3] for r in rows(out)) == ["etc/app.conf", "etc/new.conf"]
    assert {r[0] for r in rows(out)} == {repo.b}


def test_find_names_a_secret_without_its_size(repo: Repo) -> None:
    code, out, _ = repo.run("find", "*.env", "--dataset", "cfg")
    assert code == 0
    assert [(r[3], r[5]) for r in rows(out)] == [("etc/<secret>", "—")] * 2
    assert "db.env" not in out


def test_a_pattern_matching_nothing_says_so(repo: Repo) -> None:
    code, out, _ = repo.run("find", "*.nothing", "--dataset", "cfg")
    assert code == 0
    assert "no path matches '*.nothing' in 2 backups of dataset cfg" in out
    code, _, err = repo.run("find", "*", "--since", "last week")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--since" in err


def _node(path: bytes, kind: str = "file", mtime: int = 1, **kw: object) -> Node:
    return Node(path=path, type=kind, mode=0o644, mtime_ns=mtime, **kw)  # type: ignore[arg-type]


def test_a_folder_mtime_follows_its_entries_and_is_listed_only_alone() -> None:
    names = SecretNames()
    old = [_node(b"d", "dir"), _node(b"e", "dir"), _node(b"d/x")]
    new = [_node(b"d", "dir", mtime=2), _node(b"e", "dir", mtime=2)]
    changes = [(c.shown, c.kind, c.what) for c in diff_trees(old, new, names)]
    assert changes == [("d/x", "removed", ()), ("e", "metadata", ("mtime",))]
    link = [_node(b"l", "symlink", target=b"a")]
    moved = [_node(b"l", "symlink", target=b"b")]
    assert [(c.kind, c.what) for c in diff_trees(link, moved, names)] == [("modified", ("target",))]
