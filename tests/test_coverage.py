"""Coverage discovery: the agent's inventory finds real servers on its host (PostgreSQL,
MariaDB, Redis, a dockerd with a named volume, config files, units, certificates), and
the coordinator shows what no dataset covers until one does, with the ignore list, the
two alert rules, the metric, and one-line refusals of bad [inventory]/[coverage] keys."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.core import Metric
from rich.console import Console

from agent.inventory import collect, publish
from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import open_catalog
from coordinator.coverage import InventoryStore, covering, evaluate
from coordinator.metrics import Snapshot, metric_families
from coordinator.service import Coordinator
from engine.storage.open import open_target
from mosaic.commands.status import coverage_notes, unprotected_table
from shared import subjects
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import CatalogConfig, CoordinatorConfig, DatasetConfig
from shared.config.inventory import CoverageConfig, InventoryConfig
from shared.config.load import load
from shared.config.targets import LocalTargetConfig
from shared.errors import ConfigError
from shared.vocab import utcnow
from shared.wire.api import StatusRequest
from shared.wire.base import encode
from shared.wire.inventory import HostInventory, InventoryItem
from shared.wire.sources import (
    DockerExecSource,
    DockerVolumeSource,
    FilesSource,
    MariaDBSource,
    PostgresSource,
    RedisSource,
    Source,
)
from shared.wire.status import StatusReply
from tests.fixtures.docker import Dockerd
from tests.fixtures.mariadb import MariaDBServer
from tests.fixtures.nats_accounts import AccountsNats, accounts_server, world
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.redis import RedisServer, start_redis
from tests.harness import unique

WAIT_S = 30.0  # upper bound of every wait below (each ends as soon as its state is seen)


def make_cert(path: Path, days: float, cn: str) -> None:
    """A self-signed certificate valid from an hour ago for ``days`` days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path.parent / (path.stem + ".key.pem")).write_bytes(  # passed over: not a certificate
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def host_files(root: Path) -> InventoryConfig:
    """A host's well-known files in ``root``: nginx config, a compose file under opt/,
    one local systemd unit (and a link that is not one), two certificates."""
    (root / "etc" / "nginx").mkdir(parents=True)
    (root / "etc" / "nginx" / "nginx.conf").write_text("events {}\n")
    (root / "opt" / "app").mkdir(parents=True)
    (root / "opt" / "app" / "docker-compose.yml").write_text("services: {}\n")
    units = root / "systemd"
    units.mkdir()
    (units / "myapp.service").write_text("[Unit]\nDescription=My app\n")
    os.symlink("/lib/systemd/system/ssh.service", units / "ssh.service")
    certs = root / "certs"
    certs.mkdir()
    make_cert(certs / "soon.pem", 3, "soon.example")
    make_cert(certs / "later.pem", 200, "later.example")
    return InventoryConfig(
        interval_s=1.0,
        config_paths=[str(root / "etc" / "nginx"), str(root / "opt" / "*" / "docker-compose*.yml")],
        systemd_dirs=[str(units)],
        cert_paths=[str(certs)],
    )


def agent_config(name: str, inv: InventoryConfig, work: Path, nats_url: str = "") -> AgentConfig:
    return AgentConfig(
        name=name,
        nats_url=nats_url or "nats://127.0.0.1:4222",
        key_file=str(work / "repo.key"),
        targets={"t": LocalTargetConfig(path=str(work / "repo"))},
        inventory=inv,
    )


def by_key(inv: HostInventory, kind: str) -> dict[str, InventoryItem]:
    return {i.key: i for i in inv.items if i.kind == kind}


@pytest.fixture
def volume(dockerd: Dockerd, docker_image: str) -> Iterator[tuple[str, str]]:
    """A named volume of compose project ``covproj``, mounted by a (created) container."""
    client = dockerd.client()
    name, box = unique("covvol"), unique("covbox")
    labels = {
        "com.docker.compose.project": "covproj",
        "com.docker.compose.project.config_files": "/opt/covproj/docker-compose.yml",
        "com.docker.compose.project.working_dir": "/opt/covproj",
    }
    client.volumes.create(name, labels={"com.docker.compose.project": "covproj"})
    client.containers.create(
        docker_image, ["sleep", "60"], name=box, volumes={name: {"bind": "/data"}}, labels=labels
    )
    try:
        yield name, box
    finally:
        client.containers.get(box).remove(force=True, v=True)  # its anonymous /state too
        client.volumes.get(name).remove(force=True)
        client.close()


# --- the agent's half: real servers -----------------------------------------------------


def test_inventory_finds_real_servers(
    tmp_path: Path,
    postgres_server: PostgresServer,
    mariadb_server: MariaDBServer,
    redis_server: RedisServer,
    dockerd: Dockerd,
    volume: tuple[str, str],
) -> None:
    inv_cfg = msgspec.structs.replace(host_files(tmp_path), docker_url=dockerd.url)
    inv = collect(agent_config("h1", inv_cfg, tmp_path))
    assert inv.agent == "h1" and inv.errors == [], inv.errors

    pg = by_key(inv, "postgres")[str(postgres_server.data)]
    assert pg.port == postgres_server.port
    assert pg.sockets == [str(postgres_server.sockets)]
    assert "postgres" in pg.databases

    mdb = by_key(inv, "mariadb")[str(mariadb_server.data)]
    assert mdb.port == mariadb_server.port
    assert mdb.sockets == [str(mariadb_server.socket)]

    rd = by_key(inv, "redis")[str(redis_server.port)]
    assert rd.port == redis_server.port
    assert rd.path == os.path.realpath(redis_server.dir)

    vol_name, box = volume
    assert by_key(inv, "docker_volume")[vol_name].project == "covproj"
    container = by_key(inv, "docker_container")[box]
    assert vol_name in container.volumes and container.project == "covproj"
    assert by_key(inv, "compose_project")["covproj"].paths == ["/opt/covproj/docker-compose.yml"]

    assert set(by_key(inv, "config_path")) == {
        str(tmp_path / "etc" / "nginx"),
        str(tmp_path / "opt" / "app" / "docker-compose.yml"),
    }
    assert list(by_key(inv, "systemd_unit")) == ["myapp.service"]  # the link is no own unit
    certs = by_key(inv, "certificate")
    assert set(certs) == {
        str(tmp_path / "certs" / "soon.pem"),
        str(tmp_path / "certs" / "later.pem"),
    }
    assert certs[str(tmp_path / "certs" / "soon.pem")].subject == "CN=soon.example"


def test_a_probe_that_cannot_look_reports_and_the_others_still_run(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    inv_cfg = InventoryConfig(
        docker_url=f"unix://{tmp_path}/no-docker.sock",
        config_paths=[],
        cert_paths=[],
        systemd_dirs=[],
    )
    inv = collect(agent_config("h2", inv_cfg, tmp_path))
    assert [e.probe for e in inv.errors] == ["docker"]
    assert f"unix://{tmp_path}/no-docker.sock" in inv.errors[0].message
    assert str(redis_server.port) in by_key(inv, "redis")
    assert not by_key(inv, "docker_volume")

    gone = collect(
        agent_config(
            "h3", msgspec.structs.replace(inv_cfg, proc_root=str(tmp_path / "x")), tmp_path
        )
    )
    assert {e.probe for e in gone.errors} >= {"postgres", "mariadb", "redis"}
    assert not [i for i in gone.items if i.kind in ("postgres", "mariadb", "redis")]


# --- coordinator and agent over NATS ----------------------------------------------------


@asynccontextmanager
async def coordinator(cfg: CoordinatorConfig, work: Path) -> AsyncIterator[tuple[Coordinator, Bus]]:
    catalog = await open_catalog(f"sqlite:///{work / 'catalog.db'}")
    try:
        async with anyio.create_task_group() as tg:
            c = Coordinator(cfg, catalog)
            await tg.start(c.run)
            bus = await Bus.connect(cfg.nats_url, name="test")
            try:
                yield c, bus
            finally:
                await bus.aclose()
                tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


async def status_when(bus: Bus, check: Any) -> StatusReply:
    """The first status reply for which ``check`` holds (polled; bounded by WAIT_S)."""
    with anyio.fail_after(WAIT_S):
        while True:
            st = await bus.request("status", StatusRequest())
            assert isinstance(st, StatusReply), st
            if check(st):
                return st
            await anyio.sleep(0.2)


def listed(st: StatusReply, kind: str, key: str) -> Any:
    return next((u for u in st.unprotected if u.kind == kind and u.key == key), None)


def coord_config(
    nats_url: str, agent: str, work: Path, datasets: dict[str, Source], ignore: list[str]
) -> CoordinatorConfig:
    return CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={n: DatasetConfig(agent=agent, target="t", source=s) for n, s in datasets.items()},
        coverage=CoverageConfig(ignore=ignore),
    )


def families(st: StatusReply) -> dict[str, Metric]:
    return {m.name: m for m in metric_families(Snapshot(status=st, failures=[]))}


async def test_unprotected_until_a_dataset_covers_it(
    tmp_path: Path,
    private_nats_url: str,
    postgres_server: PostgresServer,
    dockerd: Dockerd,
) -> None:
    agent = unique("host")
    inv_cfg = msgspec.structs.replace(host_files(tmp_path), docker_url=dockerd.url)
    compose = str(tmp_path / "opt" / "app" / "docker-compose.yml")
    ignore = [f"{agent}:config_path:{tmp_path}/opt/*", f"{agent}:docker_volume:nothing-*"]
    etc = {"etc": FilesSource(path=str(tmp_path / "etc"))}  # covers etc/nginx
    pg_key = str(postgres_server.data)
    agent_cfg = agent_config(agent, inv_cfg, tmp_path, private_nats_url)
    targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
    key, _ = await prepare_key(agent_cfg, targets)
    runner = AgentRunner(agent_cfg, key, targets)
    client = dockerd.client()
    new_volume = unique("covnew")
    # the new Redis and volume outlive the agent, so its last inventory still lists them
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(client.close)
        async with contextlib.AsyncExitStack() as stack:
            cfg1 = coord_config(private_nats_url, agent, tmp_path, etc, ignore)
            c1, bus = await stack.enter_async_context(coordinator(cfg1, tmp_path))
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # the agent stops first
            await tg.start(runner.run)
            stack.push_async_callback(runner.aclose)

            st = await status_when(bus, lambda s: listed(s, "postgres", pg_key))
            assert st.inventories == 1
            assert not listed(st, "postgres", pg_key).ignored
            assert listed(st, "config_path", str(tmp_path / "etc" / "nginx")) is None  # covered
            ignored = listed(st, "config_path", compose)
            assert ignored.ignored and ignored.ignored_by == ignore[0]
            assert st.ignore_unmatched == [ignore[1]]
            assert st.unprotected_total == sum(1 for u in st.unprotected if not u.ignored)
            soon = next(c for c in st.certificates if c.path.endswith("soon.pem"))
            later = next(c for c in st.certificates if c.path.endswith("later.pem"))
            assert soon.expiring and 2 < (soon.days_left or 0) < 3.1
            assert not later.expiring

            # a new Redis and a new volume appear with the agent's next inventory
            r2 = start_redis(tmp_path / "r2")
            cleanup.callback(r2.stop)
            client.volumes.create(new_volume)
            cleanup.callback(lambda: client.volumes.get(new_volume).remove(force=True))
            st = await status_when(
                bus,
                lambda s: (
                    listed(s, "redis", str(r2.port)) and listed(s, "docker_volume", new_volume)
                ),
            )

            # (the coordinator's own alert loop may have ticked already: read what fires)
            await c1.alerter.tick()
            fired = {a.fingerprint: a for a in c1.alerter.firing()}
            assert f"unprotected_data/{agent}/postgres" in fired
            assert f"unprotected_data/{agent}/docker_volume" in fired
            assert f"unprotected_data/{agent}/redis" in fired
            cert = fired[f"certificate_expiring/{agent}/{tmp_path / 'certs' / 'soon.pem'}"]
            assert "CN=soon.example" in cert.summary and cert.severity == "warning"
            assert not [f for f in fired if f.endswith("later.pem")]
            assert f"unprotected_data/{agent}/config_path" not in fired  # only the ignored one

            samples = {
                (s.labels["host"], s.labels["kind"]): s.value
                for s in families(st)["backup_unprotected_items"].samples
            }
            assert samples[(agent, "postgres")] >= 1 and (agent, "config_path") not in samples

            out = Console(record=True, width=1000)
            out.print(unprotected_table(st))
            for line in coverage_notes(st):
                out.print(line, markup=False, highlight=False)
            text = out.export_text()
            assert pg_key in text and f"yes ({ignore[0]})" in text
            assert f"coverage: ignore entry '{ignore[1]}' matches nothing" in text
            assert "certificate expiring: " + agent in text
            await stack.aclose()

        # the same agent's last inventory, read from the stream by a coordinator whose config
        # now covers the cluster, the new Redis and the new volume
        covering_sets: dict[str, Source] = {
            **etc,
            "pg": PostgresSource(port=postgres_server.port),
            "r2": RedisSource(port=r2.port),
            "vol": DockerVolumeSource(volume=new_volume, docker_url=dockerd.url),
        }
        cfg2 = coord_config(private_nats_url, agent, tmp_path, covering_sets, ignore)
        async with coordinator(cfg2, tmp_path) as (c2, bus2):
            st = await status_when(bus2, lambda s: s.inventories == 1)
            assert listed(st, "postgres", pg_key) is None
            assert listed(st, "redis", str(r2.port)) is None
            assert listed(st, "docker_volume", new_volume) is None
            assert listed(st, "config_path", compose).ignored  # still listed, still ignored
            held = by_key(c2.coverage.store.last()[agent], "redis")  # there, and covered
            assert str(r2.port) in held and new_volume in by_key(
                c2.coverage.store.last()[agent], "docker_volume"
            )
            await c2.alerter.tick()
            fired = {a.fingerprint for a in c2.alerter.firing()}
            assert f"certificate_expiring/{agent}/{tmp_path / 'certs' / 'soon.pem'}" in fired
            assert f"unprotected_data/{agent}/config_path" not in fired


# --- NATS permissions: an agent publishes its own inventory only ------------------------


@pytest.fixture(scope="module")
def accounts_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccountsNats]:
    with accounts_server(tmp_path_factory) as nats:
        yield nats


