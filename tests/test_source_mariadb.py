"""MariaDB source: a hot mariabackup streamed through an agent is prepared on restore and
starts as a new server with the rows committed before it; a logical dump loads with the
mariadb client; an unreachable server fails the job, naming where it tried."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from agent.sources import mariadb
from agent.sources.command import require
from mosaic import operator
from shared.config.targets import LocalTargetConfig
from shared.errors import SourceError
from shared.natsserver import free_port
from shared.wire.events import BackupCompleted
from shared.wire.sources import MariaDBSource
from tests.fixtures.mariadb import MariaDBServer, start_mariadb
from tests.harness import running_stack

QUIET = Console(quiet=True)
ROWS = 20_000


def _fill(server: MariaDBServer, db: str, rows: int) -> None:
    server.sql(f"CREATE DATABASE {db}")
    server.sql("CREATE TABLE items (id INT PRIMARY KEY, note TEXT) ENGINE=InnoDB", db)
    server.sql(
        f"INSERT INTO items SELECT seq, CONCAT(REPEAT('x', 100), seq) FROM seq_1_to_{rows}", db
    )


def _no_backup_recorded(repo: Path) -> bool:
    manifests = repo / "manifests"
    return not manifests.exists() or not any(manifests.iterdir())


async def test_mariabackup_restores_into_a_server_that_starts(
    nats_url: str, tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    db = f"src_{uuid.uuid4().hex[:8]}"
    _fill(mariadb_server, db, ROWS)
    source = MariaDBSource(socket=str(mariadb_server.socket))
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=120)
        assert isinstance(done, BackupCompleted) and done.summary.bytes_read > ROWS * 100
        mariadb_server.sql("INSERT INTO items VALUES (999999, 'after the backup')", db)
        dest = tmp_path / "restored"
        await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=120)
    data = dest / "mysql-data"
    assert not (dest / "backup.xbstream").exists()
    binlog_file, position, *_ = (data / "xtrabackup_binlog_info").read_text().split()
    assert binlog_file.startswith("mysql-bin.") and int(position) > 0
    restored = start_mariadb(data)
    try:
        assert restored.sql("SELECT COUNT(*) FROM items", db) == str(ROWS)
        assert restored.sql("SELECT COUNT(*) FROM items WHERE id = 999999", db) == "0"
        assert restored.sql("CHECK TABLE items", db).split()[-1] == "OK"
    finally:
        restored.stop()
        shutil.rmtree(restored.base, ignore_errors=True)


async def test_dump_over_tcp_loads_with_the_mariadb_client(
    nats_url: str, tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    db = f"dump_{uuid.uuid4().hex[:8]}"
    _fill(mariadb_server, db, 5_000)
    mariadb_server.sql("CREATE PROCEDURE touch_items() SELECT COUNT(*) FROM items", db)
    source = MariaDBSource(port=mariadb_server.port, mode="dump", databases=[db])
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=120)
        assert isinstance(done, BackupCompleted)
        mariadb_server.sql(f"DROP DATABASE {db}")  # the original is lost
        dest = tmp_path / "restored"
        await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=120)
    mariadb_server.sql("", stdin=dest / "dump.sql")  # the dump recreates the database
    assert mariadb_server.sql("SELECT COUNT(*) FROM items", db) == "5000"
    assert mariadb_server.sql("CALL touch_items()", db) == "5000"  # routines come along


@pytest.mark.parametrize("via", ["socket", "port"])
async def test_unreachable_mariadb_fails_naming_where_it_tried(
    nats_url: str, tmp_path: Path, via: str
) -> None:
    if via == "socket":
        source, where = MariaDBSource(socket="/nonexistent/mysqld.sock"), "/nonexistent/mysqld.sock"
    else:
        port = free_port()
        source, where = MariaDBSource(port=port), f"127.0.0.1:{port}"
    repo = tmp_path / "r"
    async with running_stack(nats_url, tmp_path, LocalTargetConfig(path=str(repo)), source) as st:
        with pytest.raises(operator.OperatorError) as exc:
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
    msg = str(exc.value)
    assert where in msg and "mariabackup" in msg and "connect" in msg
    assert _no_backup_recorded(repo)


def test_failed_backup_leaves_no_scratch_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (stream,) = mariadb.streams(MariaDBSource(socket=str(tmp_path / "no.sock")))
    handle = stream.open()
    assert handle.reader.read() == b""
    with pytest.raises(SourceError, match=r"mariabackup from socket .*no\.sock failed"):
        handle.finish()
    assert list(scratch.iterdir()) == []


def test_corrupt_stream_fails_the_restore_with_mbstream_output(tmp_path: Path) -> None:
    (tmp_path / "backup.xbstream").write_bytes(b"not an xbstream" * 100)
    with pytest.raises(SourceError, match=r"mbstream -x of .* failed"):
        mariadb.after_restore(MariaDBSource(), tmp_path)
    assert (tmp_path / "backup.xbstream").exists()  # kept, to retry by hand


def test_bad_database_name_and_missing_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SourceError, match="invalid database names"):
        mariadb.streams(MariaDBSource(mode="dump", databases=["--all-databases"]))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SourceError, match="install the Debian package 'mariadb-backup'"):
        require("mbstream")
