"""Files source: include/exclude globs, one_file_system, extended attributes, secrets.

Mount points are real (tmpfs, ramfs): the tests run as root, as the agent does."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.backup.walk import Globs, shown
from engine.format.manifest import Manifest
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import LocalTarget
from mosaic.compare import tree_differences
from shared.wire.sources import FilesSource


async def _backup_restore(
    tmp_path: Path, source: FilesSource, name: str = "b1"
) -> tuple[Repository, Manifest, Path]:
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
    spec = BackupSpec(backup_id=name, dataset="d", agent="a", source=source)
    manifest = await backup_dataset(repo, spec)
    dest = tmp_path / f"out-{name}"
    await restore_tree(repo, manifest, dest)
    return repo, manifest, dest


def _write(root: Path, files: list[str]) -> None:
    for rel in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"content of {rel}\n")


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*")}


TREE = [
    "etc/nginx/nginx.conf",
    "etc/nginx/sites/default.conf",
    "etc/other/x.conf",
    "var/log/app.log",
    "var/log/old/app.log.1",
    "var/cache/blob.bin",
    "srv/app/config.yml",
    "srv/app/.env",
    "srv/app/node_modules/pkg/index.js",
    "srv/app/build/main.o",
    "home/u/.ssh/id_ed25519",
    "home/u/notes.txt",
    "top.log",
]


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        pytest.param(
            ["etc/nginx/**", "srv", "*.log", "/home/u/.ssh"],
            ["node_modules", "var/log/old", "**/build/*.o"],
            {
                "etc/", "etc/nginx/", "etc/nginx/nginx.conf", "etc/nginx/sites/",
                "etc/nginx/sites/default.conf",
                "srv/", "srv/app/", "srv/app/config.yml", "srv/app/.env", "srv/app/build/",
                "var/", "var/log/", "var/log/app.log", "top.log",
                "home/", "home/u/", "home/u/.ssh/", "home/u/.ssh/id_ed25519",
            },
            id="include-and-exclude",
        ),
        pytest.param(
            [],
            ["var", "*.conf", "srv/app/*/"],
            {
                "etc/", "etc/nginx/", "etc/nginx/sites/", "etc/other/",
                "srv/", "srv/app/", "srv/app/config.yml", "srv/app/.env",
                "home/", "home/u/", "home/u/.ssh/", "home/u/.ssh/id_ed25519",
                "home/u/notes.txt", "top.log",
            },
            id="exclude-only",
        ),
        pytest.param(
            ["**/app/*.yml", "etc/n?inx/[mn]*.conf"],
            ["etc/nginx"],  # exclude wins over include
            {"srv/", "srv/app/", "srv/app/config.yml"},
            id="exclude-wins",
        ),
    ],
)  # fmt: skip
async def test_include_exclude_restore_exactly_the_selected_tree(
    tmp_path: Path, include: list[str], exclude: list[str], expected: set[str]
) -> None:
    src = tmp_path / "src"
    _write(src, TREE)
    source = FilesSource(path=str(src), include=include, exclude=exclude)
    _, manifest, dest = await _backup_restore(tmp_path, source)
    assert _listing(dest) == expected
    for rel in expected:
        if not rel.endswith("/"):
            assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert manifest.summary.files == sum(not r.endswith("/") for r in expected)


async def test_filtered_out_special_files_raise_no_warning(tmp_path: Path) -> None:
    """Only what the filters keep is warned about: an excluded FIFO, or one outside the
    included folders, is not the user's concern; an included one is named."""
    src = tmp_path / "src"
    _write(src, ["etc/app.conf", "var/cache/blob.bin"])
    os.mkfifo(src / "etc" / "control.fifo")
    os.mkfifo(src / "var" / "cache" / "cache.fifo")
    os.mkfifo(src / "etc" / "excluded.pipe")
    source = FilesSource(path=str(src), include=["etc/"], exclude=["*.pipe"])
    _, manifest, dest = await _backup_restore(tmp_path, source)
    s = manifest.summary
    assert s.files_skipped == 1
    assert [(w.kind, w.path) for w in s.warnings] == [
        ("skipped", str(src / "etc" / "control.fifo"))
    ]
    assert _listing(dest) == {"etc/", "etc/app.conf"}


