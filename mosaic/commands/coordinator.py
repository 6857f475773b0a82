"""``mosaic-backup coordinator run --config coordinator.toml``: the central service."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mosaic.commands._options import daemon_args

if TYPE_CHECKING:
    from rich.console import Console

HELP = "the central service"


def register(p: argparse.ArgumentParser) -> None:
    daemon_args(p, "coordinator", "coordinator.toml")


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic.services import run_coordinator

    await run_coordinator(args.config)
    return 0
