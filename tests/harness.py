"""Helpers for integration tests: configs, in-process services, CLI subprocesses, trees."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import open_catalog
from coordinator.service import Coordinator
from engine.storage.open import open_target
from shared.bus import Bus
from shared.config.agent import AgentConfig, HookConfig
from shared.config.coordinator import CatalogConfig, CoordinatorConfig, DatasetConfig, HttpConfig
from shared.config.targets import LocalTargetConfig, S3TargetConfig, TargetConfig
from shared.wire.sources import FilesSource, Source

REPO_ROOT = Path(__file__).resolve().parent.parent


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_tree(root: Path, *, big_mib: int = 5) -> Path:
    """Files that exercise the awkward cases: empty files and folders, symlinks (also
    dangling), nested folders, modes, and a file of several chunks."""
    rnd = __import__("random").Random(7)
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a" / "b" / "empty-inner").mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "a" / "hello.txt").write_text("hello world\n" * 100)
    (root / "a" / "b" / "c" / "deep.json").write_text('{"k": [1, 2, 3]}\n')
    (root / "big.bin").write_bytes(rnd.randbytes(big_mib << 20))
    (root / "big-copy.bin").write_bytes((root / "big.bin").read_bytes())
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o750)
    os.chmod(root / "a" / "hello.txt", 0o600)
    os.symlink("a/hello.txt", root / "link-to-hello")
    os.symlink("/does/not/exist", root / "dangling")
    os.symlink("a/b", root / "link-to-dir")
    (root / "name with spaces & ünïcødé.txt").write_text("x\n")
    return root


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def target_toml(name: str, cfg: TargetConfig) -> str:
    if isinstance(cfg, LocalTargetConfig):
        return f'[targets.{name}]\ntype = "local"\npath = "{cfg.path}"\n'
    assert isinstance(cfg, S3TargetConfig)
    return (
        f'[targets.{name}]\ntype = "s3"\nbucket = "{cfg.bucket}"\nprefix = "{cfg.prefix}"\n'
        f'endpoint_url = "{cfg.endpoint_url}"\nregion = "{cfg.region}"\n'
        f'access_key_id = "{cfg.access_key_id}"\nsecret_access_key = "{cfg.secret_access_key}"\n'
    )


def agent_toml(
    path: Path,
    *,
    name: str,
    nats_url: str,
    key_file: Path,
    targets: dict[str, TargetConfig],
    extra: str = "",
) -> Path:
    body = f'name = "{name}"\nnats_url = "{nats_url}"\nkey_file = "{key_file}"\n{extra}\n'
    body += "".join(target_toml(n, t) for n, t in targets.items())
    return write_toml(path, body)


@dataclass
class Stack:
    bus: Bus
    agent: AgentConfig
    coordinator: CoordinatorConfig
    dataset: str
    source: Path | Source
    http_url: str | None = None  # the coordinator's HTTP API, when asked for


def _source(source: Path | Source) -> Source:
    return FilesSource(path=str(source)) if isinstance(source, Path) else source


@asynccontextmanager
async def running_stack(
    nats_url: str,
    work: Path,
    target: TargetConfig,
    source: Path | Source,
    *,
    catalog_url: str | None = None,
    with_agent: bool = True,
    agent_name: str | None = None,
    http: bool = False,
    hooks: HookConfig | None = None,
    agent_user: str | None = None,
    agent_password_file: str | None = None,
    coordinator_user: str | None = None,
    coordinator_password_file: str | None = None,
    client_user: str | None = None,
    client_password: str | None = None,
) -> AsyncIterator[Stack]:
    """A coordinator and (optionally) an agent in this process, for one dataset; with
    ``http``, the coordinator also serves its HTTP API on a free loopback port. The
    ``*_user`` arguments connect each part as that NATS user (``nats-config``)."""
    name = agent_name or unique("agent")
    dataset = unique("ds")
    agent_cfg = AgentConfig(
        name=name,
        nats_url=nats_url,
        key_file=str(work / "repo.key"),
        targets={"t": target},
        ack_wait_s=5.0,
        progress_interval_s=0.2,
        hooks={dataset: hooks} if hooks else {},
        nats_user=agent_user,
        nats_password_file=agent_password_file,
    )
    coord_cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=catalog_url or f"sqlite:///{work / 'catalog.db'}"),
        datasets={dataset: DatasetConfig(agent=name, target="t", source=_source(source))},
        http=HttpConfig(port=0, anonymous=True) if http else None,
        nats_user=coordinator_user,
        nats_password_file=coordinator_password_file,
    )
    catalog = await open_catalog(coord_cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            coordinator = Coordinator(coord_cfg, catalog)
            await tg.start(coordinator.run)
            port = coordinator.http_port
            http_url = f"http://127.0.0.1:{port}" if port is not None else None
            runner = None
            if with_agent:
                targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
                key, _ = await prepare_key(agent_cfg, targets)
                runner = AgentRunner(agent_cfg, key, targets)
                await tg.start(runner.run)
            bus = await Bus.connect(
                nats_url, name="test", user=client_user, password=client_password
            )
            try:
                yield Stack(bus, agent_cfg, coord_cfg, dataset, source, http_url)
            finally:
                await bus.aclose()
                if runner is not None:
                    await runner.aclose()
                tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


def cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``mosaic-backup`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "mosaic.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with (size, mtime_ns), to prove nothing was written."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_mtime_ns)
    return out
