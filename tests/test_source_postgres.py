"""PostgreSQL source: a hot base backup streamed through an agent starts as a new server
with the rows committed before it; a logical dump restores with pg_restore."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from mosaic import operator
from shared.config.targets import LocalTargetConfig
from shared.natsserver import free_port
from shared.wire.events import BackupCompleted
from shared.wire.sources import PostgresSource
from tests.fixtures.postgres import PG_BIN, PostgresServer, _as_postgres
from tests.harness import running_stack

QUIET = Console(quiet=True)


def _fill(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int primary key, note text)")
        conn.execute(
            "INSERT INTO items SELECT g, repeat('x', 100) || g FROM generate_series(1, %s) g",
            (rows,),
        )


async def test_base_backup_restores_into_a_server_that_starts(
    nats_url: str, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    db = f"src_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(db)
    _fill(postgres_server.url(db), 20_000)
    source = PostgresSource(port=postgres_server.port, mode="basebackup")
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=120)
        assert isinstance(done, BackupCompleted) and done.summary.bytes_read > 20_000 * 100
        with psycopg.connect(postgres_server.url(db), autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (999999, 'after the backup')")
        # postgres must reach the data directory: pytest's tmp_path is private to root
        base = Path(tempfile.mkdtemp(prefix="mosaic-pgrestore-"))
        shutil.chown(base, "postgres", "postgres")
        dest = base / "restored"
        await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=120)
    data = dest / "pgdata"
    assert (data / "PG_VERSION").read_text().strip() == "15"
    port = free_port()
    sock = base / "sock"
    sock.mkdir()
    log = base / "restored.log"
    log.touch()
    subprocess.run(["chown", "-R", "postgres:postgres", str(base)], check=True)
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    subprocess.run(_as_postgres([*ctl, "-o", opts, "start"]), check=True, capture_output=True)
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/{db}"
        with psycopg.connect(url) as conn:
            count = conn.execute("SELECT count(*) FROM items").fetchone()
            late = conn.execute("SELECT count(*) FROM items WHERE id = 999999").fetchone()
        assert count == (20_000,) and late == (0,)
    finally:
        subprocess.run(_as_postgres([*ctl, "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


async def test_logical_dump_restores_with_pg_restore(
    nats_url: str, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    db = f"dump_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(db)
    _fill(postgres_server.url(db), 5_000)
    source = PostgresSource(port=postgres_server.port, mode="dump", database=db)
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=120)
        assert isinstance(done, BackupCompleted)
        dest = tmp_path / "restored"
        await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=120)
    target = f"copy_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(target)
    subprocess.run(
        [
            "pg_restore",
            "-h",
            "127.0.0.1",
            "-p",
            str(postgres_server.port),
            "-U",
            "postgres",
            "-d",
            target,
            str(dest / f"{db}.dump"),
        ],
        check=True,
    )
    with psycopg.connect(postgres_server.url(target)) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (5_000,)


async def test_unreachable_postgres_fails_naming_host_and_port(
    nats_url: str, tmp_path: Path
) -> None:
    port = free_port()
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), PostgresSource(port=port)
    ) as st:
        with pytest.raises(operator.OperatorError) as exc:
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
    assert f"127.0.0.1:{port}" in str(exc.value) and "pg_basebackup" in str(exc.value)
