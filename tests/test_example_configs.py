"""The shipped example configs (deploy/*.toml.example) load with the real loader and show
every setting a deployment needs, including the commented-out NATS credentials and TLS
lines: uncommented, they load too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mosaic.setup.pki import init_ca, issue
from shared.config.agent import AgentConfig
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load
from tests.harness import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def uncomment_nats(text: str) -> str:
    """The example with its ``# nats_…`` lines switched on."""
    return re.sub(r"^# (nats_\w+ = )", r"\1", text, flags=re.MULTILINE)


def test_coordinator_example_loads_with_maintenance_alerts_and_wal_spool() -> None:
    cfg = load(DEPLOY / "coordinator.toml.example", CoordinatorConfig)
    assert cfg.maintenance is not None
    assert cfg.maintenance.replicate == {"local": ["offsite"]}
    assert cfg.maintenance.target_tiers["offsite"] == "remote"
    assert cfg.alerts.storage_min_free == 0.20 and cfg.alerts.disabled == []
    pg = cfg.datasets["db1-postgres"].source
    assert getattr(pg, "wal_spool", None) == "/var/lib/mosaic-backup/wal"
    text = (DEPLOY / "coordinator.toml.example").read_text()
    assert "archive_command = 'mosaic-backup wal-archive --spool /var/lib/mosaic-backup/wal" in text


def test_agent_example_loads_with_heartbeat_and_state_dir() -> None:
    cfg = load(DEPLOY / "agent.toml.example", AgentConfig)
    assert cfg.heartbeat_interval_s == 30.0
    assert cfg.state_dir == "/var/lib/mosaic-backup/agent"
    assert set(cfg.targets) == {"local", "offsite"}


@pytest.mark.parametrize(
    ("name", "kind", "fields"),
    [
        ("coordinator.toml.example", CoordinatorConfig, 5),
        ("agent.toml.example", AgentConfig, 6),
    ],
)
def test_commented_nats_lines_load_when_switched_on(
    tmp_path: Path, name: str, kind: type[AgentConfig | CoordinatorConfig], fields: int
) -> None:
    text = (DEPLOY / name).read_text()
    on = uncomment_nats(text)
    assert len(on.splitlines()) == len(text.splitlines())
    # the files they name, made where the test can write: what `mosaic-backup pki` and
    # `nats-config` would have put under /etc/mosaic-backup
    pki = tmp_path / "pki"
    init_ca(pki)
    issue(pki, "coordinator" if kind is CoordinatorConfig else "web1")
    (tmp_path / "nats").mkdir()
    for secret in ("coordinator.password", "web1.password"):
        (tmp_path / "nats" / secret).write_text("not-a-real-password\n")
    on = on.replace("/etc/mosaic-backup/pki/", f"{pki}/").replace(
        "/etc/mosaic-backup/nats/", f"{tmp_path / 'nats'}/"
    )
    path = tmp_path / name.removesuffix(".example")
    path.write_text(on)
    if kind is AgentConfig:
        # one way to authenticate: a password or an NKEY seed, not both
        path.write_text(re.sub(r"^nats_nkey_seed_file = .*$", "", on, flags=re.MULTILINE))
        fields -= 1
    cfg = load(path, kind)
    values = [getattr(cfg, f) for f in ("nats_user", "nats_password_file")]
    values += [getattr(cfg, f"nats_tls_{p}") for p in ("ca", "cert", "key")]
    assert sum(v is not None for v in values) == fields
