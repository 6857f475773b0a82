"""MariaDB binary logs: log backups and point-in-time replay (see agent.sources.mariadb).

- **log backups** (``backup_type="incremental"`` of a ``mariabackup`` source):
  ``FLUSH BINARY LOGS`` closes the current binary log, then every closed binlog still on
  the server is stored as ``binlog/<name>``. They are read straight from the server's
  binlog folder (``@@log_bin_basename``, or ``binlog_dir`` where the agent sees it under
  another path, e.g. a container volume), not through ``mariadb-binlog
  --read-from-remote-server``: mariabackup already requires the agent on the database
  host, a closed binlog never changes, so the files stream as they are without a staged
  copy and without REPLICATION SLAVE rights. Shipping all of them each time is cheap:
  identical chunks are deduplicated, and recovery starts at the base's position anyway.
- :func:`recover` (point-in-time restore, called by ``agent.jobs.pitr`` after the base is
  prepared and the log backups' binlogs are gathered in ``DEST/binlogs``): a throwaway
  ``mariadbd`` on the prepared folder (private socket, no networking) replays the
  binlogs from the base's position in ``xtrabackup_binlog_info`` up to the last
  transaction committed before the requested instant (:func:`commit_stop`: a
  ``--stop-position`` at a transaction boundary, not ``--stop-datetime``, whose event
  times are statement start times) with ``mariadb-binlog | mariadb``, then shuts down
  cleanly. The restored folder is handed to the ``mysql`` user and ``DEST/start-server.sh``
  holds the exact command that starts it on a free loopback port. Unlike PostgreSQL
  (``restore_command`` + ``recovery_target_time``), MariaDB has no recovery mode that
  replays binlogs at its next start, so the replay must happen here; the server never
  listens on TCP and is gone when ``recover`` returns.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from agent.sources.command import STDERR_TAIL
from agent.sources.mariadb import (
    DATA_DIR,
    PACKAGES,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    connection_args,
    give_to_server_user,
    server_where,
)
from engine.backup.stream import CompleteStream, Stream
from shared.errors import SourceError
from shared.wire.sources import MariaDBSource

BINLOG_DIR = "binlog"  # log backups store binlogs as binlog/<name>
LOG_DIR = "binlogs"  # agent.jobs.pitr gathers the archived binlogs in DEST/binlogs (flat)
BINLOG_INFO = "xtrabackup_binlog_info"
REPLAYED = "mosaic_binlog_replayed"  # written after a replay, so it never runs twice


# --- log backups: closed binary logs, read from the server's binlog folder -----------


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        package = PACKAGES.get(name)
        hint = f"install the Debian package '{package}'" if package else "install it"
        raise SourceError(f"{name} is not on PATH: {hint}")
    return path


def _tail(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return text[-STDERR_TAIL:].replace("\n", " | ") or "no error output"


def _query(src: MariaDBSource, sql: str) -> list[list[str]]:
    """Rows of ``sql`` (tab-separated batch output) from the source server."""
    argv = [_tool("mariadb"), "--no-defaults", *connection_args(src), "-N", "-B", "-e", sql]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise SourceError(f"mariadb at {server_where(src)}: '{sql}' took over 300 s") from None
    if proc.returncode != 0:
        raise SourceError(
            f"mariadb at {server_where(src)}: '{sql}' failed (exit {proc.returncode}): "
            f"{_tail(proc.stderr)}"
        )
    return [line.split("\t") for line in proc.stdout.decode().splitlines() if line]


def _binlog_file(path: Path) -> CompleteStream:
    """A closed binlog as a stream: nothing can fail after it was opened."""
    try:
        return CompleteStream(path.open("rb"))  # closed by finish/abort
    except FileNotFoundError:
        raise SourceError(
            f"binlog {path} vanished while being archived (purged meanwhile?): run the backup again"
        ) from None
    except OSError as exc:
        raise SourceError(
            f"cannot read binlog {path}: {exc.strerror}; the agent needs read access "
            "to the server's binlog folder"
        ) from exc


class BinlogShipment:
    """A log backup's binlogs (an ``agent.sources.LogShipment``). The binlogs stay on
    the server once stored: purging them is the server's business (``binlog_expire_logs_
    seconds``), and the next log backup ships them again at no cost (deduplicated).
    No archive lag is reported: the backup itself closes the binlog it ships, so what is
    archived is current up to the moment of the backup."""

    def __init__(self, streams: list[Stream]) -> None:
        self.streams = streams
        self.lag_s: float | None = None

    def shipped(self) -> None:
        pass


def ship_binlogs(src: MariaDBSource) -> BinlogShipment:
    """Close the current binlog, then one stream per closed binlog on the server."""
    where = server_where(src)
    ((log_bin, basename),) = _query(src, "SELECT @@log_bin, @@log_bin_basename")
    if log_bin != "1":
        raise SourceError(
            f"mariadb at {where} has binary logging off (log_bin=0): start mariadbd with "
            "--log-bin to archive binlogs for point-in-time restore, or run full backups only"
        )
    names = [row[0] for row in _query(src, "FLUSH BINARY LOGS; SHOW BINARY LOGS")]
    folder = Path(src.binlog_dir) if src.binlog_dir else Path(basename).parent
    if not folder.is_dir():
        raise SourceError(
            f"binlog folder {folder} of mariadb at {where} is not on this host: run the "
            "agent on the database host, or set binlog_dir to where the binlogs are mounted"
        )
    out = []
    for name in names[:-1]:  # the last one is the new, still open binlog
        if "/" in name or name.startswith("."):
            raise SourceError(f"mariadb at {where} lists an unexpected binlog name {name!r}")
        path = folder / name
        out.append(Stream(f"{BINLOG_DIR}/{name}".encode(), partial(_binlog_file, path)))
    return BinlogShipment(out)


# --- point-in-time restore: replay binlogs into the prepared base ----------------------


def _base_position(data: Path) -> tuple[str, int]:
    info = data / BINLOG_INFO
    try:
        fields = info.read_text().split()
    except FileNotFoundError:
        raise SourceError(
            f"{info} is missing: the base backup holds no binlog position (the server ran "
            "without --log-bin); restore the base backup without a point in time"
        ) from None
    if len(fields) < 2 or not fields[1].isdigit():
        raise SourceError(f"{info}: expected '<binlog file> <position> [gtid]', got {fields}")
    return fields[0], int(fields[1])


def _binlogs_from(log_dir: Path, start_file: str) -> list[Path]:
    """The archived binlogs from ``start_file`` on, in order; refuses a gap."""
    folder = log_dir
    stem, _, first = start_file.rpartition(".")
    found: dict[int, Path] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            s, _, n = path.name.rpartition(".")
            if s == stem and n.isdigit():
                found[int(n)] = path
    if int(first) not in found:
        raise SourceError(
            f"binlog {start_file}, where the base backup's position lies, is in no log "
            f"backup (looked in {folder}): it was purged before a log backup ran; restore "
            "the base without a point in time, or use a later base backup"
        )
    numbers = range(int(first), max(found) + 1)
    missing = [f"{stem}.{n:0{len(first)}d}" for n in numbers if n not in found]
    if missing:
        raise SourceError(
            f"binlogs {', '.join(missing)} are missing from the log backups in {folder}: "
            "the chain has a gap, so no point after it can be restored"
        )
    return [found[n] for n in numbers]


def stop_datetime(pitr: datetime) -> str:
    """``--stop-datetime`` for ``mariadb-binlog`` run with TZ=UTC. Binlog timestamps
    have one-second resolution, so an event stamped with the second that contains
    ``pitr`` may be before it: the stop is the next whole second (events stamped
    earlier are replayed), unless ``pitr`` is a whole second itself."""
    at = (pitr if pitr.tzinfo else pitr.replace(tzinfo=UTC)).astimezone(UTC)
    whole = at.replace(microsecond=0)
    if at.microsecond:
        whole += timedelta(seconds=1)
    return whole.strftime("%Y-%m-%d %H:%M:%S")


_HEADER = re.compile(
    rb"^#(\d{6}) +(\d{1,2}):(\d\d):(\d\d) server id \d+ +end_log_pos (\d+) .*?\t(\S+)(.*)$"
)
_EXEC_TIME = re.compile(rb"exec_time=(\d+)")


def _event_headers(path: Path, start: int | None) -> Iterator[tuple[int, datetime, bytes, int]]:
    """(position, timestamp UTC, event type — ``GTID-ddl`` for a DDL's GTID —, seconds
    the statement ran: ``exec_time``, only Query events carry it) of each event of one
    binlog, read with ``mariadb-binlog`` in UTC."""
    argv = [_tool("mariadb-binlog"), "--no-defaults"]
    if start is not None:
        argv.append(f"--start-position={start}")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [*argv, str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "TZ": "UTC"},
        )
        assert proc.stdout is not None
        at = 0
        try:
            for line in proc.stdout:
                if line.startswith(b"# at "):
                    at = int(line[5:].strip() or 0)
                    continue
                m = _HEADER.match(line.rstrip(b"\n"))
                if m is None:
                    continue
                d, hh, mm, ss = (x.decode() for x in m.group(1, 2, 3, 4))
                when = datetime.strptime(f"{d} {hh}:{mm}:{ss}", "%y%m%d %H:%M:%S")
                kind, rest = m.group(6), m.group(7)
                if kind == b"GTID" and rest.rstrip().endswith(b"ddl"):
                    kind = b"GTID-ddl"
                ran = _EXEC_TIME.search(rest) if kind == b"Query" else None
                yield at, when.replace(tzinfo=UTC), kind, int(ran.group(1)) if ran else 0
        finally:
            proc.stdout.close()
            code = proc.wait()
        if code != 0:
            err.seek(0)
            raise SourceError(f"mariadb-binlog of {path} failed (exit {code}): {_tail(err.read())}")


def commit_stop(files: list[Path], position: int, pitr: datetime) -> tuple[list[Path], int | None]:
    """The binlogs to replay and the ``--stop-position`` in the last of them, so that the
    replay holds exactly the transactions committed before ``pitr`` (at one-second
    resolution, as :func:`stop_datetime`).

    A binlog is in commit order, but an event's timestamp is when its *statement*
    started, so a statement that began before ``pitr`` and committed after it looks
    older than it is (``--stop-datetime`` would keep it). A transaction's commit is at or
    after (a) every timestamp in it and in every transaction before it in the binlog,
    (b) its statements' start plus ``exec_time`` (Query events). The replay stops at
    the GTID event of the first transaction whose bound reaches the stop second. An
    explicit ``COMMIT`` is stamped at commit time, so multi-statement transactions are
    exact; a single autocommit row-logged statement carries no commit time at all, and
    is cut exactly only when another transaction stamped after ``pitr`` committed
    before it (a once-a-second heartbeat on the source guarantees that, see
    docs/databases.md)."""
    stop = datetime.strptime(stop_datetime(pitr), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    floor = datetime.min.replace(tzinfo=UTC)
    for i, path in enumerate(files):
        group_at: int | None = None  # where the open transaction's GTID event is
        ddl = False  # a DDL group ends with its one Query event, a transaction at its Xid
        for at, when, kind, ran in _event_headers(path, position if i == 0 else None):
            if kind in (b"GTID", b"GTID-ddl"):
                group_at, ddl = at, kind == b"GTID-ddl"
            bound = max(floor, when + timedelta(seconds=ran))
            if bound >= stop:
                # cut before the transaction this event belongs to (or before the event
                # itself between transactions)
                return files[: i + 1], group_at if group_at is not None else at
            floor = max(floor, when)
            if kind == b"Xid" or (kind == b"Query" and ddl):
                group_at = None
    return files, None


class _ReplayServer:
    """A throwaway mariadbd on the restored data: private socket, no TCP, no grant
    checks until the replay session's first statement re-reads them, no replication
    start, no event scheduler (nothing but the replay may change the data)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.scratch = Path(tempfile.mkdtemp(prefix="mosaic-mdb-replay-", dir="/tmp"))
        self.socket = self.scratch / "mysqld.sock"
        self.log = self.scratch / "error.log"
        argv = [
            _tool("mariadbd"),
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={self.socket}",
            "--skip-networking",
            "--skip-grant-tables",
            "--skip-slave-start",
            "--event-scheduler=DISABLED",
            "--max-allowed-packet=1G",
            f"--pid-file={self.scratch / 'mysqld.pid'}",
            f"--log-error={self.log}",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _log_tail(self) -> str:
        return _tail(self.log.read_bytes()) if self.log.exists() else "no error log"

    def wait_ready(self) -> None:
        ping = [_tool("mariadb"), "--no-defaults", "-S", str(self.socket), "-e", "SELECT 1"]
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SourceError(
                    f"mariadbd on {self.data} exited ({self.proc.returncode}) before "
                    f"accepting connections: {self._log_tail()}"
                )
            if self.socket.exists():
                done = subprocess.run(ping, stdin=subprocess.DEVNULL, capture_output=True)
                if done.returncode == 0:
                    return
            time.sleep(0.2)
        raise SourceError(
            f"mariadbd on {self.data} did not accept connections within "
            f"{START_TIMEOUT_S:.0f}s: {self._log_tail()}"
        )

    def replay(self, files: list[Path], position: int, stop: int | None) -> None:
        dump = [_tool("mariadb-binlog"), "--no-defaults", f"--start-position={position}"]
        if stop is not None:
            dump.append(f"--stop-position={stop}")  # in the last file: before the first txn

        client = [
            _tool("mariadb"),
            "--no-defaults",
            "--protocol=SOCKET",
            f"--socket={self.socket}",
            "--user=root",
            "--binary-mode",
            "--max-allowed-packet=1G",
            "--init-command=FLUSH PRIVILEGES",  # grants work again for replayed GRANTs
        ]
        what = f"replay of {files[0].name}..{files[-1].name} into {self.data}"
        with tempfile.TemporaryFile() as dump_err, tempfile.TemporaryFile() as client_err:
            reader = subprocess.Popen(
                [*dump, *map(str, files)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=dump_err,
                env={**os.environ, "TZ": "UTC"},  # --stop-datetime is read in local time
            )
            assert reader.stdout is not None
            try:
                loader = subprocess.run(
                    client, stdin=reader.stdout, stdout=subprocess.DEVNULL, stderr=client_err
                )
            finally:
                reader.stdout.close()
                try:
                    reader.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    reader.kill()
                    reader.wait()
            for name, code, err in (
                ("mariadb", loader.returncode, client_err),
                ("mariadb-binlog", reader.returncode, dump_err),
            ):
                if code != 0:
                    err.seek(0)
                    raise SourceError(f"{what} failed: {name} exit {code}: {_tail(err.read())}")

    def shutdown(self) -> None:
        """A clean shutdown (SIGTERM): InnoDB flushes, the folder is ready for use."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise SourceError(
                        f"mariadbd on {self.data} did not shut down within "
                        f"{STOP_TIMEOUT_S:.0f}s after the replay: {self._log_tail()}"
                    ) from None
            if self.proc.returncode != 0:
                raise SourceError(
                    f"mariadbd on {self.data} stopped with exit {self.proc.returncode}: "
                    f"{self._log_tail()}"
                )
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


def recover(src: MariaDBSource, destination: Path, log_dir: Path, pitr: datetime | None) -> None:
    """Replay the archived binlogs gathered in ``log_dir`` into the prepared base in
    ``destination/mysql-data``, from the base's binlog position up to ``pitr`` (every
    archived event when None). Afterwards the folder starts with ``mariadbd
    --datadir=DEST/mysql-data`` and holds what was committed before ``pitr``.

    The replay server runs in the agent's time zone: the source server ran on this host
    too (mariabackup needs that), so statements that depend on the session time zone
    replay as they ran. A marker file stops a second replay into the same folder."""
    if src.mode != "mariabackup":
        raise SourceError(
            f"point-in-time restore needs a mariabackup base backup; this source's mode is "
            f"'{src.mode}'"
        )
    for tool in ("mariadbd", "mariadb", "mariadb-binlog"):
        _tool(tool)  # before anything runs
    data = destination / DATA_DIR
    marker = data / REPLAYED
    if marker.exists():
        raise SourceError(
            f"binlogs were already replayed into {data} ({marker.read_text().strip()}); "
            "restore again into a new folder to reach another point in time"
        )
    start_file, position = _base_position(data)
    files = _binlogs_from(log_dir, start_file)
    stop: int | None = None
    if pitr is not None:
        files, stop = commit_stop(files, position, pitr)
    server = _ReplayServer(data)
    try:
        server.wait_ready()
        if stop is None or len(files) > 1 or stop > position:
            server.replay(files, position, stop)
    except BaseException:
        with contextlib.suppress(SourceError):
            server.shutdown()
        raise
    server.shutdown()
    until = f"stopped before {files[-1].name}:{stop}" if stop is not None else "to the end"
    when = f" (committed before {pitr.isoformat()})" if pitr is not None else ""
    marker.write_text(f"{start_file}:{position} .. {files[-1].name} {until}{when}\n")
    give_to_server_user(data)  # the replay ran as root: its new files too
