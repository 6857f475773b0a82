"""The container deployment files agree with each other and with the program.

No image can be built or pulled here, so this checks what can be checked without
Docker: every config a service mounts exists and loads with the real config loader,
every service's command parses with the real CLI parser, and the addresses, ports,
bucket, database and tracing endpoint named in one place match the others.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from mosaic.cli import build_parser
from mosaic.setup import systemd
from shared.config.agent import AgentConfig
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load
from shared.config.targets import S3TargetConfig
from shared.wire.sources import PostgresSource
from tests.harness import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
CONFIG_KIND: dict[str, type[Any]] = {"coordinator": CoordinatorConfig, "agent": AgentConfig}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return doc


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    assert isinstance(env, dict), "write environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def _default(value: str) -> str:
    """``${VAR:-default}`` → ``default`` (what compose uses without a .env)."""
    m = re.fullmatch(r"\$\{[A-Z_]+:-([^}]*)\}", value)
    return m.group(1) if m else value


def _mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path → file in the repository, for bind mounts of ./… paths."""
    out = {}
    for vol in svc.get("volumes", []):
        src, dst, *_ = vol.split(":")
        if src.startswith("./"):
            out[dst] = DEPLOY / src
    return out


def _loaded(compose: dict[str, Any], role: str) -> Any:
    svc = compose["services"][role]
    args = build_parser().parse_args(svc["command"])
    assert (args.command, args.action) == (role, "run")
    mounts = _mounts(svc)
    assert args.config in mounts, f"{role}: --config {args.config} is not mounted"
    return load(mounts[args.config], CONFIG_KIND[role])


def _published(svc: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[1]) for p in svc.get("ports", [])}


def test_every_mounted_config_exists_and_loads(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"nats", "postgres", "minio", "minio-init", "jaeger", "coordinator", "agent"} <= set(
        services
    )
    for name, svc in services.items():
        for dst, src in _mounts(svc).items():
            assert src.is_file(), f"service {name} mounts {src}, which is not in the repository"
            assert src.parent == DEPLOY / "compose", f"{name}: keep mounted configs in compose/"
            assert dst.startswith("/etc/mosaic-backup/"), dst
    coord = _loaded(compose, "coordinator")
    agent = _loaded(compose, "agent")
    assert isinstance(coord, CoordinatorConfig) and isinstance(agent, AgentConfig)
    assert coord.datasets, "the compose coordinator should have something to back up"


def test_addresses_ports_and_names_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    coord: CoordinatorConfig = _loaded(compose, "coordinator")
    agent: AgentConfig = _loaded(compose, "agent")

    # NATS: both roles reach the nats service with JetStream on its client port
    nats_cmd = services["nats"]["command"]
    assert "-js" in nats_cmd
    for url in (coord.nats_url, agent.nats_url, _env(services["agent"])["MOSAIC_NATS_URL"]):
        u = urlsplit(url)
        assert (u.scheme, u.hostname, u.port) == ("nats", "nats", 4222), url

    # the catalog is the postgres service's database, its password only in the environment
    pg_env = _env(services["postgres"])
    cat = urlsplit(coord.catalog.url)
    assert cat.scheme == "postgresql" and cat.hostname == "postgres" and cat.port == 5432
    assert cat.username == pg_env["POSTGRES_USER"] and cat.password is None
    assert cat.path.lstrip("/") == pg_env["POSTGRES_DB"]
    assert _env(services["coordinator"])["PGPASSWORD"] == pg_env["POSTGRES_PASSWORD"]
    assert {"postgres", "nats"} <= set(services["coordinator"]["depends_on"])

    # the HTTP API listens inside the container on the port the compose file publishes
    assert coord.http is not None and coord.http.listen == "0.0.0.0"
    assert coord.http.port in _published(services["coordinator"])

    # every dataset belongs to the sidecar agent and one of its targets
    for name, ds in coord.datasets.items():
        assert ds.agent == agent.name, name
        assert ds.target in agent.targets, name
        if isinstance(ds.source, PostgresSource):
            assert ds.source.host == "postgres" and ds.source.user == pg_env["POSTGRES_USER"]
            assert _env(services["agent"])["PGPASSWORD"] == pg_env["POSTGRES_PASSWORD"]

    # the S3 target is the minio service, its bucket made by minio-init, keys from the env
    minio_env = _env(services["minio"])
    agent_env = _env(services["agent"])
    init_cmd = " ".join(services["minio-init"]["command"])
    for tname, target in agent.targets.items():
        assert isinstance(target, S3TargetConfig), tname
        ep = urlsplit(target.endpoint_url or "")
        assert (ep.hostname, ep.port) == ("minio", 9000)
        assert f"local/{target.bucket}" in init_cmd
        assert target.access_key_id is None and target.secret_access_key is None
    assert _default(agent_env["AWS_ACCESS_KEY_ID"]) == _default(minio_env["MINIO_ROOT_USER"])
    assert _default(agent_env["AWS_SECRET_ACCESS_KEY"]) == _default(
        minio_env["MINIO_ROOT_PASSWORD"]
    )
    assert services["agent"]["depends_on"]["minio-init"] == {
        "condition": "service_completed_successfully"
    }

    # the agent's key file is on a named volume, not in the image
    key_dir = str(Path(agent.key_file).parent)
    assert any(v.split(":")[1] == key_dir for v in services["agent"]["volumes"])
    assert key_dir not in _mounts(services["agent"])


