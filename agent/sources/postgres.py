"""PostgreSQL: hot physical base backups, WAL archiving and logical dumps, streamed.

- ``basebackup``: ``pg_basebackup -Ft -Xf -c fast -D -`` writes ONE tar of the whole
  cluster to stdout, with the WAL needed to make it consistent fetched at the end (``-Xs``
  cannot stream to stdout; ``-c fast`` avoids waiting for a spread checkpoint). It is
  stored as ``base.tar``; restore extracts it into ``DEST/pgdata``, ready for
  ``pg_ctl -D DEST/pgdata start``.
- **log backups** (``wal_spool`` set, ``backup_type="incremental"``): PostgreSQL's
  ``archive_command`` (``mosaic-backup wal-archive``, :mod:`agent.walarchive`) copies
  every finished WAL file into the spool folder. A log backup commits a tiny marker
  transaction (so every instant up to now has a commit record after it for recovery to
  stop at), switches to a new segment, waits until the archiver has that segment, and
  stores every spooled file as ``wal/<name>``. The spooled files are deleted only after
  the manifest is stored (``.history`` files are kept: they are tiny and every restore
  of a later timeline needs them).
- :func:`recover` turns a restored base plus the WAL of the log backups into a data
  directory that replays to the latest state or to a point in time when started.
- ``dump``: ``pg_dump -Fc`` of one database, stored as ``<database>.dump`` for
  ``pg_restore``.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import shutil
import socket
import tarfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import psycopg

from agent import safetar
from agent.sources.command import CommandStream
from engine.backup.stream import CompleteStream, Stream, StreamHandle, bytes_stream
from shared.errors import SourceError
from shared.wire.sources import PostgresSource

BASE_TAR = b"base.tar"
DATA_DIR = "pgdata"
LOG_DIR = "wal-archive"  # restore: where the log backups' WAL files are gathered
WAL_PREFIX = "wal/"
WAL_REACH = "mosaic-wal-reach"  # a log backup's own file: the instant its WAL reaches
SHIPPED_MARK = ".mosaic-shipped"  # in the spool: the newest segment a log backup stored
FAILED_BASE = ".mosaic-base-failed"  # in the spool: a base backup failed at this time

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port free on loopback now (the restored server's suggested port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def streams(src: PostgresSource) -> list[Stream]:
    conn = ["-h", src.host, "-p", str(src.port), "-U", src.user, "--no-password"]
    where = f"{src.host}:{src.port}"
    if src.mode == "basebackup":

        def open_base() -> StreamHandle:
            argv = ["pg_basebackup", *conn, "-Ft", "-Xf", "-c", "fast", "-D", "-"]
            return _BaseStream(argv, f"pg_basebackup from {where}", src.wal_spool)

        return [Stream(BASE_TAR, open_base)]
    if not src.database:
        raise SourceError("postgres source in dump mode needs 'database'")
    database = src.database

    def open_dump() -> StreamHandle:
        argv = ["pg_dump", *conn, "-Fc", "-d", database]
        return CommandStream(argv, f"pg_dump of {database} from {where}")

    return [Stream(f"{database}.dump".encode(), open_dump)]


class _BaseStream(CommandStream):
    """pg_basebackup's tar; with a WAL spool it records in the spool whether the base
    succeeded. A log backup trims the spool at the newest base (:func:`_base_start`)
    only while no base failed since: a failed base must not cut WAL that the older
    base, which the next log backup then extends, still needs."""

    def __init__(self, argv: list[str], what: str, spool: str | None) -> None:
        super().__init__(argv, what)
        self._spool = Path(spool) if spool else None

    def finish(self) -> None:
        try:
            super().finish()
        except BaseException:
            self._mark(failed=True)
            raise
        self._mark(failed=False)

    def abort(self) -> None:
        try:
            super().abort()
        finally:
            self._mark(failed=True)

    def _mark(self, *, failed: bool) -> None:
        if self._spool is None or not self._spool.is_dir():
            return
        mark = self._spool / FAILED_BASE
        try:
            if failed:
                mark.write_text(f"{time.time():.0f}\n")
            else:
                mark.unlink(missing_ok=True)
        except OSError as exc:  # the spool is the archiver's: report, never hide the result
            log.warning("cannot update %s: %s", mark, exc.strerror)


def after_restore(src: PostgresSource, destination: Path) -> None:
    """Turn a restored ``base.tar`` into a data directory (safe extraction only)."""
    if src.mode != "basebackup":
        return
    tar_path = destination / os.fsdecode(BASE_TAR)
    data = destination / DATA_DIR
    data.mkdir(mode=0o700)
    with tarfile.open(tar_path) as tar:
        owner = _tar_owner(tar)
    try:
        safetar.extract(tar_path, data)  # refuses absolute paths, '..', odd links, devices
    except safetar.UnsafeMember as exc:
        raise SourceError(
            f"refusing to extract {tar_path} (the restored PostgreSQL base backup): {exc}; "
            "nothing was started, remove the folder or inspect the tar by hand"
        ) from None
    os.chmod(data, 0o700)
    tar_path.unlink()
    give_to(data, owner)
    write_start_command(destination, owner)


START_FILE = "start-server.sh"  # in DEST: the command that starts the restored server


def write_start_command(destination: Path, owner: tuple[int, int] | None) -> str:
    """Write (and log) the exact command that starts the restored cluster on a free
    loopback port with its own socket folder, so it never meets the original server."""
    data = destination / DATA_DIR
    version = (data / "PG_VERSION").read_text().strip() if (data / "PG_VERSION").exists() else ""
    pg_ctl = Path(f"/usr/lib/postgresql/{version}/bin/pg_ctl")
    exe = str(pg_ctl) if pg_ctl.exists() else (shutil.which("pg_ctl") or "pg_ctl")
    port = free_port()
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    argv = [
        exe,
        "-D",
        str(data),
        "-l",
        str(data / "restored-server.log"),
        "-o",
        opts,
        "-w",
        "start",
    ]
    command = shlex.join(argv)
    if owner is not None and os.geteuid() == 0:
        user = _user_name(owner[0])
        command = shlex.join(["runuser", "-u", user, "--", *argv])
    _announce(destination, command, f"psql -h {data} -p {port} -U postgres")
    return command


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _announce(destination: Path, command: str, connect: str) -> None:
    text = f"#!/bin/sh\n# start the restored server (then connect: {connect})\nexec {command}\n"
    path = destination / START_FILE
    path.write_text(text)
    path.chmod(0o755)
    log.info("restored into %s; start it with: %s", destination, command)


def _tar_owner(tar: tarfile.TarFile) -> tuple[int, int] | None:
    """The (uid, gid) that owned the cluster, by name on this host when it is known
    here (uids differ between hosts), else as recorded."""
    first = tar.next()
    if first is None:
        return None
    try:
        pw = pwd.getpwnam(first.uname) if first.uname else None
    except KeyError:
        pw = None
    return (pw.pw_uid, pw.pw_gid) if pw else (first.uid, first.gid)


def give_to(top: Path, owner: tuple[int, int] | None) -> None:
    """Hand a restored tree to the server's user: PostgreSQL refuses a data directory it
    does not own. Only root can (and needs to); others restore as themselves."""
    if owner is None or os.geteuid() != 0:
        return
    uid, gid = owner
    os.chown(top, uid, gid)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


# --- log backups: the spooled WAL ----------------------------------------------------


def archives_logs(src: PostgresSource) -> bool:
    return src.mode == "basebackup" and src.wal_spool is not None


def _spool_file(path: Path) -> CompleteStream:
    """A spooled WAL file as a stream (complete by construction: archived atomically)."""
    try:
        return CompleteStream(path.open("rb"))
    except OSError as exc:
        raise SourceError(f"cannot read spooled WAL file {path}: {exc.strerror}") from exc


class WalShipment:
    """The spooled files one log backup stores; :meth:`shipped` removes them from the
    spool once the backup's manifest is stored."""

    def __init__(
        self,
        spool: Path,
        names: list[str],
        lag_s: float | None,
        reach: datetime,
        before_base: list[str] | None = None,
    ) -> None:
        self.spool = spool
        self.names = names
        self.before_base = before_base or []  # covered by the base: dropped, not stored
        self.lag_s = lag_s  # age of the oldest segment shipped: how far the repository trails
        self.streams = [
            Stream(f"{WAL_PREFIX}{n}".encode(), partial(_spool_file, spool / n)) for n in names
        ]
        # the latest instant this WAL can recover to (just before the marker commit)
        end = reach.astimezone(UTC).isoformat().encode()
        self.streams.append(Stream(f"{WAL_PREFIX}{WAL_REACH}".encode(), partial(bytes_stream, end)))

    def shipped(self) -> None:
        segments = [n for n in self.names if _is_segment(n) and not n.endswith(".history")]
        if segments:  # written first: a segment gone from the spool was shipped, not lost
            mark = self.spool / SHIPPED_MARK
            tmp = mark.with_name(f"{SHIPPED_MARK}.tmp")
            tmp.write_text(max([*segments, _last_shipped(self.spool)])[:24])
            os.replace(tmp, mark)
        for name in [*self.names, *self.before_base]:
            if not name.endswith(".history"):
                (self.spool / name).unlink(missing_ok=True)
        fd = os.open(self.spool, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_segment(name: str) -> bool:
    head = name[:24]
    return len(head) == 24 and all(c in "0123456789ABCDEF" for c in head)


def _last_shipped(spool: Path) -> str:
    """The newest segment an earlier log backup stored from ``spool`` ("" if none)."""
    try:
        return (spool / SHIPPED_MARK).read_text().strip()[:24]
    except FileNotFoundError:
        return ""


def _connect(src: PostgresSource) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(
            host=src.host,
            port=src.port,
            user=src.user,
            dbname="postgres",
            connect_timeout=10,
            autocommit=True,
        )
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"cannot connect to PostgreSQL at {src.host}:{src.port} as {src.user}: {reason}"
        ) from exc