async def test_an_agent_publishes_only_its_own_inventory(accounts_nats: AccountsNats) -> None:
    async with world(accounts_nats) as w, anyio.create_task_group() as tg:
        store = InventoryStore()
        await tg.start(store.run, w.coord)
        forged = HostInventory(agent="web1", hostname="x", at=utcnow())
        await w.db1.nc.publish(subjects.inventory("web1"), encode(forged))
        own = HostInventory(agent="db1", hostname="db1host", at=utcnow())
        await publish(w.db1, own)  # waits for the stream's ack: the positive marker
        with anyio.fail_after(WAIT_S):
            while True:
                if "db1" in store.last():
                    break
                await anyio.sleep(0.05)
        assert store.last()["db1"].hostname == "db1host"
        assert "web1" not in store.last()
        info = await w.coord.js.stream_info(subjects.INVENTORY_STREAM, subjects_filter=">")
        assert subjects.inventory("web1") not in (info.state.subjects or {})
        tg.cancel_scope.cancel()


def test_an_inventory_in_another_agents_name_is_not_kept() -> None:
    store = InventoryStore()
    inv = HostInventory(agent="web1", hostname="x", at=utcnow())
    assert store.record(subjects.inventory("db1"), encode(inv), utcnow()) is None
    assert store.record(subjects.inventory("web1"), encode(inv), utcnow()) == inv
    assert list(store.last()) == ["web1"]


