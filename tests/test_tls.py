"""NATS over TLS with certificates from ``mosaic-backup pki``, against a real nats-server.

The server runs from the config ``mosaic-backup nats-config --tls-…`` writes (users,
permissions, and a ``tls`` block that verifies client certificates), so what is tested is
what a deployment gets: an agent and a coordinator with the CA and their own certificates
back up and restore; a client without the CA, or without a certificate, is refused in one
line that names the URL and the TLS problem.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import open_catalog
from coordinator.service import Coordinator
from engine.storage.open import open_target
from mosaic import operator
from mosaic.compare import tree_differences
from mosaic.setup.natsconfig import TlsFiles, write_config
from mosaic.setup.pki import init_ca, issue
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import CatalogConfig, CoordinatorConfig, DatasetConfig
from shared.config.load import load
from shared.config.targets import LocalTargetConfig, TargetConfig
from shared.errors import BusError, ConfigError
from shared.nats_credentials import nats_tls
from shared.natsserver import free_port
from shared.wire.events import BackupCompleted, RestoreCompleted
from shared.wire.sources import FilesSource
from tests.fixtures.nats_conf import nats_from_config
from tests.harness import cli, make_tree, unique

AGENT = "tlsagent"
QUIET = Console(quiet=True)


@dataclass
class TlsNats:
    url: str
    pki: Path
    creds: Path

    def password_file(self, user: str) -> str:
        return str(self.creds / f"{user}.password")

    def password(self, user: str) -> str:
        return (self.creds / f"{user}.password").read_text().strip()

    def files(self, user: str) -> dict[str, Any]:
        """The ``nats_tls_*`` config fields of ``user``."""
        return {
            "nats_tls_ca": str(self.pki / "ca.crt"),
            "nats_tls_cert": str(self.pki / f"{user}.crt"),
            "nats_tls_key": str(self.pki / f"{user}.key"),
        }


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNats]:
    out = tmp_path_factory.mktemp("nats-tls")
    pki = out / "pki"
    init_ca(pki)
    issue(pki, "nats", server=True, hosts=["127.0.0.1", "localhost"])
    for user in (AGENT, "coordinator", "operator"):
        issue(pki, user)
    port = free_port()
    tls = TlsFiles(cert=pki / "nats.crt", key=pki / "nats.key", ca=pki / "ca.crt", verify=True)
    conf = write_config(out, [AGENT], host="127.0.0.1", port=port, tls=tls)
    with nats_from_config(conf, port, out / "nats-server.log"):
        yield TlsNats(f"nats://127.0.0.1:{port}", pki, out / "creds")


@asynccontextmanager
async def tls_stack(
    nats: TlsNats, work: Path, target: TargetConfig, source: Path, *, catalog_url: str | None = None
) -> AsyncIterator[tuple[Bus, str, Coordinator]]:
    """A coordinator, an agent and an operator client, each with its own user and
    certificate; yields the operator's bus, the dataset and the coordinator."""
    dataset = unique("ds")
    agent_cfg = AgentConfig(
        name=AGENT,
        nats_url=nats.url,
        key_file=str(work / "repo.key"),
        targets={"t": target},
        ack_wait_s=5.0,
        progress_interval_s=0.2,
        nats_user=AGENT,
        nats_password_file=nats.password_file(AGENT),
        **nats.files(AGENT),
    )
    coord_cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats.url,
        catalog=CatalogConfig(url=catalog_url or f"sqlite:///{work / 'catalog.db'}"),
        datasets={
            dataset: DatasetConfig(agent=AGENT, target="t", source=FilesSource(path=str(source)))
        },
        nats_user="coordinator",
        nats_password_file=nats.password_file("coordinator"),
        **nats.files("coordinator"),
    )
    op = CoordinatorConfig(**nats.files("operator"))  # only to build the operator's context
    catalog = await open_catalog(coord_cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            coordinator = Coordinator(coord_cfg, catalog)
            await tg.start(coordinator.run)
            targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
            key, _ = await prepare_key(agent_cfg, targets)
            runner = AgentRunner(agent_cfg, key, targets)
            await tg.start(runner.run)
            bus = await Bus.connect(
                nats.url,
                name="operator",
                user="operator",
                password=nats.password("operator"),
                tls=nats_tls(op),
            )
            try:
                yield bus, dataset, coordinator
            finally:
                await bus.aclose()
                await runner.aclose()
                tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


async def test_backup_and_restore_over_tls(tls_nats: TlsNats, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with tls_stack(tls_nats, tmp_path, target, src) as (bus, dataset, _):
        done = await operator.backup(bus, dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        dest = tmp_path / "restored"
        res = await operator.restore(bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60)
        assert isinstance(res, RestoreCompleted)
    assert tree_differences(src, dest) == []


async def test_client_without_the_ca_is_refused_in_one_line(tls_nats: TlsNats) -> None:
    with pytest.raises(BusError) as err:
        await Bus.connect(
            tls_nats.url, name="x", user="operator", password=tls_nats.password("operator")
        )
    message = str(err.value)
    assert tls_nats.url in message and "TLS handshake failed" in message
    assert "certificate verify failed" in message and "\n" not in message
    assert tls_nats.password("operator") not in message
    assert not err.value.retryable


async def test_client_without_a_certificate_is_refused(tls_nats: TlsNats) -> None:
    ca_only = CoordinatorConfig(nats_tls_ca=str(tls_nats.pki / "ca.crt"))
    with pytest.raises(BusError) as err:
        await Bus.connect(
            tls_nats.url,
            name="x",
            user="operator",
            password=tls_nats.password("operator"),
            tls=nats_tls(ca_only),
            timeout=5,
        )
    message = str(err.value)
    assert tls_nats.url in message and "\n" not in message
    assert "TLS handshake failed" in message and "certificate required" in message


def test_cli_without_the_ca_prints_one_line(tls_nats: TlsNats) -> None:
    done = cli("status", "--nats", tls_nats.url, "--connect-timeout", "5")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert tls_nats.url in done.stderr and "TLS handshake failed" in done.stderr
    assert "Traceback" not in done.stderr


def test_pki_keys_are_private_and_never_overwritten(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert cli("pki", "init", str(pki)).returncode == 0
    made = cli("pki", "issue", str(pki), "nats1", "--server", "--host", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    for key in ("ca.key", "nats1.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600
    before = (pki / "ca.key").read_bytes()
    again = cli("pki", "init", str(pki))
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and "ca.crt exists already" in again.stderr
    assert (pki / "ca.key").read_bytes() == before
    twice = cli("pki", "issue", str(pki), "nats1", "--server", "--host", "127.0.0.1")
    assert twice.returncode == 1 and "nats1.crt exists already" in twice.stderr
    no_host = cli("pki", "issue", str(pki), "nats2", "--server")
    assert no_host.returncode == 1 and "--host" in no_host.stderr


def test_bad_tls_path_names_the_field(tmp_path: Path, tls_nats: TlsNats) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'name = "a"\nkey_file = "{tmp_path / "k"}"\nnats_tls_ca = "{tmp_path / "nope.crt"}"\n'
        f'[targets.t]\ntype = "local"\npath = "{tmp_path}"\n'
    )
    with pytest.raises(ConfigError) as err:
        load(conf, AgentConfig)
    assert "field 'nats_tls_ca'" in str(err.value) and str(conf) in str(err.value)
    files = tls_nats.files(AGENT)
    half = CoordinatorConfig(nats_tls_ca=files["nats_tls_ca"], nats_tls_cert=files["nats_tls_cert"])
    with pytest.raises(ConfigError, match="field 'nats_tls_key'"):
        nats_tls(half)
    crossed = CoordinatorConfig(
        nats_tls_cert=files["nats_tls_cert"], nats_tls_key=str(tls_nats.pki / "operator.key")
    )
    with pytest.raises(ConfigError, match="field 'nats_tls_cert'"):
        nats_tls(crossed)


def test_nats_config_writes_the_tls_block(tls_nats: TlsNats, tmp_path: Path) -> None:
    pki = tls_nats.pki
    args = ["nats-config", "--agents", "web1", "--out", str(tmp_path / "a")]
    tls = ["--tls-cert", str(pki / "nats.crt"), "--tls-key", str(pki / "nats.key")]
    done = cli(*args, *tls, "--tls-ca", str(pki / "ca.crt"), "--tls-verify")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "a" / "nats-server.conf").read_text()
    assert f'cert_file: "{pki / "nats.crt"}"' in text and "verify: true" in text
    assert f'ca_file: "{pki / "ca.crt"}"' in text
    no_ca = cli(*args[:-1], str(tmp_path / "b"), *tls, "--tls-verify")
    assert no_ca.returncode == 1 and no_ca.stderr.count("\n") == 1
    assert "--tls-verify needs --tls-ca" in no_ca.stderr
    assert not (tmp_path / "b" / "nats-server.conf").exists()