def ship_wal(src: PostgresSource) -> WalShipment:
    """Close the current WAL segment, wait until it is archived, list the spool."""
    assert src.wal_spool is not None
    wait_s = src.archive_wait_s
    where = f"{src.host}:{src.port}"
    spool = Path(src.wal_spool)
    hint = f"archive_command = 'mosaic-backup wal-archive --spool {spool} %p %f'"
    if not spool.is_dir():
        raise SourceError(
            f"postgres {where}: wal_spool {spool} does not exist; create it (writable by the "
            f"postgres user) and set {hint}"
        )
    with _connect(src) as conn:
        try:
            mode = conn.execute("SHOW archive_mode").fetchone()
            if mode is None or mode[0] == "off":
                raise SourceError(
                    f"postgres {where}: archive_mode is off; set archive_mode = on and {hint}, "
                    "then restart PostgreSQL"
                )
            # the marker commit; recovery can stop at any instant before its commit time
            marker = conn.execute("SELECT pg_current_xact_id(), clock_timestamp()").fetchone()
            assert marker is not None and isinstance(marker[1], datetime)
            reach = marker[1]
            row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
            assert row is not None
            segment = str(row[0])
            deadline = time.monotonic() + wait_s
            while not (spool / segment).exists():
                stats = conn.execute(
                    "SELECT last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver"
                ).fetchone()
                assert stats is not None
                last = str(stats[0] or "")
                if _is_segment(last) and last[:24] >= segment:
                    if _last_shipped(spool) >= segment:
                        break  # archived and already shipped by an earlier run
                    raise SourceError(
                        f"postgres {where}: pg_stat_archiver reports {segment} archived, but "
                        f"it is not in wal_spool {spool} and no log backup stored it from "
                        f"there: archive_command must copy into that folder ({hint})"
                    )
                if time.monotonic() > deadline:
                    raise SourceError(
                        f"postgres {where}: WAL segment {segment} was not archived into "
                        f"{spool} within {wait_s:g} s (pg_stat_archiver: failed_count="
                        f"{stats[1]}, last_failed_wal={stats[2] or 'none'}); check that "
                        f"{hint} works (see the PostgreSQL log)"
                    )
                time.sleep(0.1)
        except psycopg.Error as exc:
            raise SourceError(
                f"postgres {where}: cannot switch the WAL segment: {exc}".strip()
            ) from exc
    names = sorted(e.name for e in os.scandir(spool) if not e.name.startswith(".") and e.is_file())
    start = _base_start(spool, names)
    old = [n for n in names if start and _is_wal_segment(n) and n[8:24] < start[8:24]]
    names = [n for n in names if n not in set(old)]
    now = time.time()
    ages = [now - (spool / n).stat().st_mtime for n in names if _is_wal_segment(n)]
    return WalShipment(spool, names, max(ages) if ages else None, reach, old)


