"""PostgreSQL: hot physical base backups and logical dumps, streamed, never staged.

- ``basebackup``: ``pg_basebackup -Ft -Xf -c fast -D -`` writes ONE tar of the whole
  cluster to stdout, with the WAL needed to make it consistent fetched at the end (``-Xs``
  cannot stream to stdout; ``-c fast`` avoids waiting for a spread checkpoint). It is
  stored as ``base.tar``; restore extracts it into ``DEST/pgdata``, ready for
  ``pg_ctl -D DEST/pgdata start``.
- ``dump``: ``pg_dump -Fc`` of one database, stored as ``<database>.dump`` for
  ``pg_restore``.
Point-in-time recovery (continuous WAL archiving) is a later step of issue 4.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from agent.sources.base import Stream, StreamHandle
from agent.sources.command import CommandStream
from shared.errors import SourceError
from shared.messages import PostgresSource

BASE_TAR = b"base.tar"
DATA_DIR = "pgdata"


def streams(src: PostgresSource) -> list[Stream]:
    conn = ["-h", src.host, "-p", str(src.port), "-U", src.user, "--no-password"]
    where = f"{src.host}:{src.port}"
    if src.mode == "basebackup":

        def open_base() -> StreamHandle:
            argv = ["pg_basebackup", *conn, "-Ft", "-Xf", "-c", "fast", "-D", "-"]
            return CommandStream(argv, f"pg_basebackup from {where}")

        return [Stream(BASE_TAR, open_base)]
    if not src.database:
        raise SourceError("postgres source in dump mode needs 'database'")
    database = src.database

    def open_dump() -> StreamHandle:
        argv = ["pg_dump", *conn, "-Fc", "-d", database]
        return CommandStream(argv, f"pg_dump of {database} from {where}")

    return [Stream(f"{database}.dump".encode(), open_dump)]


def after_restore(src: PostgresSource, destination: Path) -> None:
    """Turn a restored ``base.tar`` into a data directory (safe extraction only)."""
    if src.mode != "basebackup":
        return
    tar_path = destination / os.fsdecode(BASE_TAR)
    data = destination / DATA_DIR
    data.mkdir(mode=0o700)
    with tarfile.open(tar_path) as tar:
        tar.extractall(data, filter="data")  # refuses absolute paths, '..' and odd links
    os.chmod(data, 0o700)
    tar_path.unlink()
