"""``mosaic-backup status``: the health of every dataset, from the coordinator."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mosaic.commands._options import add_nats_args, operator_bus

if TYPE_CHECKING:
    from rich.console import Console

HELP = "health of every dataset"


def register(p: argparse.ArgumentParser) -> None:
    add_nats_args(p)


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic import operator

    async with operator_bus(args) as bus:
        await operator.status(bus, out)
    return 0
