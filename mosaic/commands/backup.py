"""``mosaic-backup backup --dataset NAME | --all | --host H``: ask the coordinator for
backups now and follow them.

One dataset: :func:`mosaic.operator.backup` (progress, then the backup's summary). Many
(``--all``: every dataset the coordinator knows; ``--host H``: those of agent ``H``, or of
the agents whose heartbeats report host name ``H``): one job per dataset, all sent first
(:mod:`mosaic.fleet`), each followed with its progress bar, then one table (dataset, job
id, result, duration, bytes read); exit 1 when any of them failed."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, get_args

from mosaic.commands._options import add_nats_args, as_arg, operator_bus, wait_args
from shared.vocab import Tier

if TYPE_CHECKING:
    from rich.console import Console

    from shared.bus import Bus
    from shared.vocab import BackupType

HELP = "back up one dataset, a host's datasets or all of them now"


def register(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--dataset", help="dataset name from coordinator.toml")
    which.add_argument("--all", action="store_true", help="every dataset of the coordinator")
    which.add_argument(
        "--host",
        metavar="H",
        help="the datasets of agent H (or of the agents whose host name is H)",
    )
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
    p.add_argument("--wait", action="store_true", help="follow the jobs to their end (the default)")
    as_arg(p)
    add_nats_args(p)
    wait_args(p)


async def backup_many(
    bus: Bus,
    datasets: list[str],
    backup_type: BackupType,
    out: Console,
    err: Console,
    *,
    wait: bool = True,
    timeout: float = 600.0,
    tier: Tier | None = None,
    requested_by: str | None = None,
) -> int:
    """One backup job per dataset; with ``wait``, the summary table. The exit code."""
    from mosaic import fleet
    from mosaic.operator import until_cataloged
    from mosaic.ui.display import who
    from shared.wire.api import ApiError, BackupRequest, JobAccepted
    from shared.wire.events import BackupCompleted

    rows = [fleet.Outcome(name) for name in datasets]
    for o in rows:  # all sent first: the agents work side by side
        req = BackupRequest(
            dataset=o.dataset, backup_type=backup_type, tier=tier, requested_by=who(requested_by)
        )
        reply = await bus.request("backup", req)
        if isinstance(reply, JobAccepted):
            o.job_id, o.agent, o.result = reply.job_id, reply.agent, "sent"
            o.ok = True
            err.print(f"backup job {reply.job_id} sent to agent {reply.agent}")
        else:
            o.result = "refused"
            o.detail = reply.message if isinstance(reply, ApiError) else type(reply).__name__
    if wait:
        for o in rows:
            if not o.job_id:
                continue
            o.ok = False
            ev = await fleet.watch(
                bus, o, err, timeout=timeout, label=f"backup {o.dataset}", final=(BackupCompleted,)
            )
            if isinstance(ev, BackupCompleted):
                await until_cataloged(bus, ev, err)
                o.ok, o.result = True, f"ok: {ev.backup_id}"
                o.duration_s, o.bytes = ev.summary.duration_s, ev.summary.bytes_read
    title = f"backup of {len(rows)} dataset(s)" + ("" if wait else " (sent, not followed)")
    return fleet.print_outcomes(out, err, title, rows, "read")


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic import fleet, operator
    from shared.errors import OperatorError

    if args.wait and args.no_wait:
        raise OperatorError("--wait and --no-wait contradict each other: give one")
    async with operator_bus(args) as bus:
        if args.dataset is None:
            names = await fleet.choose(bus, host=args.host)
            return await backup_many(
                bus,
                names,
                args.backup_type,
                out,
                err,
                wait=not args.no_wait,
                timeout=args.timeout,
                tier=args.tier,
                requested_by=args.requested_by,
            )
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
