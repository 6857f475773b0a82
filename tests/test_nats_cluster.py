"""mosaic-backup on a real 3-server JetStream cluster (tests/fixtures/nats_cluster.py):
every stream and the lease bucket keep 3 copies, an R1 stream from before is raised to
R3, and a backup survives the death of one server and a restart of all three. The
fault loop (×10 and more) is bench/faults.py's; it calls
tests/fixtures/cluster_faults.py:kill_during_backup."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest

from mosaic.setup.natscluster import ClusterRequest, write_cluster
from shared import subjects
from shared.bus import Bus
from shared.config.coordinator import CatalogConfig, CoordinatorConfig
from shared.config.targets import LocalTargetConfig
from shared.natsserver import free_port
from tests.fixtures.cluster_faults import (
    UPLOAD_LIMIT,
    backup_through_fault,
    kill_during_backup,
    kill_leader_of,
    restart_cluster,
    source_tree,
)
from tests.fixtures.nats_cluster import NatsCluster, wait_for_meta_leader
from tests.fixtures.nats_conf import nats_from_config
from tests.harness import running_stack, unique

COORDINATOR_STREAMS = [
    subjects.JOBS_STREAM,
    subjects.EVENTS_STREAM,
    subjects.AUDIT_STREAM,
    subjects.HEARTBEATS_STREAM,
    subjects.INVENTORY_STREAM,
    subjects.ALERTS_STREAM,
    f"KV_{subjects.LEADER_BUCKET}",
]


async def _replicas(bus: Bus, stream: str) -> int | None:
    with anyio.fail_after(30):  # the alerts stream comes with the lease
        while True:
            try:
                return (await bus.js.stream_info(stream)).config.num_replicas
            except Exception:  # not created yet: asked again
                await anyio.sleep(0.1)


async def test_streams_and_lease_bucket_keep_three_copies(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    src = source_tree(tmp_path / "src")
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_cluster.url, tmp_path, target, src, with_agent=False) as st:
        found = {s: await _replicas(st.bus, s) for s in COORDINATOR_STREAMS}
    assert found == dict.fromkeys(COORDINATOR_STREAMS, 3)


async def test_an_existing_r1_stream_and_bucket_are_raised_to_r3(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    bus = await Bus.connect(nats_cluster.url, name="old-coordinator")
    try:
        for cfg in Bus.stream_configs():  # as a coordinator before replicas made them
            await bus.js.add_stream(dataclasses.replace(cfg, num_replicas=1))
        await bus.js.create_key_value(bucket=subjects.LEADER_BUCKET, history=1, ttl=6.0)
        assert await _replicas(bus, subjects.JOBS_STREAM) == 1
        assert await _replicas(bus, f"KV_{subjects.LEADER_BUCKET}") == 1
        src = source_tree(tmp_path / "src")
        target = LocalTargetConfig(path=str(tmp_path / "repo"))
        async with running_stack(nats_cluster.url, tmp_path, target, src, with_agent=False):
            for stream in (subjects.JOBS_STREAM, subjects.EVENTS_STREAM):
                assert await _replicas(bus, stream) == 3, stream
            with anyio.fail_after(30):  # the lease bucket is opened by the leader task
                while await _replicas(bus, f"KV_{subjects.LEADER_BUCKET}") != 3:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
    finally:
        await bus.aclose()


async def test_stream_replicas_setting_wins_over_the_cluster_size(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_cluster.url,
        catalog=CatalogConfig(url=f"sqlite:///{tmp_path / 'c.db'}"),
        stream_replicas=2,
    )
    bus = await Bus.connect_with(cfg, name="coordinator")
    agent_bus = await Bus.connect(nats_cluster.url, name="agent")
    try:
        await bus.ensure_streams()
        assert await _replicas(bus, subjects.EVENTS_STREAM) == 2
        # an agent in the same account (quickstart) re-ensures: it keeps the 2 copies
        await agent_bus.ensure_streams()
        assert await _replicas(bus, subjects.EVENTS_STREAM) == 2
    finally:
        await agent_bus.aclose()
        await bus.aclose()


@pytest.mark.parametrize("stream", [subjects.JOBS_STREAM, subjects.EVENTS_STREAM])
async def test_a_backup_completes_once_when_a_stream_leader_is_killed(
    nats_cluster: NatsCluster, tmp_path: Path, stream: str
) -> None:
    out = await kill_during_backup(nats_cluster, tmp_path, stream=stream)
    assert out.status_at_fault == "running", out  # the fault struck during the backup
    assert out.status == "completed", out
    assert (out.backups, out.started_events, out.completed_events) == (1, 1, 1), out


async def test_a_backup_completes_once_across_a_whole_cluster_restart(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    src = source_tree(tmp_path / "src")
    target = LocalTargetConfig(path=str(tmp_path / "repo"), upload_limit=UPLOAD_LIMIT)
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    url = nats_cluster.url
    async with running_stack(url, tmp_path, target, src, catalog_url=catalog_url) as st:
        out = await backup_through_fault(
            st, catalog_url, restart_cluster(nats_cluster), inspect=st.bus
        )
    assert out.status_at_fault == "running", out
    assert out.status == "completed", out
    # resumed, or redelivered and run again: either way one backup, one completion
    assert (out.backups, out.completed_events) == (1, 1), out


async def test_nats_config_cluster_with_agent_accounts_survives_a_dead_server(
    tmp_path: Path,
) -> None:
    out = tmp_path / "nats"
    routes = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    ports = [free_port() for _ in range(3)]
    req = ClusterRequest(
        agents=["db1"],
        coordinator_user="coordinator",
        operator_user="operator",
        role_users={},
        listen="127.0.0.1",
        port=4222,
        store_dir=None,
        tls=None,
        nkeys_dir=None,
    )
    confs = write_cluster(out, req, "n1,n2,n3", routes, ",".join(map(str, ports)))
    assert [c.stat().st_mode & 0o777 for c in confs] == [0o600] * 3
    assert (out / "creds" / "route.password").stat().st_mode & 0o777 == 0o600
    urls = [f"nats://127.0.0.1:{p}" for p in ports]
    creds = out / "creds"
    with (
        nats_from_config(confs[0], ports[0], tmp_path / "n1.log") as n1,
        nats_from_config(confs[1], ports[1], tmp_path / "n2.log"),
        nats_from_config(confs[2], ports[2], tmp_path / "n3.log"),
    ):
        pw = (creds / "coordinator.password").read_text().strip()
        wait_for_meta_leader([u.replace("//", f"//coordinator:{pw}@") for u in urls])
        src = source_tree(tmp_path / "src")
        target = LocalTargetConfig(path=str(tmp_path / "repo"), upload_limit=UPLOAD_LIMIT)
        catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
        async with running_stack(
            ",".join(urls),
            tmp_path,
            target,
            src,
            catalog_url=catalog_url,
            agent_name="db1",
            agent_user="db1",
            agent_password_file=str(creds / "db1.password"),
            coordinator_user="coordinator",
            coordinator_password_file=str(creds / "coordinator.password"),
            client_user="coordinator",
            client_password=pw,
        ) as st:

            async def kill_n1() -> str:
                n1.kill()
                n1.wait()
                return "SIGKILL n1"

            outcome = await backup_through_fault(st, catalog_url, kill_n1, inspect=st.bus)
            replicas = await _replicas(st.bus, subjects.JOBS_STREAM)  # retried: n1 is gone
    assert outcome.status_at_fault == "running", outcome
    assert outcome.status == "completed", outcome
    assert (outcome.backups, outcome.completed_events) == (1, 1), outcome
    assert replicas == 3


async def test_kill_leader_fault_names_the_server_it_killed(
    nats_cluster: NatsCluster,
) -> None:
    bus = await Bus.connect(nats_cluster.url, name="t")
    try:
        await bus.ensure_streams()
        did = await kill_leader_of(nats_cluster, bus, subjects.JOBS_STREAM)()
    finally:
        await bus.aclose()
    (dead,) = [i for i in range(3) if i not in nats_cluster.alive()]
    assert did == f"SIGKILL n{dead + 1}, leader of {subjects.JOBS_STREAM}"


def test_nats_url_takes_a_list_and_names_the_bad_entry_without_credentials(
    tmp_path: Path,
) -> None:
    from shared.config.load import load
    from shared.errors import ConfigError

    good = tmp_path / "good.toml"
    good.write_text('nats_url = "nats://n1:4222, nats://n2:4222,tls://n3:4222"\n')
    assert load(good, CoordinatorConfig).nats_url.count(",") == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('nats_url = "nats://n1:4222,http://u:hunter2@n2:4222"\n')
    with pytest.raises(ConfigError) as exc:
        load(bad, CoordinatorConfig)
    line = str(exc.value)
    assert "nats_url" in line and "entry 2 of 2" in line and "'http://n2:4222'" in line, line
    assert "hunter2" not in line and "\n" not in line
    refused = tmp_path / "r.toml"
    refused.write_text("stream_replicas = 6\n")
    with pytest.raises(ConfigError, match=r"stream_replicas': 6 is outside 1\.\.5"):
        load(refused, CoordinatorConfig)


def test_operator_nats_flag_takes_the_list_and_the_refusal_names_it(
    nats_cluster: NatsCluster,
) -> None:
    from tests.harness import cli

    r = cli("status", "--nats", nats_cluster.url, "--connect-timeout", "5", timeout=60)
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()[-1]
    assert f"no coordinator is answering on NATS at {nats_cluster.url}" in line, r.stderr
    assert "the server list is --nats's" in line, r.stderr
    bad = cli("status", "--nats", f"{nats_cluster.urls[0]},ftp://x:1", timeout=60)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
    assert "--nats: entry 2 of 2, 'ftp://x:1' has scheme 'ftp'" in bad.stderr, bad.stderr


def test_nats_config_command_writes_one_config_per_server(tmp_path: Path) -> None:
    from tests.harness import cli

    out = tmp_path / "nats"
    r = cli(
        "nats-config",
        "--agents",
        "db1",
        "--out",
        str(out),
        "--servers",
        "n1,n2,n3",
        "--cluster-hosts",
        "h1,h2,h3:7222",
    )
    assert r.returncode == 0, r.stderr
    assert "nats_url = 'nats://h1:4222,nats://h2:4222,nats://h3:4222'" in r.stdout
    route_pw = (out / "creds" / "route.password").read_text().strip()
    for name in ("n1", "n2", "n3"):
        conf = (out / name / "nats-server.conf").read_text()
        assert f'server_name: "{name}"' in conf
        assert f"nats-route://route:{route_pw}@h3:7222" in conf
        assert (out / name / "nats-server.conf").stat().st_mode & 0o777 == 0o600
    assert route_pw not in r.stdout + r.stderr
    wrong = cli("nats-config", "--agents", "a", "--out", str(tmp_path / "x"), "--servers", "n1,n2")
    assert wrong.returncode != 0 and "--servers needs --cluster-hosts" in wrong.stderr
