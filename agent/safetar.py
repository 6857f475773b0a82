"""Safe extraction of a restored tar (a PostgreSQL base backup) on every Python we admit.

``tarfile``'s ``filter="data"`` exists only from Python 3.11.4 (and 3.12); Debian 12's
own ``python3`` is 3.11.2, where passing it raises a raw ``TypeError``. So this module
applies the same rules itself on every Python (refusing, where the filter would
rewrite an absolute name), and the standard filter on top where it exists: no
absolute names, no ``..``, no links whose target leaves the destination, no
devices or FIFOs, no setuid/setgid/sticky bits, no group/other write bits, no owner
taken from the archive. Any refusal is one :class:`UnsafeMember` naming the member.

Only the standard library is used, so the module runs under any interpreter (the tests
run it under ``/usr/bin/python3``; by hand: ``python3 agent/safetar.py TAR DEST``).
"""

from __future__ import annotations

import os
import stat
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path


class UnsafeMember(Exception):
    """A tar member that would land outside the destination or is not plain data."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(reason if member in reason else f"member {member!r} {reason}")
        self.member = member


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _checked(tar: tarfile.TarFile, dest: str) -> Iterator[tarfile.TarInfo]:
    """Our own ``data`` filter, for Pythons without ``tarfile.data_filter``."""
    root = os.path.realpath(dest)
    for member in tar:
        name = member.name
        if name.startswith(("/", os.sep)) or (os.altsep and name.startswith(os.altsep)):
            raise UnsafeMember(name, "has an absolute path")
        if ".." in Path(name).parts:
            raise UnsafeMember(name, "has a '..' component")
        target = os.path.realpath(os.path.join(root, name))
        if not _inside(root, target):
            raise UnsafeMember(name, "would be extracted outside the destination")
        if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            raise UnsafeMember(name, "is a device or FIFO")
        if member.issym():
            if os.path.isabs(member.linkname):
                raise UnsafeMember(name, f"is a symlink to an absolute path {member.linkname!r}")
            where = os.path.realpath(os.path.join(root, os.path.dirname(name), member.linkname))
            if not _inside(root, where):
                raise UnsafeMember(
                    name, f"is a symlink leaving the destination ({member.linkname!r})"
                )
        elif member.islnk():
            if os.path.isabs(member.linkname):
                raise UnsafeMember(name, f"is a hard link to an absolute path {member.linkname!r}")
            if not _inside(root, os.path.realpath(os.path.join(root, member.linkname))):
                raise UnsafeMember(
                    name, f"is a hard link leaving the destination ({member.linkname!r})"
                )
        mode = member.mode
        if member.isreg() or member.islnk():
            mode &= ~(stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH)
            mode |= stat.S_IRUSR | stat.S_IWUSR
        elif member.isdir():
            mode &= ~(stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH)
        member.mode = mode
        member.uid = member.gid = os.getuid()  # never chown to what the archive says
        member.uname = member.gname = ""
        yield member


def extract(tar_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Extract ``tar_path`` into ``dest`` (an existing folder); raise UnsafeMember."""
    with tarfile.open(tar_path) as tar:
        members = _checked(tar, os.fspath(dest))  # refuses what the data filter rewrites
        if hasattr(tarfile, "data_filter"):  # 3.11.4+: the standard filter on top
            try:
                tar.extractall(dest, members=members, filter="data")
            except tarfile.FilterError as exc:
                member = exc.tarinfo.name if exc.tarinfo is not None else "?"
                raise UnsafeMember(member, str(exc)) from None
        else:
            tar.extractall(dest, members=members)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: safetar.py TAR DEST", file=sys.stderr)
        return 2
    try:
        extract(argv[0], argv[1])
    except UnsafeMember as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
