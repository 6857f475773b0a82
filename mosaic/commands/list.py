"""``mosaic-backup list``: the backups in the coordinator's catalog, as a table."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mosaic.commands._options import add_nats_args, operator_bus

if TYPE_CHECKING:
    from rich.console import Console

HELP = "list backups in the catalog"


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=int, default=None, help="only the last N days")
    p.add_argument("--dataset", default=None, help="only this dataset")
    add_nats_args(p)


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic import operator
    from mosaic.commands.status import window_notes
    from shared.wire.api import StatusRequest
    from shared.wire.status import StatusReply

    async with operator_bus(args) as bus:
        await operator.list_backups(bus, out, days=args.days, dataset=args.dataset)
        # the newest scheduled run of each dataset that went past its window's end
        st = await bus.request("status", StatusRequest())
    if isinstance(st, StatusReply):
        for line in window_notes(st, args.dataset):
            out.print(line, markup=False, highlight=False)
    return 0