def test_traces_go_to_jaeger(compose: dict[str, Any]) -> None:
    services = compose["services"]
    jaeger = services["jaeger"]
    assert _env(jaeger)["COLLECTOR_OTLP_ENABLED"] == "true"
    assert 4318 in _published(jaeger)
    names = set()
    for role in ("coordinator", "agent"):
        env = _env(services[role])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", role
        assert env["MOSAIC_LOG_FORMAT"] == "json", role
        names.add(env["OTEL_SERVICE_NAME"])
    assert len(names) == 2, "give each role its own service name in Jaeger"

    # and the test stack for developers runs the same Jaeger with OTLP
    test_stack = yaml.safe_load((REPO_ROOT / "docker-compose.test.yml").read_text())
    tj = test_stack["services"]["jaeger"]
    assert tj["image"] == jaeger["image"]
    assert _env(tj)["COLLECTOR_OTLP_ENABLED"] == "true"
    assert {4317, 4318} <= _published(tj)


def test_dockerfile_builds_both_roles_as_non_root(compose: dict[str, Any]) -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    stages = {name: image for image, name in re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)}
    assert stages["base"].startswith("python:3.11-slim")
    assert stages["agent"] == stages["coordinator"] == "base"
    for role in ("coordinator", "agent"):
        build = compose["services"][role]["build"]
        assert build["target"] == role and (DEPLOY / build["context"]).resolve() == REPO_ROOT
    assert 'ENTRYPOINT ["mosaic-backup"]' in text
    # every stage that the compose file runs ends as the unprivileged user
    for role in ("coordinator", "agent"):
        body = text.split(f"AS {role}\n", 1)[1].split("\nFROM ", 1)[0]
        users = re.findall(r"^USER (\S+)$", body, re.M)
        assert users and users[-1] == "mosaic", role
    agent_stage = text.split("AS agent\n", 1)[1]
    for tool in ("postgresql-client", "mariadb-client", "mariadb-backup", "redis-tools", "zstd"):
        assert tool in agent_stage, tool
    # the image gets the package from the source tree: every package folder is copied
    for pkg in ("shared", "agent", "coordinator", "mosaic"):
        assert f"COPY {pkg} ./{pkg}" in text
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored


SHIPPED_EXE = "/opt/mosaic-backup/venv/bin/mosaic-backup"


def test_shipped_systemd_units_are_what_install_systemd_writes_for_the_examples() -> None:
    """deploy/systemd/ is the generator's output for deploy/*.toml.example installed as
    /etc/mosaic-backup/*.toml, so the shipped units carry the same hardening and the
    same credentials handling as the ones `install-systemd` writes (docs/deployment.md)."""
    agent = load(DEPLOY / "agent.toml.example", AgentConfig)
    coord = load(DEPLOY / "coordinator.toml.example", CoordinatorConfig)
    units = DEPLOY / "systemd"
    expected = {
        "mosaic-backup-agent.service": systemd.agent_unit(
            SHIPPED_EXE, "/etc/mosaic-backup/agent.toml", agent
        ),
        "mosaic-backup-coordinator.service": systemd.coordinator_unit(
            SHIPPED_EXE, "/etc/mosaic-backup/coordinator.toml", coord
        ),
    }
    for name, text in expected.items():
        assert (units / name).read_text() == text, f"regenerate deploy/systemd/{name}"
    shipped = (units / "mosaic-backup-coordinator.service").read_text()
    assert (
        "LoadCredential=coordinator.toml:/etc/mosaic-backup/coordinator.toml" in shipped
        and "--config ${CREDENTIALS_DIRECTORY}/coordinator.toml" in shipped
    )
    single = systemd.single_host_units(
        SHIPPED_EXE, "/etc/mosaic-backup/agent.toml", ["/srv", "/etc"]
    )
    for name, text in single.items():
        assert (units / "single-host" / name).read_text() == text, name
