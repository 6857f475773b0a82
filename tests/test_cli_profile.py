"""The operator profile and ``--version``, through the real ``mosaic-backup`` process.

A nats-server runs from the config ``mosaic-backup nats-config`` writes (a password per
user); a coordinator and an agent connect as their users. Operator commands (status,
backup, list, drill run) then succeed with ``--profile FILE`` alone, or with the profile
found through ``$MOSAIC_PROFILE`` or the default path, and fail in one line without it.
A profile that names a missing file, or holds a key it should not (a password itself),
is refused in one line naming the file and the key. Where each setting comes from
(flag > ``$MOSAIC_NATS_*`` > profile > default) is checked on plain values.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import anyio.to_thread
import pytest

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import open_catalog
from coordinator.service import Coordinator
from engine.storage.open import open_target
from mosaic.commands._options import add_nats_args, nats_client_config
from shared.config.agent import AgentConfig
from shared.config.coordinator import (
    CatalogConfig,
    CoordinatorConfig,
    DatasetConfig,
    MaintenanceConfig,
)
from shared.config.targets import LocalTargetConfig
from shared.natsserver import free_port
from shared.wire.sources import FilesSource
from tests.fixtures.nats_conf import nats_from_config
from tests.harness import cli, make_tree, unique
from tests.test_maintenance_jobs import OFF

AGENT = "profagent"


@dataclass
class SecuredNats:
    url: str
    out: Path  # nats-server.conf and creds/ (written by nats-config)

    def creds(self, user: str) -> str:
        return str(self.out / "creds" / f"{user}.password")


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNats]:
    out = tmp_path_factory.mktemp("nats-profile")
    port = free_port()
    made = cli(
        *("nats-config", "--agents", AGENT, "--out", str(out)),
        *("--listen", "127.0.0.1", "--port", str(port)),
    )
    assert made.returncode == 0, made.stderr
    with nats_from_config(out / "nats-server.conf", port, out / "nats-server.log"):
        yield SecuredNats(f"nats://127.0.0.1:{port}", out)


@asynccontextmanager
async def secured_stack(nats: SecuredNats, work: Path) -> AsyncIterator[str]:
    """A coordinator and the agent, each as its own NATS user; yields the dataset."""
    dataset = unique("ds")
    agent_cfg = AgentConfig(
        name=AGENT,
        nats_url=nats.url,
        nats_user=AGENT,
        nats_password_file=nats.creds(AGENT),
        key_file=str(work / "repo.key"),
        targets={"t": LocalTargetConfig(path=str(work / "repo"))},
        ack_wait_s=5.0,
    )
    source = FilesSource(path=str(make_tree(work / "src", big_mib=1)))
    coord_cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats.url,
        nats_user="coordinator",
        nats_password_file=nats.creds("coordinator"),
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={dataset: DatasetConfig(agent=AGENT, target="t", source=source)},
        maintenance=MaintenanceConfig(**OFF, drill_scratch=str(work / "scratch")),
    )
    catalog = await open_catalog(coord_cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(Coordinator(coord_cfg, catalog).run)
            targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
            key, _ = await prepare_key(agent_cfg, targets)
            runner = AgentRunner(agent_cfg, key, targets)
            await tg.start(runner.run)
            try:
                yield dataset
            finally:
                await runner.aclose()
                tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


def write_profile(path: Path, nats: SecuredNats, extra: str = "") -> Path:
    """A profile as an operator writes it: the password file relative to the profile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(nats.creds("operator"), path.parent)
    path.write_text(
        f'nats_url = "{nats.url}"\nnats_user = "operator"\n'
        f'nats_password_file = "{rel}"\nconnect_timeout_s = 5.0\n{extra}'
    )
    return path


def no_profile_env(home: Path) -> dict[str, str]:
    """No profile and no NATS variables reach the command (empty counts as unset; the
    default profile is looked for under ``home``)."""
    unset = ("MOSAIC_PROFILE", "MOSAIC_NATS_URL", "MOSAIC_NATS_USER", "MOSAIC_NATS_PASSWORD_FILE")
    return {"XDG_CONFIG_HOME": str(home), "HOME": str(home)} | dict.fromkeys(unset, "")


