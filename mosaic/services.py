"""Start the long-running roles from their config files."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable

import anyio
from rich.console import Console

from shared import config

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


async def run_coordinator(path: str) -> None:
    from coordinator.catalog import open_catalog
    from coordinator.service import Coordinator

    cfg = config.load(path, config.CoordinatorConfig)
    catalog = await open_catalog(cfg.catalog.url)
    try:
        await until_sigterm(Coordinator(cfg, catalog).run)
    finally:
        await catalog.aclose()


async def run_agent(path: str, err: Console) -> None:
    import os

    from agent.keysetup import check_repositories, key_notice, prepare_key
    from agent.runner import AgentRunner
    from shared.repository.keys import PASSPHRASE_ENV
    from shared.targets import open_target

    cfg = config.load(path, config.AgentConfig)
    targets = {n: open_target(n, t) for n, t in cfg.targets.items()}
    key, created = await prepare_key(cfg, targets, os.environ.get(PASSPHRASE_ENV))
    if created:
        err.print(key_notice(cfg.key_file))
    await check_repositories(cfg, key, targets)
    runner = AgentRunner(cfg, key, targets)
    try:
        await until_sigterm(runner.run)
    finally:
        await runner.aclose()
