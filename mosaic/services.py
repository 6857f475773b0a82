"""Start the long-running roles from their config files."""

from __future__ import annotations

import logging

from rich.console import Console

from shared import config

log = logging.getLogger(__name__)


async def run_coordinator(path: str) -> None:
    from coordinator.catalog import open_catalog
    from coordinator.service import Coordinator

    cfg = config.load(path, config.CoordinatorConfig)
    catalog = await open_catalog(cfg.catalog.url)
    try:
        await Coordinator(cfg, catalog).run()
    finally:
        await catalog.aclose()


async def run_agent(path: str, err: Console) -> None:
    import os

    from agent.runner import AgentRunner, check_repositories, key_notice, prepare_key
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
        await runner.run()
    finally:
        await runner.aclose()
