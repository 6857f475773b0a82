"""``mosaic-backup restore BACKUP_ID --to DIR``: restore on the agent that made the backup
and follow it (:func:`mosaic.operator.restore`)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mosaic.commands._options import add_nats_args, as_arg, operator_bus, paths_arg, wait_args

if TYPE_CHECKING:
    from rich.console import Console

HELP = "restore a backup on the agent that made it"


def _instant(text: str) -> datetime:
    """``--pitr``: an ISO 8601 instant with its zone (a bare time would be ambiguous)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time; write e.g. 2026-11-26T10:00:00Z"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone; add Z (UTC) or an offset like +01:00"
        )
    return when.astimezone(UTC)


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("backup_id", metavar="BACKUP_ID")
    p.add_argument(
        "--to",
        required=True,
        dest="destination",
        help="absolute path of a new or empty folder on the agent's host",
    )
    paths_arg(p)
    p.add_argument(
        "--pitr",
        type=_instant,
        default=None,
        metavar="TIME",
        help="database datasets: replay archived logs up to TIME (ISO 8601 with a zone, "
        "e.g. 2026-11-26T10:00:00Z); restoring a log backup without it replays all",
    )
    as_arg(p)
    add_nats_args(p)
    wait_args(p)


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic import operator

    async with operator_bus(args) as bus:
        await operator.restore(
            bus,
            args.backup_id,
            args.destination,
            out,
            err,
            wait=not args.no_wait,
            timeout=args.timeout,
            paths=args.paths,
            pitr=args.pitr,
            requested_by=args.requested_by,
        )
    return 0
