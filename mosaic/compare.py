"""Compare a source tree with its restore: the oracle of quickstart and the tests.

It checks exactly what restore promises (engine.restore.tree): every entry present with
the same type; files with the same bytes; symlinks with the same target; the permission
bits of files and folders; the mtime of files, folders and symlinks; owner and group when
running as root (restore sets them only then); every extended attribute, where the
restore's file system keeps them (elsewhere restore only warns: engine.restore.tree); and
hard links restored as links (the names sharing one inode in the source share one in the
restore, and no others). Not compared: atime and ctime (no restore can set them), where
the holes of sparse files are (only the bytes), and the top folder itself (restore does
not own it).
"""

from __future__ import annotations

import errno
import filecmp
import os
import stat
from collections import defaultdict
from pathlib import Path


def _entries(root: Path) -> dict[str, os.stat_result]:
    out: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = os.lstat(full)
    return out


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}  # a file system without extended attributes has none
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


_PROBE = "user.mosaic-compare-probe"


def _keeps_xattrs(root: Path) -> bool:
    """Whether the file system of ``root`` stores extended attributes (ramfs, and tmpfs
    before Linux 6.6, refuse them): set one on the top folder, which is not compared,
    and take it off again."""
    try:
        os.setxattr(root, _PROBE, b"1", follow_symlinks=False)
    except OSError as exc:
        return exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP)
    os.removexattr(root, _PROBE, follow_symlinks=False)
    return True


def _link_groups(entries: dict[str, os.stat_result]) -> dict[str, frozenset[str]]:
    """For each regular file, the names in this tree that share its inode (itself too)."""
    by_inode: dict[tuple[int, int], set[str]] = defaultdict(set)
    for rel, st in entries.items():
        if stat.S_ISREG(st.st_mode):
            by_inode[(st.st_dev, st.st_ino)].add(rel)
    return {rel: frozenset(names) for names in by_inode.values() for rel in names}


def _metadata(rel: str, sa: os.stat_result, sb: os.stat_result, as_root: bool) -> list[str]:
    diffs: list[str] = []
    if not stat.S_ISLNK(sa.st_mode) and stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
        diffs.append(f"mode differs: {rel} {sa.st_mode:o} != {sb.st_mode:o}")
    if sa.st_mtime_ns != sb.st_mtime_ns:
        diffs.append(f"mtime differs: {rel} {sa.st_mtime_ns} != {sb.st_mtime_ns}")
    if as_root and (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        diffs.append(f"owner differs: {rel} {sa.st_uid}:{sa.st_gid} != {sb.st_uid}:{sb.st_gid}")
    return diffs


def tree_differences(source: str | Path, restored: str | Path) -> list[str]:
    """Every difference between ``source`` and ``restored`` in what restore promises,
    one line each (empty: the restore is faithful)."""
    a, b = _entries(Path(source)), _entries(Path(restored))
    as_root = os.geteuid() == 0
    xattrs = _keeps_xattrs(Path(restored))
    diffs = [f"missing in restore: {p}" for p in sorted(a.keys() - b.keys())]
    diffs += [f"extra in restore: {p}" for p in sorted(b.keys() - a.keys())]
    links_a, links_b = _link_groups(a), _link_groups(b)
    for rel in sorted(a.keys() & b.keys()):
        sa, sb = a[rel], b[rel]
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            diffs.append(f"type differs: {rel}")
            continue
        pa, pb = os.path.join(source, rel), os.path.join(restored, rel)
        if stat.S_ISLNK(sa.st_mode) and os.readlink(pa) != os.readlink(pb):
            diffs.append(f"symlink target differs: {rel}")
        diffs += _metadata(rel, sa, sb, as_root)
        xa, xb = (_xattrs(pa), _xattrs(pb)) if xattrs else ({}, {})
        if xa != xb:
            changed = sorted(n for n in xa.keys() | xb.keys() if xa.get(n) != xb.get(n))
            diffs.append(f"xattrs differ: {rel} {', '.join(changed)}")
        if stat.S_ISREG(sa.st_mode):
            if sa.st_size != sb.st_size or not filecmp.cmp(pa, pb, shallow=False):
                diffs.append(f"content differs: {rel}")
            la, lb = links_a[rel], links_b[rel] & a.keys()
            if la != lb:
                diffs.append(
                    f"hard links differ: {rel} shares its inode with "
                    f"{sorted(la - {rel}) or 'nothing'} in the source, "
                    f"{sorted(lb - {rel}) or 'nothing'} in the restore"
                )
    return diffs