# --- the matching rules, with plain values -----------------------------------------------


def ds(source: Source) -> dict[str, DatasetConfig]:
    return {"d": DatasetConfig(agent="a", target="t", source=source)}


def test_matching_rules() -> None:
    pg = InventoryItem(kind="postgres", key="/srv/pg", port=5433, sockets=["/run/pg"])
    assert covering(pg, ds(PostgresSource(port=5433))) == "d"
    assert covering(pg, ds(PostgresSource(port=5433, host="/run/pg"))) == "d"
    assert covering(pg, ds(PostgresSource(port=5432))) is None
    assert covering(pg, ds(PostgresSource(port=5433, host="db.elsewhere"))) is None
    assert covering(pg, ds(PostgresSource(port=5433, host="h1")), "h1") == "d"
    assert covering(pg, ds(FilesSource(path="/srv"))) is None  # files are no DB backup

    mdb = InventoryItem(kind="mariadb", key="/srv/m", port=3307, sockets=["/run/m.sock"])
    assert covering(mdb, ds(MariaDBSource(socket="/run/m.sock"))) == "d"
    assert covering(mdb, ds(MariaDBSource(socket="/run/other.sock", port=3307))) is None
    assert covering(mdb, ds(MariaDBSource(port=3307))) == "d"

    rd = InventoryItem(kind="redis", key="6380", port=6380)
    assert covering(rd, ds(RedisSource(port=6380))) == "d"
    assert covering(rd, ds(RedisSource(port=6379))) is None

    conf = InventoryItem(kind="config_path", key="/etc/nginx", path="/etc/nginx")
    assert covering(conf, ds(FilesSource(path="/etc"))) == "d"
    assert covering(conf, ds(FilesSource(path="/etc/nginx"))) == "d"
    assert covering(conf, ds(FilesSource(path="/etc/ngin"))) is None
    assert covering(conf, ds(FilesSource(path="/etc", exclude=["nginx"]))) is None
    assert covering(conf, ds(FilesSource(path="/", exclude=["etc/n*"]))) is None
    assert covering(conf, ds(FilesSource(path="/", exclude=["*.log"]))) == "d"

    box = InventoryItem(kind="docker_container", key="app", volumes=["v1"], paths=["/srv/app"])
    both = {
        **ds(DockerVolumeSource(volume="v1")),
        "f": DatasetConfig(agent="a", target="t", source=FilesSource(path="/srv")),
    }
    assert covering(box, both) == "d, f"
    assert covering(box, ds(DockerVolumeSource(volume="v1"))) is None  # the bind is not
    assert covering(box, ds(DockerExecSource(container="app", command=["dump"]))) == "d"
    assert covering(InventoryItem(kind="docker_container", key="stateless"), {}) is not None

    proj = InventoryItem(kind="compose_project", key="p", paths=["/opt/p/compose.yml"])
    assert covering(proj, ds(FilesSource(path="/opt/p"))) == "d"
    assert covering(proj, ds(FilesSource(path="/opt/q"))) is None


