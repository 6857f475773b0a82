"""MariaDB: hot physical backups and logical dumps, streamed, never staged.

- ``mariabackup``: ``mariabackup --backup --stream=xbstream`` copies the InnoDB files
  while the server runs and writes ONE xbstream to stdout, stored as ``backup.xbstream``.
  It insists on a ``--target-dir`` even when streaming (for its own bookkeeping), so each
  run gets a private temporary folder, removed whether the run succeeds or not. Restore
  unpacks the stream into ``DEST/mysql-data`` (``mbstream -x``) and prepares it
  (``mariabackup --prepare``: applies the redo log copied alongside), ready for
  ``mariadbd --datadir=DEST/mysql-data``. ``xtrabackup_binlog_info`` is kept in that
  folder: it holds the binlog file, position and GTID the backup is consistent with,
  the starting point for replaying archived binlogs (point-in-time restore, later).
- ``dump``: ``mariadb-dump --single-transaction`` (a consistent InnoDB snapshot without
  locking writers) with routines and events, of ``databases`` or all of them, stored as
  ``dump.sql`` for ``mariadb < dump.sql``.

Every tool runs with ``--no-defaults``: an option file on the host must not redirect the
backup to another server or data directory. Passwords come from MYSQL_PWD in the agent's
environment. A host given with a port connects over TCP explicitly, because the client
would otherwise treat ``localhost`` as "use the default socket" and back up another server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from agent.sources.base import Stream, StreamHandle
from agent.sources.command import STDERR_TAIL, CommandStream, require
from shared.errors import SourceError
from shared.messages import MariaDBSource

XBSTREAM = b"backup.xbstream"
DUMP = b"dump.sql"
DATA_DIR = "mysql-data"


def _where(src: MariaDBSource) -> str:
    return f"socket {src.socket}" if src.socket else f"{src.host}:{src.port}"


def _connection(src: MariaDBSource) -> list[str]:
    if src.socket:
        conn = ["--protocol=SOCKET", f"--socket={src.socket}"]
    else:
        conn = ["--protocol=TCP", f"--host={src.host}", f"--port={src.port}"]
    return [*conn, f"--user={src.user}"]


class _MariabackupStream(CommandStream):
    """A CommandStream that owns the scratch ``--target-dir`` mariabackup demands."""

    def __init__(self, argv: Sequence[str], what: str) -> None:
        self._scratch = tempfile.mkdtemp(prefix="mosaic-mariabackup-")
        try:
            super().__init__([*argv, f"--target-dir={self._scratch}"], what)
        except BaseException:
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def abort(self) -> None:
        try:
            super().abort()
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)


def streams(src: MariaDBSource) -> list[Stream]:
    conn = _connection(src)
    where = _where(src)
    if src.mode == "mariabackup":

        def open_backup() -> StreamHandle:
            argv = ["mariabackup", "--no-defaults", "--backup", "--stream=xbstream", *conn]
            return _MariabackupStream(argv, f"mariabackup from {where}")

        return [Stream(XBSTREAM, open_backup)]
    bad = [name for name in src.databases if not name or name.startswith("-")]
    if bad:
        raise SourceError(f"mariadb source: invalid database names {bad}")
    which = ["--databases", *src.databases] if src.databases else ["--all-databases"]
    what = f"mariadb-dump of {', '.join(src.databases) or 'all databases'} from {where}"

    def open_dump() -> StreamHandle:
        argv = [
            "mariadb-dump",
            "--no-defaults",
            "--single-transaction",
            "--routines",
            "--events",
            "--hex-blob",
            *conn,
            *which,
        ]
        return CommandStream(argv, what)

    return [Stream(DUMP, open_dump)]


def _run(argv: list[str], what: str, stdin: Path | None = None) -> None:
    """Run a restore step; a failure raises with the tail of its error output."""
    exe = require(argv[0])
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as source:
        proc = subprocess.run(
            [exe, *argv[1:]], stdin=source, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    if proc.returncode != 0:
        text = proc.stdout.decode(errors="replace").strip()
        tail = text[-STDERR_TAIL:].replace("\n", " | ") or "no error output"
        raise SourceError(f"{what} failed (exit {proc.returncode}): {tail}")


def after_restore(src: MariaDBSource, destination: Path) -> None:
    """Turn a restored ``backup.xbstream`` into a prepared data directory. On failure
    the xbstream file stays, so the steps can be retried by hand."""
    if src.mode != "mariabackup":
        return
    stream = destination / os.fsdecode(XBSTREAM)
    data = destination / DATA_DIR
    data.mkdir(mode=0o700)
    _run(["mbstream", "-x", "-C", str(data)], f"mbstream -x of {stream}", stdin=stream)
    prepare = ["mariabackup", "--no-defaults", "--prepare", f"--target-dir={data}"]
    _run(prepare, f"mariabackup --prepare of {data}")
    stream.unlink()
