"""``mosaic-backup agent run --config agent.toml``: the per-host daemon."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mosaic.commands._options import daemon_args

if TYPE_CHECKING:
    from rich.console import Console

HELP = "the per-host daemon"


def register(p: argparse.ArgumentParser) -> None:
    daemon_args(p, "agent", "agent.toml")


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic.services import run_agent

    await run_agent(args.config, err)
    return 0
