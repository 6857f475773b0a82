"""The restore oracle (mosaic.compare) catches every kind of difference restore promises
to avoid, on real files: owners (the tests run as root), xattrs, hard links, folder mtimes."""

from __future__ import annotations

import os
from pathlib import Path

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import LocalTarget
from mosaic.compare import tree_differences
from shared.wire.sources import FilesSource
from tests.fixtures.mounts import mounted

T0 = 1_700_000_000_123_456_789


def _tree(root: Path) -> Path:
    """A tree with everything the oracle looks at, every stamp set explicitly, so two
    calls build trees that are equal in all of it."""
    assert os.geteuid() == 0, "these tests change owners: they run as root"
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f.txt").write_text("first name\n")
    os.link(root / "d" / "f.txt", root / "d" / "e" / "g.txt")
    (root / "solo.bin").write_bytes(bytes(range(256)) * 64)
    os.symlink("d/f.txt", root / "link")
    os.setxattr(root / "solo.bin", "user.note", b"kept")
    os.setxattr(root / "d", "user.dir", b"also kept")
    os.chmod(root / "solo.bin", 0o640)
    entries = sorted(root.rglob("*"), key=lambda p: -len(p.parts))  # deepest first
    for i, p in enumerate(entries):
        os.lchown(p, 1234, 4321)
        os.utime(p, ns=(T0 + i, T0 + i), follow_symlinks=False)
    return root


def _twins(tmp_path: Path) -> tuple[Path, Path]:
    return _tree(tmp_path / "a"), _tree(tmp_path / "b")


def test_equal_trees_have_no_difference(tmp_path: Path) -> None:
    assert tree_differences(*_twins(tmp_path)) == []


def test_a_changed_owner_is_caught(tmp_path: Path) -> None:
    a, b = _twins(tmp_path)
    os.lchown(b / "link", 1234, 0)  # the group of a symlink, not of its target
    assert tree_differences(a, b) == ["owner differs: link 1234:4321 != 1234:0"]


def test_a_changed_xattr_is_caught(tmp_path: Path) -> None:
    a, b = _twins(tmp_path)
    os.setxattr(b / "solo.bin", "user.note", b"changed")
    assert tree_differences(a, b) == ["xattrs differ: solo.bin user.note"]
    os.removexattr(b / "solo.bin", "user.note")
    assert tree_differences(a, b) == ["xattrs differ: solo.bin user.note"]


def test_a_broken_hard_link_is_caught(tmp_path: Path) -> None:
    a, b = _twins(tmp_path)
    g = b / "d" / "e" / "g.txt"
    st, folder = g.stat(), g.parent.stat()
    g.unlink()
    g.write_text("first name\n")  # the same bytes, owner, mode and mtime, but a copy
    os.chown(g, st.st_uid, st.st_gid)
    os.utime(g, ns=(st.st_mtime_ns, st.st_mtime_ns))
    os.utime(g.parent, ns=(folder.st_mtime_ns, folder.st_mtime_ns))
    assert tree_differences(a, b) == [
        "hard links differ: d/e/g.txt shares its inode with ['d/f.txt'] in the source, "
        "nothing in the restore",
        "hard links differ: d/f.txt shares its inode with ['d/e/g.txt'] in the source, "
        "nothing in the restore",
    ]


def test_a_changed_folder_mtime_is_caught(tmp_path: Path) -> None:
    a, b = _twins(tmp_path)
    os.utime(b / "d" / "e", ns=(T0, T0 - 1))
    was = (a / "d" / "e").stat().st_mtime_ns
    assert tree_differences(a, b) == [f"mtime differs: d/e {was} != {T0 - 1}"]


async def _backup_and_restore(tmp_path: Path, dest: Path) -> Path:
    src = _tree(tmp_path / "src")
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
    spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    await restore_tree(repo, await backup_dataset(repo, spec), dest)
    return src


async def test_restore_keeps_every_promise(tmp_path: Path) -> None:
    """Backup and restore of the same tree: owners, xattrs, hard links and every mtime
    come back, so the oracle finds nothing (and would, by the tests above, if not)."""
    src = await _backup_and_restore(tmp_path, tmp_path / "out")
    assert tree_differences(src, tmp_path / "out") == []


async def test_xattrs_count_only_where_the_file_system_keeps_them(tmp_path: Path) -> None:
    """Restore promises xattrs only where the destination stores them (elsewhere it
    warns); everything else is still compared there."""
    with mounted(tmp_path / "ramfs", fstype="ramfs") as ramfs:
        src = await _backup_and_restore(tmp_path, ramfs / "out")
        assert os.listxattr(ramfs / "out" / "solo.bin") == []
        assert tree_differences(src, ramfs / "out") == []
        os.chown(ramfs / "out" / "solo.bin", 1234, 1)
        assert tree_differences(src, ramfs / "out") == [
            "owner differs: solo.bin 1234:4321 != 1234:1"
        ]
