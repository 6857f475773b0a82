"""MariaDB point-in-time restore: a base backup (mariabackup) plus a log backup (the
binlogs closed since) restore to a chosen instant — a server started on the result holds
the rows committed before it and none after — or to the latest archived state."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from agent.sources import mariadb, mariadb_binlogs
from mosaic import operator
from shared.config.targets import LocalTargetConfig
from shared.errors import SourceError
from shared.wire.events import BackupCompleted, RestoreCompleted
from shared.wire.sources import MariaDBSource
from tests.fixtures.mariadb import MariaDBServer, start_mariadb
from tests.harness import running_stack

QUIET = Console(quiet=True)


def _insert(server: MariaDBServer, db: str, batch: str, first: int, count: int) -> None:
    server.sql(
        f"INSERT INTO items SELECT seq, '{batch}' FROM seq_{first}_to_{first + count - 1}", db
    )


def _batches(data: Path, db: str) -> dict[str, int]:
    """Rows per batch in a server started on a restored data directory."""
    server = start_mariadb(data)
    try:
        assert server.sql("CHECK TABLE items", db).split()[-1] == "OK"
        rows = server.sql("SELECT batch, COUNT(*) FROM items GROUP BY batch", db)
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)
    return {batch: int(n) for batch, n in (line.split("\t") for line in rows.splitlines())}


@pytest.fixture
def agent_not_in_utc() -> Iterator[None]:
    """The agent's local time zone is not UTC: instants must still be read as UTC."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("agent_not_in_utc")
async def test_restore_to_a_point_in_time_replays_binlogs_up_to_it(
    nats_url: str, tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    db = f"pitr_{uuid.uuid4().hex[:8]}"
    mariadb_server.sql(f"CREATE DATABASE {db}")
    mariadb_server.sql("CREATE TABLE items (id INT PRIMARY KEY, batch CHAR(1)) ENGINE=InnoDB", db)
    _insert(mariadb_server, db, "A", 1, 1000)
    source = MariaDBSource(socket=str(mariadb_server.socket))
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        base = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=120)
        assert isinstance(base, BackupCompleted)
        _insert(mariadb_server, db, "B", 1001, 500)
        point = datetime.now(UTC)
        time.sleep(1.2)  # binlog timestamps have 1 s resolution: C is stamped after `point`
        _insert(mariadb_server, db, "C", 1501, 250)
        mariadb_server.sql("DELETE FROM items WHERE id <= 10", db)
        logs = await operator.backup(st.bus, st.dataset, "incremental", QUIET, QUIET, timeout=120)
        assert isinstance(logs, BackupCompleted) and logs.backup_type == "incremental"
        assert logs.summary.files >= 1  # the binlogs closed by the log backup

        at_point = tmp_path / "at-point"
        done = await operator.restore(
            st.bus, logs.backup_id, str(at_point), QUIET, QUIET, timeout=180, pitr=point
        )
        assert isinstance(done, RestoreCompleted)
        latest = tmp_path / "latest"
        await operator.restore(st.bus, logs.backup_id, str(latest), QUIET, QUIET, timeout=180)

    assert _batches(at_point / "mysql-data", db) == {"A": 1000, "B": 500}
    assert _batches(latest / "mysql-data", db) == {"A": 990, "B": 500, "C": 250}
    # a second replay into the same folder would apply every change twice: refused
    with pytest.raises(SourceError, match="already replayed"):
        mariadb_binlogs.recover(source, at_point, at_point / mariadb_binlogs.LOG_DIR, None)


def test_stop_datetime_keeps_every_event_stamped_before_the_point() -> None:
    assert mariadb_binlogs.stop_datetime(datetime(2026, 1, 15, 10, 0, 0, 250_000, UTC)) == (
        "2026-01-15 10:00:01"
    )
    assert mariadb_binlogs.stop_datetime(datetime(2026, 1, 15, 10, 0, 0, tzinfo=UTC)) == (
        "2026-01-15 10:00:00"
    )
    est = datetime.fromisoformat("2026-01-15T05:00:00-05:00")
    assert mariadb_binlogs.stop_datetime(est) == "2026-01-15 10:00:00"


def _restored_base(dest: Path, binlog: str, names: list[str]) -> Path:
    data = dest / "mysql-data"
    data.mkdir(parents=True)
    (data / "xtrabackup_binlog_info").write_text(f"{binlog}\t385\t0-1-7\n")
    logs = dest / mariadb_binlogs.LOG_DIR
    logs.mkdir(parents=True)
    for name in names:
        (logs / name).write_bytes(b"\xfebin")
    return logs


def test_a_gap_or_a_purged_start_in_the_binlogs_is_named(tmp_path: Path) -> None:
    src = MariaDBSource()
    gap = _restored_base(
        tmp_path / "gap", "mysql-bin.000002", ["mysql-bin.000002", "mysql-bin.000004"]
    )
    with pytest.raises(SourceError, match=r"binlogs mysql-bin\.000003 are missing"):
        mariadb_binlogs.recover(src, tmp_path / "gap", gap, None)
    purged = _restored_base(tmp_path / "purged", "mysql-bin.000002", ["mysql-bin.000003"])
    with pytest.raises(SourceError, match=r"binlog mysql-bin\.000002, where the base"):
        mariadb_binlogs.recover(src, tmp_path / "purged", purged, None)
    dump = MariaDBSource(mode="dump")
    with pytest.raises(SourceError, match="needs a mariabackup base backup"):
        mariadb_binlogs.recover(dump, tmp_path / "gap", gap, None)


