"""PostgreSQL's ``archive_command``: copy one finished WAL file into the agent's spool.

::

    archive_command = 'mosaic-backup wal-archive --spool /var/lib/mosaic-backup/wal-spool %p %f'

PostgreSQL runs it (as the ``postgres`` user) for every finished segment, ``.history``
and ``.backup`` file, and deletes or recycles the segment only after it exits 0; any
other exit makes it retry the same file later. So this command:

- copies atomically: a hidden temporary file in the spool, fsync, hard-link to the final
  name (which never replaces an existing file), fsync of the folder; a crash leaves at
  most a stray ``.tmp`` file, never a half-written segment under a real name;
- is idempotent: the same name with the same content already there exits 0 (PostgreSQL
  may archive a file again after a crash); the same name with other content exits 1
  and says so, because overwriting could destroy the only good copy;
- exits non-zero, with one line on stderr, on any error.

The agent ships the spooled files into the repository with each incremental (log)
backup and removes them only after that backup's manifest is stored.

It uses only the standard library and is runnable as a script
(``python3 agent/walarchive.py --spool DIR %p %f``): it starts fast, and works with any
Python 3.11 the ``postgres`` user may execute, even when the agent's virtual environment
is private to another user.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

PROG = "mosaic-backup wal-archive"
BUF = 1 << 20


class ArchiveError(Exception):
    """One line for PostgreSQL's log: what failed, where, and how to fix it."""


def _same_content(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(BUF), fb.read(BUF)
            if x != y:
                return False
            if not x:
                return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def archive(spool: Path, wal_path: Path, name: str) -> bool:
    """Copy ``wal_path`` into ``spool/name``; False if an identical copy was already there."""
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise ArchiveError(f"WAL file name {name!r} is not a plain file name (pass %f)")
    if not spool.is_dir():
        raise ArchiveError(f"spool folder {spool} does not exist; create it, owned by postgres")
    final = spool / name
    if final.exists():
        if _same_content(wal_path, final):
            return False
        raise ArchiveError(
            f"{final} already exists with different content; refusing to overwrite it "
            "(is another cluster archiving into the same spool?)"
        )
    tmp = spool / f".{name}.{os.getpid()}.tmp"
    try:
        with wal_path.open("rb") as src, tmp.open("xb") as dst:
            while block := src.read(BUF):
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(tmp, 0o640)
        try:
            os.link(tmp, final)  # never replaces: a concurrent copy wins, then compare
        except FileExistsError:
            if not _same_content(tmp, final):
                raise ArchiveError(
                    f"{final} appeared with different content while archiving"
                ) from None
        _fsync_dir(spool)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="archive_command for PostgreSQL: copy a WAL file into the agent's spool",
    )
    parser.add_argument("--spool", required=True, help="the source's wal_spool folder")
    parser.add_argument("wal_path", metavar="PATH", help="%%p: the file to archive")
    parser.add_argument("wal_name", metavar="NAME", help="%%f: its file name")
    args = parser.parse_args(argv)
    try:
        archive(Path(args.spool), Path(args.wal_path), args.wal_name)
    except ArchiveError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = exc.filename or args.spool
        extra = ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            try:
                st = os.statvfs(args.spool)
                extra = (
                    f" ({st.f_bavail * st.f_frsize:,} bytes free in the spool; PostgreSQL "
                    "retries this file, so free space there or move wal_spool)"
                )
            except OSError:
                pass
        print(f"{PROG}: error: {where}: {exc.strerror or exc}{extra}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
