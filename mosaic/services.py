"""Start the long-running roles from their config files."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from rich.console import Console

from shared.config.agent import AgentConfig
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load

if TYPE_CHECKING:
    from agent.runner import AgentRunner

log = logging.getLogger(__name__)


async def until_sigterm(main: Callable[[], Awaitable[None]]) -> None:
    """Run a daemon until it ends or SIGTERM arrives (systemd's and docker's stop).

    SIGTERM cancels the daemon like any cancellation: its cleanup runs (snapshots are
    removed, a running job is handed back to JetStream for redelivery, the NATS
    connection drains, buffered spans are exported) and the process exits 0.
    """
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    log.info("SIGTERM received: stopping")
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        await main()
        tg.cancel_scope.cancel()


CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"  # set by systemd for a unit with LoadCredential=
# The credential a unit may carry the key file's passphrase in (install-systemd
# --passphrase-file): read when $MOSAIC_PASSPHRASE is not set.
PASSPHRASE_CREDENTIAL = "passphrase"


def credentials_dir() -> str | None:
    """systemd's credentials directory for this service, when it has one."""
    import os

    return os.environ.get(CREDENTIALS_ENV) or None


def passphrase() -> str | None:
    """The key file's passphrase: $MOSAIC_PASSPHRASE, else the unit's ``passphrase``
    credential (one line; the trailing newline dropped), else None."""
    import os
    from pathlib import Path

    from engine.keys.files import PASSPHRASE_ENV
    from shared.errors import ConfigError

    value = os.environ.get(PASSPHRASE_ENV)
    creds = credentials_dir()
    if value is not None or creds is None:
        return value
    path = Path(creds) / PASSPHRASE_CREDENTIAL
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"passphrase credential {path} cannot be read: {exc.strerror} (check the "
            "unit's LoadCredential=passphrase:… line)"
        ) from exc


async def run_coordinator(path: str) -> None:
    from coordinator.catalog import open_catalog
    from coordinator.service import Coordinator

    cfg = load(path, CoordinatorConfig, credentials=credentials_dir())
    catalog = await open_catalog(cfg.catalog.url)
    try:
        await until_sigterm(Coordinator(cfg, catalog).run)
    finally:
        await catalog.aclose()


async def start_agent(path: str, err: Console) -> AgentRunner:
    """Everything the agent does before it serves jobs: config, state folder, key, and a
    look at every target. A target that is down is reported (one line on ``err``, in
    the log and in heartbeats) and wrapped so its jobs fail at once; the agent starts
    anyway, so the datasets of its other targets keep being backed up."""
    from agent.keysetup import check_repositories, key_notice, prepare_key, prepare_state_dir
    from agent.runner import AgentRunner
    from agent.target_health import DownTarget
    from engine.storage.base import Target
    from engine.storage.open import open_target

    cfg = load(path, AgentConfig, credentials=credentials_dir())
    prepare_state_dir(cfg.state_dir)  # 0700 before anything is cached in it
    targets: dict[str, Target] = {n: open_target(n, t) for n, t in cfg.targets.items()}
    key, created = await prepare_key(cfg, targets, passphrase())
    if created:
        err.print(key_notice(cfg.key_file))
    down = await check_repositories(cfg, key, targets)
    for name, why in down.items():
        err.print(
            f"target '{name}' is down, its jobs will fail until it answers: {why}",
            markup=False,
            highlight=False,
        )
        targets[name] = DownTarget(name, targets[name], why)
    return AgentRunner(cfg, key, targets)


async def run_agent(path: str, err: Console) -> None:
    runner = await start_agent(path, err)
    try:
        await until_sigterm(runner.run)
    finally:
        await runner.aclose()


async def run_console(path: str) -> None:
    """The operators' console (``[web]`` in coordinator.toml), a process of its own."""
    from coordinator.web.server import Console

    cfg = load(path, CoordinatorConfig, credentials=credentials_dir())
    await until_sigterm(Console(cfg).run)
