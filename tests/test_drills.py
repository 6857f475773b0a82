"""Restore drills against real servers: a files dataset and a PostgreSQL base backup are
restored into scratch space, checked (re-hash; a throwaway server with pg_amcheck and row
counts; redis-check-rdb and redis-check-aof; a volume tar listed) and removed, with RTO
and RPO recorded; a damaged backup fails the drill and raises the drill_failed alert.
``drill run`` and ``drill report`` run as real CLIs."""

from __future__ import annotations

import functools
import getpass
import io
import socket
import tarfile
import tempfile
import uuid
from pathlib import Path

import anyio.to_thread
import psycopg

from agent.jobs.drill_tools import check_tar
from mosaic.commands.drill import run_drill
from shared.config.coordinator import MaintenanceConfig
from shared.wire.events import DrillCompleted
from shared.wire.sources import DockerVolumeSource, MariaDBSource, PostgresSource, RedisSource
from tests.fixtures.docker import Dockerd
from tests.fixtures.mariadb import MariaDBServer
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.redis import RedisServer
from tests.harness import cli, make_tree, unique
from tests.test_maintenance_jobs import (
    OFF,
    QUIET,
    backup_now,
    eventually,
    flip_byte_in_a_pack,
    maint_stack,
)


async def test_drill_of_a_files_dataset_from_the_cli(nats_url: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    scratch = tmp_path / "scratch"
    cfg = MaintenanceConfig(**OFF, drill_scratch=str(scratch))
    async with maint_stack(nats_url, tmp_path, src, maintenance=cfg) as st:
        backup_id = await backup_now(st)
        run = functools.partial(cli, "drill", "run", st.dataset, "--nats", nats_url)
        done = await anyio.to_thread.run_sync(run)
        assert done.returncode == 0, done.stderr
        assert f"drill of {st.dataset}: PASSED" in done.stdout and backup_id in done.stdout
        args = ("drill", "run", st.dataset, "--nats", nats_url, "--as", "alice")
        again = await anyio.to_thread.run_sync(functools.partial(cli, *args))
        assert again.returncode == 0, again.stderr
        audit = await st.catalog.list_audit(action="drill_requested")
        rows = await st.catalog.list_maintenance(kind="drill", dataset=st.dataset)
        report = functools.partial(cli, "drill", "report", "--nats", nats_url)
        listed = await anyio.to_thread.run_sync(report)
    assert listed.returncode == 0, listed.stderr
    assert st.dataset in listed.stdout and "passed" in listed.stdout
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    assert [e.actor for e in audit] == ["alice", me]  # newest first; who ran each drill
    rec = rows[-1]
    assert (rec.backup_id, rec.outcome) == (backup_id, "passed")
    assert rec.rto_s is not None and rec.rto_s > 0
    assert rec.rpo_s is not None and rec.rpo_s >= 0
    files = sum(1 for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    assert f"rehash: ok ({files} files" in rec.summary
    assert list(scratch.iterdir()) == []  # the restored copy is gone


async def test_drill_of_a_postgres_base_backup_checks_a_throwaway_server(
    nats_url: str, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    db = f"drill_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(db)
    with psycopg.connect(postgres_server.url(db), autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
        conn.execute("CREATE INDEX items_note ON items (note)")
        conn.execute("INSERT INTO items SELECT g, 'note ' || g FROM generate_series(1, 5000) g")
    source = PostgresSource(port=postgres_server.port, mode="basebackup")
    async with maint_stack(nats_url, tmp_path, source, maintenance=None) as st:
        backup_id = await backup_now(st)
        ev = await run_drill(st.bus, st.dataset, QUIET, QUIET, timeout=300)
    assert isinstance(ev, DrillCompleted)
    checks = {c.name: c for c in ev.checks}
    assert (ev.outcome, ev.backup_id) == ("passed", backup_id), ev.checks
    assert checks["postgres start"].ok and checks["pg_amcheck"].ok
    assert "public.items=5000" in checks[f"rows {db}"].detail
    assert ev.rto_s > 0 and ev.rpo_s is not None and ev.rpo_s >= 0
    left = list(Path(tempfile.gettempdir()).glob(f"mosaic-drill-{ev.job_id[:24]}-*"))
    assert left == []


async def test_drill_of_a_damaged_backup_fails_and_alerts(nats_url: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    cfg = MaintenanceConfig(**OFF, drill_scratch=str(tmp_path / "scratch"))
    async with maint_stack(nats_url, tmp_path, src, maintenance=cfg) as st:
        await backup_now(st)
        pack = flip_byte_in_a_pack(st.targets["t"])
        ev = await run_drill(st.bus, st.dataset, QUIET, QUIET, timeout=120)
        assert isinstance(ev, DrillCompleted) and ev.outcome == "failed"
        [restore] = ev.checks
        assert restore.name == "restore" and not restore.ok
        assert pack.name in restore.detail and "authentication failed" in restore.detail

        async def alert() -> list[str]:
            return [a.summary for a in st.coordinator.alerter.firing() if a.rule == "drill_failed"]

        assert await eventually("the drill_failed alert", alert) == [
            f"restore drill of {st.dataset} failed"
        ]


async def test_drill_of_a_mariabackup_runs_check_table_on_a_throwaway_server(
    nats_url: str, tmp_path: Path, mariadb_server: MariaDBServer
) -> None:
    db = f"drill_{uuid.uuid4().hex[:8]}"
    mariadb_server.sql(f"CREATE DATABASE {db}")
    mariadb_server.sql("CREATE TABLE items (id INT PRIMARY KEY, note TEXT) ENGINE=InnoDB", db)
    mariadb_server.sql("INSERT INTO items SELECT seq, CONCAT('n', seq) FROM seq_1_to_2000", db)
    source = MariaDBSource(socket=str(mariadb_server.socket))
    scratch = tmp_path / "scratch"
    cfg = MaintenanceConfig(**OFF, drill_scratch=str(scratch))
    async with maint_stack(nats_url, tmp_path, source, maintenance=cfg) as st:
        await backup_now(st)
        ev = await run_drill(st.bus, st.dataset, QUIET, QUIET, timeout=300)
    assert isinstance(ev, DrillCompleted) and ev.outcome == "passed", ev.checks
    checks = {c.name: c for c in ev.checks}
    assert checks["mariadb start"].ok
    assert f"`{db}`.`items`" in checks["check table"].detail
    assert list(scratch.iterdir()) == []


async def test_drill_of_a_redis_snapshot_runs_redis_check_rdb(
    nats_url: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.load([["SET", f"key:{i}", f"value {i}"] for i in range(1000)])
    source = RedisSource(port=redis_server.port)
    async with maint_stack(nats_url, tmp_path, source, maintenance=None) as st:
        await backup_now(st)
        ev = await run_drill(st.bus, st.dataset, QUIET, QUIET, timeout=120)
    assert isinstance(ev, DrillCompleted) and ev.outcome == "passed", ev.checks
    assert [c.name for c in ev.checks] == ["restore", "rehash", "redis-check-rdb"]
    assert "1 files" in ev.checks[1].detail


async def test_drill_of_a_redis_aof_backup_checks_the_aof_too(
    nats_url: str, tmp_path: Path, redis_aof_server: RedisServer
) -> None:
    redis_aof_server.load([["SET", f"key:{i}", f"value {i}"] for i in range(500)])
    source = RedisSource(port=redis_aof_server.port)
    async with maint_stack(nats_url, tmp_path, source, maintenance=None) as st:
        await backup_now(st)
        good = await run_drill(st.bus, st.dataset, QUIET, QUIET, timeout=120)
        # an AOF cut in the middle of a command (a crash while writing) is backed up as
        # it is; the drill must say the restored AOF is not usable as it stands
        [incr] = (redis_aof_server.dir / "appendonlydir").glob("*.incr.aof")
        with incr.open("ab") as f:
            f.write(b"*3\r\n$3\r\nSET\r\n$3\r\nkey")
        cut = await backup_now(st)
        bad = await run_drill(st.bus, st.dataset, QUIET, QUIET, backup_id=cut, timeout=120)
    assert isinstance(good, DrillCompleted) and good.outcome == "passed", good.checks
    names = [c.name for c in good.checks]
    assert names == ["restore", "rehash", "redis-check-rdb", "redis-check-aof"]
    assert good.checks[-1].detail == "All AOF files and manifest are valid"
    assert isinstance(bad, DrillCompleted) and bad.outcome == "failed", bad.checks
    failed = [c.name for c in bad.checks if not c.ok]
    assert failed == ["redis-check-aof"], bad.checks


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_truncated_volume_tar_fails_the_tar_check(tmp_path: Path) -> None:
    data = _tar({"a.txt": b"hello\n", "big.bin": bytes(range(256)) * 400})
    whole = tmp_path / "vol.tar"
    whole.write_bytes(data)
    ok = check_tar(whole)
    assert ok.ok and ok.detail == "2 members, 102406 bytes listed", ok.detail
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:60_000])  # inside big.bin's data
    bad = check_tar(cut)
    assert not bad.ok and "'big.bin' is cut short" in bad.detail, bad.detail
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 64)
    assert not check_tar(junk).ok


async def test_drill_of_a_docker_volume_lists_the_restored_tar(
    nats_url: str, tmp_path: Path, dockerd: Dockerd, docker_image: str
) -> None:
    client = dockerd.client()
    volume = unique("drillvol")
    client.volumes.create(volume)
    try:
        client.containers.run(
            docker_image,
            ["sh", "-c", "mkdir /data/app && echo 'config: 1' > /data/app/app.ini"],
            volumes={volume: {"bind": "/data", "mode": "rw"}},
            network_disabled=True,
            remove=True,
        )
        source = DockerVolumeSource(
            volume=volume, docker_url=dockerd.url, helper_image=docker_image
        )
        async with maint_stack(nats_url, tmp_path, source, maintenance=None) as st:
            await backup_now(st)
            ev = await run_drill(st.bus, st.dataset, QUIET, QUIET, timeout=120)
    finally:
        for c in client.containers.list(all=True, filters={"volume": volume}):
            c.remove(force=True)
        client.volumes.get(volume).remove(force=True)
        client.close()
    assert isinstance(ev, DrillCompleted) and ev.outcome == "passed", ev.checks
    assert [c.name for c in ev.checks] == ["restore", "rehash", f"tar {volume}.tar"]
    assert ev.checks[-1].detail.endswith(" members, 10 bytes listed"), ev.checks[-1].detail