def _is_wal_segment(name: str) -> bool:
    return len(name) == 24 and _is_segment(name)


def _base_start(spool: Path, names: list[str]) -> str:
    """The WAL segment where the newest base backup in the spool starts ("" if none, or
    if a base failed since the last good one). PostgreSQL archives a backup history
    file ``<start segment>.<offset>.backup`` when a base backup ends; segments wholly
    before that start are not needed by that base, so they are neither stored nor kept."""
    if (spool / FAILED_BASE).exists():
        return ""
    starts = [n[:24] for n in names if n.endswith(".backup") and _is_segment(n)]
    return max(starts, key=lambda n: n[8:24], default="")


# --- restore: base + WAL → a data directory that recovers --------------------------


def _conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def recover(src: PostgresSource, destination: Path, log_dir: Path, pitr: datetime | None) -> None:
    """Make ``destination/pgdata`` replay the WAL in ``log_dir`` when it starts: up to
    ``pitr`` (then promote), or to the end of the archived WAL when ``pitr`` is None.

    Archiving is switched off in the restored copy (``archive_mode = 'off'`` in
    postgresql.auto.conf): it would otherwise write its new timeline into the original
    server's spool. Turn it back on once the copy is to replace the original.
    """
    data = destination / DATA_DIR
    if not (data / "PG_VERSION").is_file():
        raise SourceError(f"{data} is not a PostgreSQL data directory; nothing to recover")
    reach_file = log_dir / WAL_REACH  # the newest log backup's, gathered last
    if pitr is not None and reach_file.exists():
        reach = datetime.fromisoformat(reach_file.read_text().strip())
        if pitr > reach:
            # PostgreSQL would refuse to start ("recovery ended before configured
            # recovery target was reached"): say so now, in one line
            raise SourceError(
                f"cannot recover to {pitr.isoformat()}: the archived WAL reaches "
                f"{reach.isoformat()}; pick an earlier time or run an incremental backup first"
            )
    (data / "recovery.signal").write_bytes(b"")
    # the server's own user runs restore_command: it must read the gathered WAL
    st = data.stat()
    give_to(log_dir, (st.st_uid, st.st_gid))
    give_to(data / "recovery.signal", (st.st_uid, st.st_gid))
    lines = [
        "",
        "# mosaic-backup restore: replay the archived WAL, then open for writes",
        f"restore_command = {_conf(f'cp {shlex.quote(str(log_dir))}/%f %p')}",
        "recovery_target_action = 'promote'",
        "archive_mode = 'off'  # a restored copy must not archive into the original's spool",
    ]
    if pitr is not None:
        lines.append(f"recovery_target_time = {_conf(pitr.astimezone(UTC).isoformat())}")
    with (data / "postgresql.auto.conf").open("a") as conf:
        conf.write("\n".join(lines) + "\n")
