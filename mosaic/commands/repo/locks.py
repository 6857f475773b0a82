"""``repo locks``: the leases in a repository, who holds them, and whether they still run.

A lease (engine/lease.py) is how a running backup or prune tells garbage
collection "I am here". A writer killed with SIGKILL leaves its lease behind until it
expires (ttl, 15 minutes by default); GC already treats a lease whose holder is provably
gone as gone, and ``--clear-dead`` removes such leases for good. Liveness is only
*dead* when this host can prove it (same host and pid namespace, the pid not running or
another process); a lease from another host is *unknown*, and only its expiry ends it,
so ``--clear-dead`` never removes a lease a running writer on another host may hold.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.lease import LeaseRecord, clear_dead, liveness, read_leases
from mosaic.commands.repo._common import common_args, opened
from shared.errors import TargetError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("locks", help="list leases with their holders' liveness")
    common_args(p)
    p.add_argument(
        "--clear-dead",
        action="store_true",
        help="remove the leases whose holder is provably gone (same host, process ended)",
    )
    p.set_defaults(func=locks_cmd)


def _table(found: list[LeaseRecord], now: datetime) -> Table:
    t = Table(title="leases")
    for col in ("lease", "kind", "holder", "host", "pid", "started", "expires", "liveness"):
        t.add_column(col, overflow="fold")
    for r in found:
        x = r.info
        state, why = liveness(x)
        expires = f"{x.expires:%Y-%m-%d %H:%M:%S}"
        if r.expired(now):
            expires += " (expired)"
        t.add_row(
            x.lease_id,
            x.purpose,
            x.holder,
            x.host or "?",
            str(x.pid or "?"),
            f"{x.started:%Y-%m-%d %H:%M:%S}",
            expires,
            Text(f"{state}: {why}"),
        )
    return t


async def locks_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    if not out.is_terminal:
        out.width = max(out.width, 200)
    async with opened(args) as repo:
        found, unreadable = await read_leases(repo.target, repo.keys)
        now = datetime.now(UTC)
        out.print(_table(found, now))
        for key in unreadable:
            out.print(f"{key}: unreadable lease (garbage collection removes it)", highlight=False)
        counts = dict.fromkeys(("alive", "dead", "unknown"), 0)
        for r in found:
            counts[liveness(r.info)[0]] += 1
        out.print(
            f"{len(found)} leases: {counts['alive']} alive, {counts['dead']} dead, "
            f"{counts['unknown']} unknown (times in UTC)",
            highlight=False,
        )
        if not args.clear_dead:
            if counts["dead"]:
                out.print("remove the dead ones with `repo locks --clear-dead`", highlight=False)
            return 0
        try:
            gone = await clear_dead(repo.target, repo.keys)
        except TargetError as exc:
            err.print(f"cannot clear dead leases: {exc}", highlight=False, soft_wrap=True)
            return 1
        for r in gone:
            out.print(
                f"cleared lease {r.info.lease_id} ({r.info.purpose} by {r.info.holder}, "
                f"pid {r.info.pid} on {r.info.host}): {liveness(r.info)[1]}",
                highlight=False,
                soft_wrap=True,
            )
        out.print(f"cleared {len(gone)} dead leases", highlight=False)
    return 0
