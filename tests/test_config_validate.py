"""``mosaic-backup config validate FILE [--reach]``, run as the real command.

Good files say ``ok:`` with a summary; a misspelt field is one line naming it (exit 1);
``--reach`` with a wrong NATS port or an unreachable S3 endpoint names that row (exit
1); against real servers (NATS, S3, a local repository with its key, SQLite and
PostgreSQL catalogs, PostgreSQL and Redis sources) every row is ok and nothing is
created or migrated.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import anyio
import psycopg

from coordinator.catalog import open_catalog
from engine.keys.files import create_key_file
from engine.repository import Repository
from engine.storage.local import LocalTarget
from shared.config.targets import LocalTargetConfig, S3TargetConfig
from shared.natsserver import free_port
from tests.fixtures.docker import Dockerd
from tests.fixtures.mariadb import MariaDBServer
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.redis import RedisServer
from tests.harness import agent_toml, cli, snapshot, write_toml


def validate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return cli("config", "validate", *map(str, args), timeout=120)


def _row(out: str, what: str) -> str:
    """The table row that starts with ``what`` (rich draws │ between the cells)."""
    rows = [ln for ln in out.splitlines() if ln.strip("│ ").startswith(what)]
    assert rows, f"no row {what!r} in:\n{out}"
    return rows[0]


def coordinator_toml(path: Path, *, nats_url: str, catalog: str, datasets: str = "") -> Path:
    return write_toml(
        path,
        f'name = "coord"\nnats_url = "{nats_url}"\n[catalog]\nurl = "{catalog}"\n{datasets}',
    )


def test_good_files_are_ok_with_a_summary(tmp_path: Path) -> None:
    agent = agent_toml(
        tmp_path / "agent.toml",
        name="web1",
        nats_url="nats://127.0.0.1:4222",
        key_file=tmp_path / "repo.key",
        targets={"t": LocalTargetConfig(path=str(tmp_path / "repo"))},
    )
    coord = coordinator_toml(
        tmp_path / "coordinator.toml",
        nats_url="nats://127.0.0.1:4222",
        catalog=f"sqlite:///{tmp_path / 'catalog.db'}",
        datasets='[datasets.etc]\nagent = "web1"\ntarget = "t"\nsource = {type = "files", '
        'path = "/etc"}\nschedules = [{cron = "0 2 * * *", backup_type = "full"}]\n',
    )
    a, c = validate(agent), validate(coord)
    assert a.returncode == 0, a.stderr
    assert a.stdout.startswith(f"ok: {agent}: agent web1: 1 target(s) (1 local)")
    assert c.returncode == 0, c.stderr
    assert "coordinator coord: 1 dataset(s) (1 scheduled) on 1 agent(s)" in c.stdout
    assert set(tmp_path.iterdir()) == {agent, coord}  # nothing made (no catalog, no repo)


def test_a_misspelt_field_is_one_line_naming_it(tmp_path: Path) -> None:
    agent = agent_toml(
        tmp_path / "agent.toml",
        name="web1",
        nats_url="nats://127.0.0.1:4222",
        key_file=tmp_path / "repo.key",
        targets={"t": LocalTargetConfig(path=str(tmp_path / "repo"))},
        extra="heartbeat_intervall_s = 5",
    )
    got = validate(agent)
    assert got.returncode == 1 and got.stdout == ""
    (line,) = got.stderr.splitlines()
    assert "heartbeat_intervall_s" in line and str(agent) in line
    nested = write_toml(
        tmp_path / "c.toml",
        '[catalog]\nurl = "sqlite:///x.db"\n[datasets.d]\nagent = "a"\ntarget = "t"\n'
        'sorce = {type = "files", path = "/etc"}\n',
    )
    got = validate(nested)
    assert got.returncode == 1
    (line,) = got.stderr.splitlines()
    assert "datasets.d" in line and "sorce" in line


def test_a_file_of_neither_kind_asks_for_kind(tmp_path: Path) -> None:
    odd = write_toml(tmp_path / "x.toml", 'name = "x"\n')
    got = validate(odd)
    assert got.returncode == 1 and "--kind" in got.stderr and len(got.stderr.splitlines()) == 1
    forced = validate(odd, "--kind", "agent")
    assert forced.returncode == 1 and "key_file" in forced.stderr


async def test_reach_names_a_wrong_nats_port_and_an_unreachable_s3_endpoint(
    tmp_path: Path,
) -> None:
    dead = free_port()  # nothing listens here
    s3 = S3TargetConfig(
        bucket="bkt",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        access_key_id="k",
        secret_access_key="s3cr3t-value",
    )
    agent = agent_toml(
        tmp_path / "agent.toml",
        name="web1",
        nats_url=f"nats://127.0.0.1:{dead}",
        key_file=tmp_path / "repo.key",
        targets={"t": LocalTargetConfig(path=str(tmp_path / "repo")), "cold": s3},
        extra="connect_timeout_s = 1",
    )
    got = await anyio.to_thread.run_sync(functools.partial(validate, agent, "--reach"))
    assert got.returncode == 1, got.stdout
    assert "FAIL" in _row(got.stdout, "NATS") and f"127.0.0.1:{dead}" in _row(got.stdout, "NATS")
    assert "FAIL" in _row(got.stdout, "target cold")
    assert "ok" in _row(got.stdout, "target t ")  # a folder the first backup will make
    assert "s3cr3t-value" not in got.stdout + got.stderr
    assert "does not exist yet" in _row(got.stdout, "key file")  # made at first start
    assert "2 of 4 check(s) failed" in got.stderr
    assert not (tmp_path / "repo").exists()


async def test_reach_with_real_servers_is_ok_and_creates_nothing(
    nats_url: str,
    s3_bucket: S3TargetConfig,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    master = create_key_file(tmp_path / "repo.key")
    await Repository.open(LocalTarget("t", tmp_path / "repo"), master, create=True)
    agent = agent_toml(
        tmp_path / "agent.toml",
        name="web1",
        nats_url=nats_url,
        key_file=tmp_path / "repo.key",
        targets={"t": LocalTargetConfig(path=str(tmp_path / "repo")), "cold": s3_bucket},
    )
    before = snapshot(tmp_path)
    got = await anyio.to_thread.run_sync(functools.partial(validate, agent, "--reach"))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "FAIL" not in got.stdout
    assert "the key opens repository" in _row(got.stdout, "target t ")
    assert "no repository there yet" in _row(got.stdout, "target cold")
    assert "connected" in _row(got.stdout, "NATS")
    assert snapshot(tmp_path) == before

    catalog = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    await catalog.aclose()
    datasets = (
        f'[datasets.files]\nagent = "web1"\ntarget = "t"\nsource = {{type = "files", '
        f'path = "{tmp_path}"}}\n'
        f'[datasets.pg]\nagent = "web1"\ntarget = "t"\nsource = {{type = "postgres", '
        f'port = {postgres_server.port}, user = "postgres"}}\n'
        f'[datasets.cache]\nagent = "web1"\ntarget = "t"\nsource = {{type = "redis", '
        f"port = {redis_server.port}}}\n"
    )
    coord = coordinator_toml(
        tmp_path / "coordinator.toml",
        nats_url=nats_url,
        catalog=f"sqlite:///{tmp_path / 'catalog.db'}",
        datasets=datasets,
    )
    before = snapshot(tmp_path)
    got = await anyio.to_thread.run_sync(
        functools.partial(validate, coord, "--reach", "--sources", "web1")
    )
    assert got.returncode == 0, got.stdout + got.stderr
    assert "schema version" in _row(got.stdout, "catalog (sqlite)")
    assert "PostgreSQL" in _row(got.stdout, "source of pg")
    assert "Redis" in _row(got.stdout, "source of cache")
    assert "readable" in _row(got.stdout, "source of files")
    assert snapshot(tmp_path) == before


async def test_reach_opens_a_postgres_catalog_without_migrating_it(
    nats_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    db = "cat_validate"
    with psycopg.connect(postgres_server.url(), autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {db}")
        con.execute(f"CREATE DATABASE {db}")
    coord = coordinator_toml(
        tmp_path / "coordinator.toml", nats_url=nats_url, catalog=postgres_server.url(db)
    )
    got = await anyio.to_thread.run_sync(functools.partial(validate, coord, "--reach"))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "no schema yet" in _row(got.stdout, "catalog (postgresql)")
    with psycopg.connect(postgres_server.url(db)) as con:
        tables = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)  # read, never migrated


def test_a_missing_sqlite_catalog_fails_its_row_and_is_not_created(
    nats_url: str, tmp_path: Path
) -> None:
    coord = coordinator_toml(
        tmp_path / "coordinator.toml",
        nats_url=nats_url,
        catalog=f"sqlite:///{tmp_path / 'none' / 'catalog.db'}",
    )
    got = validate(coord, "--reach")
    assert got.returncode == 1
    assert "FAIL" in _row(got.stdout, "catalog (sqlite)") and "does not exist" in got.stdout
    assert not (tmp_path / "none").exists()


async def test_reach_tries_mariadb_and_docker_sources_and_names_the_dead_one(
    nats_url: str, mariadb_server: MariaDBServer, dockerd: Dockerd, tmp_path: Path
) -> None:
    dead = free_port()
    datasets = (
        f'[datasets.db]\nagent = "web1"\ntarget = "t"\nsource = {{type = "mariadb", '
        f"port = {mariadb_server.port}}}\n"
        f'[datasets.dbsock]\nagent = "web1"\ntarget = "t"\nsource = {{type = "mariadb", '
        f'socket = "{mariadb_server.socket}"}}\n'
        f'[datasets.vol]\nagent = "web1"\ntarget = "t"\nsource = {{type = "docker_volume", '
        f'volume = "data", docker_url = "{dockerd.url}"}}\n'
        f'[datasets.gone]\nagent = "web1"\ntarget = "t"\nsource = {{type = "redis", '
        f"port = {dead}}}\n"
        f'[datasets.other]\nagent = "db2"\ntarget = "t"\nsource = {{type = "files", '
        f'path = "/nonexistent"}}\n'
    )
    coord = coordinator_toml(
        tmp_path / "coordinator.toml",
        nats_url=nats_url,
        catalog=f"sqlite:///{tmp_path / 'catalog.db'}",
        datasets=datasets,
    )
    catalog = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    await catalog.aclose()
    got = await anyio.to_thread.run_sync(
        functools.partial(validate, coord, "--reach", "--sources", "web1")
    )
    assert got.returncode == 1, got.stdout + got.stderr
    assert "MariaDB" in _row(got.stdout, "source of db (") and "ok" in _row(
        got.stdout, "source of db ("
    )
    assert "ok" in _row(got.stdout, "source of dbsock")
    assert "Docker daemon" in _row(got.stdout, "source of vol")
    assert "FAIL" in _row(got.stdout, "source of gone") and str(dead) in got.stdout
    assert "source of other" not in got.stdout  # another agent's: not this host's business
    assert "1 of 6 check(s) failed" in got.stderr
    unknown = await anyio.to_thread.run_sync(
        functools.partial(validate, coord, "--reach", "--sources", "nobody")
    )
    assert unknown.returncode == 1 and "--sources nobody" in unknown.stderr