@contextlib.contextmanager
def _mounted(fstype: str, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", fstype, "-o", "size=8m", fstype, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


async def test_one_file_system_does_not_cross_a_mount_point(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    _write(src, ["a/kept.txt", "b/kept.txt"])
    with _mounted("tmpfs", src / "a" / "mnt") as mnt:
        _write(mnt, ["on-tmpfs.txt", "deeper/also.txt"])
        caplog.set_level(logging.INFO, logger="engine.backup.walk")
        _, m1, stay = await _backup_restore(
            tmp_path, FilesSource(path=str(src), one_file_system=True), "stay"
        )
        _, _, cross = await _backup_restore(tmp_path, FilesSource(path=str(src)), "cross")
    # the mount point itself is kept (empty), so a restore has somewhere to mount again
    assert _listing(stay) == {"a/", "a/kept.txt", "a/mnt/", "b/", "b/kept.txt"}
    assert m1.summary.files == 2
    assert "a/mnt/on-tmpfs.txt" in _listing(cross)
    assert (cross / "a/mnt/deeper/also.txt").read_text() == "content of deeper/also.txt\n"
    assert any("a/mnt" in r.getMessage() for r in caplog.records)


def _xattrs(path: Path) -> dict[str, bytes]:
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in os.listxattr(path, follow_symlinks=False)
        if n.startswith("user.")
    }


async def test_xattrs_round_trip_and_old_readers_still_decode(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write(src, ["d/file.txt", "plain.txt"])
    os.setxattr(src / "d" / "file.txt", "user.mime_type", b"text/plain")
    os.setxattr(src / "d" / "file.txt", "user.binary", bytes(range(256)))
    os.setxattr(src / "d", "user.dir-tag", b"")
    os.chmod(src / "d" / "file.txt", 0o444)  # read-only files keep their attributes too
    repo, manifest, dest = await _backup_restore(tmp_path, FilesSource(path=str(src)))
    assert tree_differences(src, dest) == []
    assert _xattrs(dest / "d" / "file.txt") == _xattrs(src / "d" / "file.txt")
    assert _xattrs(dest / "d" / "file.txt")["user.binary"] == bytes(range(256))
    assert _xattrs(dest / "d") == {"user.dir-tag": b""}
    assert _xattrs(dest / "plain.txt") == {}

    # a reader that predates the field (its Node has no xattrs) decodes the same tree
    class OldNode(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
        path: bytes
        type: str
        mode: int
        mtime_ns: int
        size: int = 0
        chunks: list[bytes] = []

    new = {n.path: n for n in await repo.read_tree(manifest)}
    rec = msgspec.msgpack.encode(new[b"d/file.txt"])
    old = msgspec.msgpack.decode(rec, type=OldNode)
    assert old.path == b"d/file.txt" and old.size == new[b"d/file.txt"].size

    # with xattrs = false nothing is recorded
    repo2, m2, _ = await _backup_restore(tmp_path, FilesSource(path=str(src), xattrs=False), "x")
    assert all(not n.xattrs for n in await repo2.read_tree(m2))


async def test_xattrs_on_a_file_system_without_support_are_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    _write(src, ["one.txt", "two.txt"])
    for name in ("one.txt", "two.txt"):
        os.setxattr(src / name, "user.tag", b"x")
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
    spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    manifest = await backup_dataset(repo, spec)
    caplog.set_level(logging.WARNING, logger="engine.restore.tree")
    with _mounted("ramfs", tmp_path / "ramfs") as ramfs:  # ramfs has no xattr support
        files, _ = await restore_tree(repo, manifest, ramfs / "out")
        assert files == 2
        assert tree_differences(src, ramfs / "out") == []
    warnings = [r.getMessage() for r in caplog.records if "extended attribute" in r.getMessage()]
    assert len(warnings) == 1 and "2 extended attribute(s)" in warnings[0]


async def test_secret_files_are_backed_up_but_never_named_or_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    _write(src, ["app/config.yml", "tls/server.key"])
    (src / "app" / ".env").write_text("DB_PASSWORD=hunter2-topsecret\n")
    (src / "home" / ".ssh").mkdir(parents=True)
    (src / "home" / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    caplog.set_level(logging.DEBUG)
    with _mounted("tmpfs", src / "tls" / "id_mounted"):  # a secret-named mount point
        repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
        source = FilesSource(path=str(src), one_file_system=True)
        spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=source)
        manifest = await backup_dataset(repo, spec)
    dest = tmp_path / "out"
    await restore_tree(repo, manifest, dest)
    assert (dest / "app" / ".env").read_text() == "DB_PASSWORD=hunter2-topsecret\n"
    assert (dest / "home" / ".ssh" / "id_ed25519").exists()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "tls/<secret>" in logged  # the mount point was logged, without its name
    for leak in ("hunter2", "server.key", ".env", "id_ed25519", "id_mounted", "PRIVATE KEY"):
        assert leak not in logged
    # what an error would show for those paths
    secret = Globs(source.secret)
    assert shown("app/.env", secret) == "app/<secret>"
    assert shown("keys/site.pem/inner/file", secret) == "keys/<secret>"
    assert shown("app/config.yml", secret) == "app/config.yml"
