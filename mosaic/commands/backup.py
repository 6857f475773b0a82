"""``mosaic-backup backup --dataset NAME``: ask the coordinator for a backup now and
follow it (:func:`mosaic.operator.backup`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, get_args

from mosaic.commands._options import add_nats_args, as_arg, operator_bus, wait_args
from shared.vocab import Tier

if TYPE_CHECKING:
    from rich.console import Console

HELP = "back up one dataset now"


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="dataset name from coordinator.toml")
    p.add_argument(
        "--type",
        choices=["full", "incremental"],
        default="incremental",
        dest="backup_type",
        help="incremental skips files unchanged since the last backup (default); "
        "full reads everything again",
    )
    p.add_argument(
        "--tier",
        choices=list(get_args(Tier)),
        default=None,
        help="retention tier to keep this backup as (default: weekly for a full backup, "
        "daily for an incremental one)",
    )
    as_arg(p)
    add_nats_args(p)
    wait_args(p)


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic import operator

    async with operator_bus(args) as bus:
        await operator.backup(
            bus,
            args.dataset,
            args.backup_type,
            out,
            err,
            wait=not args.no_wait,
            timeout=args.timeout,
            tier=args.tier,
            requested_by=args.requested_by,
        )
    return 0
