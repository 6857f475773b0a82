"""``mosaic-backup console run --config coordinator.toml``: the operators' web console
(``[web]``), in a process of its own beside the coordinator."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mosaic.commands._options import daemon_args

if TYPE_CHECKING:
    from rich.console import Console

HELP = "the operators' web console ([web] in coordinator.toml)"


def register(p: argparse.ArgumentParser) -> None:
    daemon_args(p, "console", "coordinator.toml")


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic.services import run_console

    await run_console(args.config)
    return 0