def test_ignore_entries_and_certificates_with_plain_values() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    inv = HostInventory(
        agent="a",
        hostname="h",
        at=now,
        items=[
            InventoryItem(kind="redis", key="6379", port=6379),
            InventoryItem(kind="docker_volume", key="tmp-cache"),
            InventoryItem(
                kind="certificate",
                key="/c.pem",
                path="/c.pem",
                subject="CN=x",
                not_after=now - timedelta(days=1),
            ),
        ],
    )
    cfg = CoordinatorConfig(
        coverage=CoverageConfig(ignore=["a:docker_volume:tmp-*", "b:*:*", "*:redis:6380"])
    )
    res = evaluate({"a": inv}, cfg, now)
    assert [(u.kind, u.key, u.ignored) for u in res.unprotected] == [
        ("certificate", "/c.pem", False),
        ("redis", "6379", False),
        ("docker_volume", "tmp-cache", True),
    ]
    assert res.unmatched == ["b:*:*", "*:redis:6380"]
    assert res.certificates[0].expiring and res.certificates[0].days_left == -1.0
    assert evaluate({}, cfg, now).unmatched == []  # nothing held yet: nothing to say


# --- bad input: one line --------------------------------------------------------------


def test_unknown_and_bad_fields_are_refused_in_one_line(tmp_path: Path) -> None:
    agent = tmp_path / "agent.toml"
    agent.write_text(
        f'name = "a"\nkey_file = "{tmp_path}/k"\n[targets.t]\ntype = "local"\n'
        f'path = "{tmp_path}/r"\n[inventory]\ninterval = 60\n'
    )
    with pytest.raises(ConfigError) as exc:
        load(agent, AgentConfig)
    line = str(exc.value)
    assert "\n" not in line and "'inventory.interval'" in line and "interval_s" in line
    agent.write_text(agent.read_text().replace("interval = 60", ""))  # an empty table
    inv = load(agent, AgentConfig).inventory
    assert inv is not None and inv.enabled and inv.interval_s == 3600.0
    agent.write_text(agent.read_text().replace("[inventory]\n", ""))
    assert load(agent, AgentConfig).inventory is None  # no table: no inventory

    coord = tmp_path / "coordinator.toml"
    coord.write_text('[coverage]\nignor = ["a:redis:*"]\n')
    with pytest.raises(ConfigError) as exc:
        load(coord, CoordinatorConfig)
    line = str(exc.value)
    assert "\n" not in line and "'coverage.ignor'" in line and "did you mean `ignore`" in line

    coord.write_text('[coverage]\nignore = ["web1:postgress:*"]\n')
    with pytest.raises(ConfigError) as exc:
        load(coord, CoordinatorConfig)
    line = str(exc.value)
    assert "\n" not in line and "'coverage.ignore'" in line and "'web1:postgress:*'" in line
    assert "postgres" in line  # the kinds it could have meant

    coord.write_text('[coverage]\nignore = ["web1-postgres"]\n')
    with pytest.raises(ConfigError, match="is not AGENT:KIND:KEY"):
        load(coord, CoordinatorConfig)

    coord.write_text('[coverage]\nignore = ["web1:redis:6379"]\ncert_warn_days = 30\n')
    assert load(coord, CoordinatorConfig).coverage.cert_warn_days == 30
