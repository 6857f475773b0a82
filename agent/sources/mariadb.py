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
- log backups and point-in-time replay: :mod:`agent.sources.mariadb_binlogs`.

Every tool runs with ``--no-defaults``: an option file on the host must not redirect the
backup to another server or data directory. Passwords come from MYSQL_PWD in the agent's
environment. A host given with a port connects over TCP explicitly, because the client
would otherwise treat ``localhost`` as "use the default socket" and back up another server.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from agent.sources.command import STDERR_TAIL, CommandStream, require
from engine.backup.stream import Stream, StreamHandle
from shared.errors import SourceError
from shared.wire.sources import MariaDBSource

XBSTREAM = b"backup.xbstream"
DUMP = b"dump.sql"
DATA_DIR = "mysql-data"
PACKAGES = {
    "mariadb": "mariadb-client",
    "mariadb-binlog": "mariadb-client",
    "mariadbd": "mariadb-server",
}
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 300.0

log = logging.getLogger(__name__)


def server_where(src: MariaDBSource) -> str:
    return f"socket {src.socket}" if src.socket else f"{src.host}:{src.port}"


def connection_args(src: MariaDBSource) -> list[str]:
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
    conn = connection_args(src)
    where = server_where(src)
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
    give_to_server_user(data)
    write_start_command(destination)


SERVER_USER = "mysql"
START_FILE = "start-server.sh"  # in DEST: the command that starts the restored server


def give_to_server_user(data: Path) -> None:
    """Hand the restored folder to the server's user, as PostgreSQL's restore does:
    ``mariadbd --user=mysql`` cannot open a root-owned data directory. Only root can
    (and needs to); without a ``mysql`` user on this host the folder stays as it is."""
    if os.geteuid() != 0:
        return
    try:
        pw = pwd.getpwnam(SERVER_USER)
    except KeyError:
        return
    os.chown(data, pw.pw_uid, pw.pw_gid)
    for dirpath, dirnames, filenames in os.walk(data):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def start_command(destination: Path, port: int) -> list[str]:
    """mariadbd on the restored folder: its own socket, pid file and error log inside
    it, a loopback port, no binlog and no replication start, so it never touches the
    original server's files."""
    data = destination / DATA_DIR
    user = SERVER_USER if os.geteuid() == 0 and _has_user(SERVER_USER) else None
    sock = restored_socket(destination, port)
    argv = [
        shutil.which("mariadbd", path=f"{os.environ.get('PATH', '')}:/usr/sbin") or "mariadbd",
        "--no-defaults",
        f"--datadir={data}",
        f"--socket={sock}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        "--skip-slave-start",
        f"--pid-file={data / 'restored.pid'}",
        f"--log-error={data / 'restored-error.log'}",
    ]
    if user:
        argv.append(f"--user={user}")
    return argv


def restored_socket(destination: Path, port: int) -> Path:
    """Inside the restored folder, unless that path is too long for a unix socket."""
    inside = destination / DATA_DIR / "restored.sock"
    return inside if len(os.fsencode(inside)) < 100 else Path(f"/tmp/mosaic-restored-{port}.sock")


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_start_command(destination: Path) -> str:
    """Write ``DEST/start-server.sh`` (and log) the exact command that starts the
    restored server on a port free now."""
    port = _free_port()
    argv = start_command(destination, port)
    command = shlex.join(argv)
    sock = restored_socket(destination, port)
    path = destination / START_FILE
    path.write_text(
        f"#!/bin/sh\n# start the restored server (then connect: mariadb -S {sock})\n"
        f"exec {command}\n"
    )
    path.chmod(0o755)
    log.info("restored into %s; start it with: %s", destination, command)
    return command
