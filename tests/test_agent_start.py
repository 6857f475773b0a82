"""An agent starts while one of its targets is unreachable (issue 15).

One agent serves every dataset of its host. Here it has a local folder and a remote
target (SFTP or S3) whose port is closed: the agent's real start function
(``mosaic.services.start_agent``, what ``mosaic-backup agent run`` calls) starts against
a real nats-server and coordinator, says in one line that the remote is down, reports it
down in its heartbeat, fails a backup to it in one line — and a backup to the local
folder completes and restores byte for byte. When the S3 endpoint comes up on that port,
the next backup to it completes without restarting the agent.
"""

from __future__ import annotations

import io
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from moto.server import ThreadedMotoServer
from rich.console import Console

from agent.runner import AgentRunner
from coordinator.catalog import open_catalog
from coordinator.service import Coordinator
from engine.keys.files import create_key_file, load_any_key_file
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.open import open_target
from mosaic import operator
from mosaic.compare import tree_differences
from mosaic.services import start_agent
from shared import subjects
from shared.bus import Bus
from shared.config.coordinator import CatalogConfig, CoordinatorConfig, DatasetConfig
from shared.config.targets import LocalTargetConfig
from shared.errors import OperatorError
from shared.wire.events import BackupCompleted
from shared.wire.monitoring import Heartbeat, heartbeat_decoder
from shared.wire.sources import FilesSource
from tests.fixtures.s3 import ACCESS_KEY, REGION, SECRET_KEY, s3_client
from tests.harness import make_tree, unique

QUIET = Console(quiet=True)
WAIT_S = 30.0  # upper bound of the waits below; each ends as soon as its state is seen


@contextmanager
def closed_port() -> Iterator[tuple[int, socket.socket]]:
    """A loopback port that refuses connections: bound (so nothing else takes it) but
    never listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1], s
    finally:
        s.close()


def sftp_toml(port: int, work: Path) -> str:
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    known = work / "known_hosts"  # some host key: the connection is refused before it matters
    known.write_text(f"[127.0.0.1]:{port} {(work / 'id_ed25519.pub').read_text()}")
    return (
        f'[targets.remote]\ntype = "sftp"\nhost = "127.0.0.1"\nport = {port}\n'
        f'user = "backup"\npath = "/backup/repo"\nkey_file = "{key}"\n'
        f'known_hosts = "{known}"\n'
    )


def s3_toml(port: int, bucket: str) -> str:
    return (
        f'[targets.remote]\ntype = "s3"\nbucket = "{bucket}"\nprefix = "repo"\n'
        f'endpoint_url = "http://127.0.0.1:{port}"\nregion = "{REGION}"\n'
        f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n'
    )


@dataclass
class Host:
    bus: Bus
    runner: AgentRunner
    said: io.StringIO  # what the agent's start printed on stderr
    heartbeat: Heartbeat  # the first one it sent
    local: LocalTargetConfig
    key_file: Path
    ds_local: str
    ds_remote: str


@asynccontextmanager
async def host_with_two_targets(
    nats_url: str, work: Path, source: Path, remote_toml: str
) -> AsyncIterator[Host]:
    name = unique("agent")
    ds_local, ds_remote = unique("ds-local"), unique("ds-remote")
    local = LocalTargetConfig(path=str(work / "local-repo"))
    # An established host: its key exists (a first start must see every target to know
    # whether a repository is there before it makes a key; agent/keysetup.prepare_key).
    key_file = work / "repo.key"
    create_key_file(key_file, None)
    agent_toml = work / "agent.toml"
    agent_toml.write_text(
        f'name = "{name}"\nnats_url = "{nats_url}"\nkey_file = "{key_file}"\n'
        f'state_dir = "{work / "state"}"\nack_wait_s = 5.0\nprogress_interval_s = 0.2\n'
        f'[targets.local]\ntype = "local"\npath = "{local.path}"\n{remote_toml}'
    )
    files = FilesSource(path=str(source))
    coord_cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={
            ds_local: DatasetConfig(agent=name, target="local", source=files),
            ds_remote: DatasetConfig(agent=name, target="remote", source=files),
        },
    )
    catalog = await open_catalog(coord_cfg.catalog.url)
    said = io.StringIO()
    bus = await Bus.connect(nats_url, name="test")
    try:
        heartbeats = await bus.nc.subscribe(subjects.heartbeat(name))
        async with anyio.create_task_group() as tg:
            await tg.start(Coordinator(coord_cfg, catalog).run)
            runner = await start_agent(str(agent_toml), Console(file=said, width=300))
            await tg.start(runner.run)
            try:
                with anyio.fail_after(WAIT_S):
                    first = heartbeat_decoder.decode((await heartbeats.next_msg(WAIT_S)).data)
                yield Host(bus, runner, said, first, local, key_file, ds_local, ds_remote)
            finally:
                await runner.aclose()
                tg.cancel_scope.cancel()
    finally:
        await bus.aclose()
        await catalog.aclose()


async def assert_local_backup_restores(host: Host, source: Path, work: Path) -> None:
    done = await operator.backup(host.bus, host.ds_local, "full", QUIET, QUIET)
    assert isinstance(done, BackupCompleted) and done.target == "local"
    repo = await Repository.open(open_target("local", host.local), load_any_key_file(host.key_file))
    await restore_tree(repo, await repo.load_manifest(done.backup_id), work / "restored")
    assert tree_differences(source, work / "restored") == []


async def assert_remote_backup_fails_in_one_line(host: Host) -> str:
    with pytest.raises(OperatorError) as failed:
        await operator.backup(host.bus, host.ds_remote, "full", QUIET, QUIET)
    message = str(failed.value)
    assert "target 'remote' is down" in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("kind", ["sftp", "s3"])
async def test_agent_starts_and_backs_up_while_one_target_is_unreachable(
    nats_url: str, tmp_path: Path, kind: str
) -> None:
    source = make_tree(tmp_path / "src", big_mib=2)
    with closed_port() as (port, _):
        remote = sftp_toml(port, tmp_path) if kind == "sftp" else s3_toml(port, "mosaic-down")
        async with host_with_two_targets(nats_url, tmp_path, source, remote) as host:
            lines = host.said.getvalue().splitlines()
            down = [line for line in lines if "target 'remote' is down" in line]
            assert len(down) == 1, lines
            assert f"127.0.0.1:{port}" in down[0] or "refused" in down[0].lower(), down[0]

            by_name = {t.name: t for t in host.heartbeat.targets}
            assert by_name["remote"].down is not None
            assert by_name["local"].down is None and by_name["local"].free is not None

            await assert_remote_backup_fails_in_one_line(host)
            await assert_local_backup_restores(host, source, tmp_path)


async def test_a_target_that_comes_up_is_used_without_restarting_the_agent(
    nats_url: str, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "src", big_mib=1)
    bucket = f"late-{unique('b')}"
    with closed_port() as (port, reserved):
        async with host_with_two_targets(nats_url, tmp_path, source, s3_toml(port, bucket)) as host:
            await assert_remote_backup_fails_in_one_line(host)
            reserved.close()  # free the port for the server that now comes up
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            try:
                s3_client(f"http://127.0.0.1:{port}").create_bucket(Bucket=bucket)
                done = await operator.backup(host.bus, host.ds_remote, "full", QUIET, QUIET)
                assert isinstance(done, BackupCompleted) and done.target == "remote"
                remote = host.runner.targets["remote"]
                assert getattr(remote, "down", "missing") is None  # recovered in place
                await assert_local_backup_restores(host, source, tmp_path)
            finally:
                server.stop()