async def mosaic(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    done = await anyio.to_thread.run_sync(functools.partial(cli, *args, env=env))
    return done.returncode, done.stdout, done.stderr


async def test_operator_commands_need_only_the_profile(
    secured_nats: SecuredNats, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = no_profile_env(home)
    profile = write_profile(tmp_path / "profiles" / "ops.toml", secured_nats)
    password = Path(secured_nats.creds("operator")).read_text().strip()
    async with secured_stack(secured_nats, tmp_path) as dataset:
        code, out, err = await mosaic("status", "--nats", secured_nats.url, env=env)
        assert code == 1 and err.count("\n") == 1, err
        assert err.startswith("mosaic-backup: error: ") and "without credentials" in err, err

        code, out, err = await mosaic("status", "--profile", str(profile), env=env)
        assert code == 0, err
        assert dataset in out
        code, out, err = await mosaic(
            *("backup", "--dataset", dataset, "--type", "full", "--profile", str(profile)),
            env=env,
        )
        assert code == 0, err
        found = re.search(r"^\s*backup (\S+)", out, re.MULTILINE)  # the summary's title
        assert found, out
        backup_id = found.group(1)
        code, out, err = await mosaic("drill", "run", dataset, "--profile", str(profile), env=env)
        assert code == 0, err
        assert f"drill of {dataset}: PASSED" in out and backup_id in out

        by_env = env | {"MOSAIC_PROFILE": str(profile)}
        code, out, err = await mosaic("list", "--dataset", dataset, env=by_env)
        assert code == 0, err
        assert backup_id in out
        write_profile(home / "mosaic-backup" / "operator.toml", secured_nats)
        code, out, err = await mosaic("drill", "report", "--dataset", dataset, env=env)
        assert code == 0, err
        assert "passed" in out
    assert password not in out + err


def test_a_missing_named_profile_is_one_line_exit_2(tmp_path: Path) -> None:
    env = no_profile_env(tmp_path)
    gone = tmp_path / "nowhere.toml"
    for args, extra in (
        (("status", "--profile", str(gone)), {}),
        (("list",), {"MOSAIC_PROFILE": str(gone)}),
    ):
        done = cli(*args, env=env | extra)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert str(gone) in done.stderr and "does not exist" in done.stderr


def test_a_profile_key_that_is_not_a_setting_is_refused_in_one_line(
    secured_nats: SecuredNats, tmp_path: Path
) -> None:
    profile = write_profile(tmp_path / "p.toml", secured_nats, 'nats_password = "hunter2"\n')
    done = cli("status", "--profile", str(profile), env=no_profile_env(tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert str(profile) in done.stderr and "nats_password" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_version() -> None:
    done = cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"mosaic-backup {version('mosaic-backup')}\n"


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_nats_args(p)
    return p.parse_args(argv)


def test_flag_beats_variable_beats_profile_beats_default(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text(
        'nats_url = "nats://profile:4222"\nnats_user = "prof"\n'
        'nats_password_file = "pw"\nnats_tls_ca = "/abs/ca.crt"\n'
    )
    env = {"XDG_CONFIG_HOME": str(tmp_path / "none")}
    assert nats_client_config(_args(), env).nats_url == "nats://127.0.0.1:4222"
    with_profile = env | {"MOSAIC_PROFILE": str(profile), "MOSAIC_NATS_USER": "var"}
    cfg = nats_client_config(_args(), with_profile)
    assert (cfg.nats_url, cfg.nats_user) == ("nats://profile:4222", "var")
    assert cfg.nats_password_file == str(tmp_path / "pw")  # relative to the profile
    assert cfg.nats_tls_ca == "/abs/ca.crt"
    assert cfg.connect_timeout_s == 10.0
    cfg = nats_client_config(
        _args("--nats-user", "flag", "--nats", "nats://flag:1", "--connect-timeout", "2"),
        with_profile,
    )
    assert (cfg.nats_url, cfg.nats_user, cfg.connect_timeout_s) == ("nats://flag:1", "flag", 2)
    default = tmp_path / "home" / "mosaic-backup" / "operator.toml"
    default.parent.mkdir(parents=True)
    default.write_text('nats_url = "nats://default:4222"\n')
    home = {"XDG_CONFIG_HOME": str(tmp_path / "home")}
    assert nats_client_config(_args(), home).nats_url == "nats://default:4222"