def test_binlogs_out_of_reach_and_missing_tools_are_named(
    mariadb_server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = MariaDBSource(socket=str(mariadb_server.socket), binlog_dir="/nonexistent/bl")
    with pytest.raises(SourceError, match=r"binlog folder /nonexistent/bl of mariadb at socket"):
        mariadb_binlogs.ship_binlogs(elsewhere)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(
        SourceError, match="mariadb is not on PATH: install the Debian package 'mariadb-client'"
    ):
        mariadb_binlogs.recover(MariaDBSource(), Path("/nonexistent"), Path("/nonexistent"), None)


def _in_background(server: MariaDBServer, sql: str, db: str) -> threading.Thread:
    worker = threading.Thread(target=server.sql, args=(sql, db), daemon=True)
    worker.start()
    return worker


def _next_second() -> None:
    """Wait until the wall clock is just past a whole second (binlog stamps are seconds)."""
    time.sleep(1.05 - datetime.now(UTC).microsecond / 1e6)


async def test_pitr_keeps_what_committed_before_the_point_not_what_merely_started(
    nats_url: str, tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    """Transactions that started before T but committed after it are not in the restore;
    one committed just before T is. The source runs a once-a-second heartbeat event
    (docs/databases.md), which is what makes a single autocommit statement exact too."""
    db = f"exact_{uuid.uuid4().hex[:8]}"
    mariadb_server.sql(f"CREATE DATABASE {db}")
    mariadb_server.sql("CREATE TABLE items (id INT PRIMARY KEY, batch CHAR(1)) ENGINE=InnoDB", db)
    mariadb_server.sql("CREATE TABLE clock (id INT PRIMARY KEY, at DATETIME(6))", db)
    mariadb_server.sql("SET GLOBAL event_scheduler = ON")
    mariadb_server.sql(
        "CREATE EVENT heartbeat ON SCHEDULE EVERY 1 SECOND "
        "DO REPLACE INTO clock VALUES (1, NOW(6))",
        db,
    )
    _insert(mariadb_server, db, "A", 1, 54)
    source = MariaDBSource(socket=str(mariadb_server.socket))
    try:
        async with running_stack(
            nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
        ) as st:
            base = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=120)
            assert isinstance(base, BackupCompleted)
            _next_second()
            # an explicit transaction and an autocommit statement that start before T
            # and commit about 3 s later
            explicit = _in_background(
                mariadb_server,
                "BEGIN; INSERT INTO items VALUES (900, 'S'); DO SLEEP(3.5); COMMIT",
                db,
            )
            autocommit = _in_background(
                mariadb_server, "INSERT INTO items SELECT 777, 'S' FROM (SELECT SLEEP(3.5)) x", db
            )
            time.sleep(0.3)
            _insert(mariadb_server, db, "K", 100, 3)  # committed just before T: kept
            point = datetime.now(UTC)
            explicit.join()
            autocommit.join()
            _insert(mariadb_server, db, "L", 200, 2)  # after T
            logs = await operator.backup(
                st.bus, st.dataset, "incremental", QUIET, QUIET, timeout=120
            )
            assert isinstance(logs, BackupCompleted) and logs.backup_type == "incremental"
            # mysql must reach the restored folder: pytest's tmp_path is root-only
            top = Path(tempfile.mkdtemp(prefix="mosaic-mdbr-"))
            os.chmod(top, 0o755)
            dest = top / "at-point"
            await operator.restore(
                st.bus, logs.backup_id, str(dest), QUIET, QUIET, timeout=180, pitr=point
            )
    finally:
        mariadb_server.sql("DROP EVENT IF EXISTS heartbeat", db)
        mariadb_server.sql("SET GLOBAL event_scheduler = OFF")

    data = dest / "mysql-data"
    mysql = pwd.getpwnam("mysql")
    assert {(p.stat().st_uid, p.stat().st_gid) for p in [data, *data.rglob("*")]} == {
        (mysql.pw_uid, mysql.pw_gid)
    }
    try:
        assert _started_by_the_printed_command(dest, db) == {"A": "54", "K": "3"}
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _started_by_the_printed_command(dest: Path, db: str) -> dict[str, str]:
    """Run DEST/start-server.sh, check the server runs as mysql, count rows, stop it."""
    data = dest / "mysql-data"
    # the printed command starts the restored server as mysql, beside the original
    script = dest / mariadb.START_FILE
    command = script.read_text().splitlines()[-1].removeprefix("exec ")
    assert f"--datadir={data}" in command and "--user=mysql" in command
    proc = subprocess.Popen(
        ["sh", str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    sock = next(a for a in command.split() if a.startswith("--socket=")).split("=", 1)[1]
    ping = ["mariadb", "--no-defaults", "-S", sock, "-u", "root", "-N", "-B"]
    try:
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run(
                [*ping, db, "-e", "SELECT batch, COUNT(*) FROM items GROUP BY batch"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0 or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert out.returncode == 0, out.stderr
        rows = dict(line.split("\t") for line in out.stdout.splitlines())
        user = subprocess.run(
            ["ps", "-o", "user=", "-p", str(proc.pid)], capture_output=True, text=True
        )
        assert user.stdout.strip() == "mysql"
    finally:
        proc.terminate()
        proc.wait(120)
    return rows
