"""``mosaic-backup drill run DATASET`` and ``drill report``: restore drills on demand.

``run`` asks the coordinator for a drill (``mosaic.api.drill``): it picks a random backup
of the dataset from the past week (or ``--backup``), the dataset's agent restores it into
a scratch folder, checks it and removes it. The command follows the job's events and
prints the checks, RTO and RPO; it exits 1 when the drill failed. ``report`` lists past
drills from the catalog (``mosaic.api.maintenance``). ``host HOST`` drills every dataset
of a host to one point in time (:mod:`mosaic.commands.drill_host`); ``report --host
HOST`` prints its newest Markdown report.
"""

from __future__ import annotations

import argparse
from contextlib import aclosing
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from mosaic.commands import drill_host
from mosaic.commands._options import add_nats_args, as_arg, operator_bus, wait_args
from mosaic.commands.restore import _instant
from mosaic.ui.display import who
from shared.errors import OperatorError
from shared.wire.api import (
    ApiError,
    DrillRequest,
    JobAccepted,
    MaintenanceList,
    MaintenanceListRequest,
)
from shared.wire.events import DrillCompleted, JobFailed

if TYPE_CHECKING:
    from shared.bus import Bus


HELP = "restore drills: prove backups restore"


def register(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("run", help="restore a recent backup into scratch space and check it")
    a.add_argument("dataset", metavar="DATASET")
    a.add_argument("--backup", default=None, metavar="BACKUP_ID", help="drill this backup")
    wait_args(a, timeout=3600.0)
    as_arg(a)
    add_nats_args(a)
    a.set_defaults(func=run_cmd)
    a = actions.add_parser(
        "host", help="restore every dataset of a host to one point in time and check each"
    )
    a.add_argument("host", metavar="HOST", help="the agent that backs the datasets up")
    a.add_argument(
        "--pitr",
        type=_instant,
        default=None,
        metavar="TIME",
        help="the common point (ISO 8601 with a zone); default: the newest point every "
        "point-in-time dataset reaches",
    )
    a.add_argument(
        "--agent", default=None, help="restore there (default: [maintenance] agent, else HOST)"
    )
    a.add_argument("--report", default=None, metavar="FILE", help="write the Markdown report")
    wait_args(a, timeout=3 * 3600.0)
    as_arg(a)
    add_nats_args(a)
    a.set_defaults(func=drill_host.host_cmd)
    a = actions.add_parser("report", help="past drills: outcome, RTO, RPO, checks")
    a.add_argument("--dataset", default=None, help="only this dataset")
    a.add_argument(
        "--host", default=None, help="print the newest host drill's Markdown report of HOST"
    )
    a.add_argument("--limit", type=int, default=50, help="newest N drills (default 50)")
    add_nats_args(a)
    a.set_defaults(func=report_cmd)


def _secs(v: float | None) -> str:
    return "—" if v is None else f"{v:,.1f} s"


async def run_drill(
    bus: Bus,
    dataset: str,
    out: Console,
    err: Console,
    *,
    backup_id: str | None = None,
    wait: bool = True,
    timeout: float = 3600.0,
    requested_by: str | None = None,
) -> DrillCompleted | JobAccepted:
    req = DrillRequest(dataset=dataset, backup_id=backup_id, requested_by=who(requested_by))
    reply = await bus.request("drill", req)
    if isinstance(reply, ApiError):
        raise OperatorError(reply.message)
    if not isinstance(reply, JobAccepted):
        raise OperatorError(f"unexpected reply {type(reply).__name__}")
    err.print(f"drill job {reply.job_id} sent to agent {reply.agent}")
    if not wait:
        return reply
    with err.status(f"drill of {dataset}: restoring and checking on {reply.agent}"):
        async with aclosing(bus.watch_job(reply.job_id, timeout=timeout)) as events:
            async for ev in events:
                if isinstance(ev, JobFailed):
                    raise OperatorError(f"drill job {ev.job_id} failed on {ev.agent}: {ev.message}")
                if isinstance(ev, DrillCompleted):
                    out.print(_drill_table(ev))
                    return ev
    raise OperatorError(f"drill job {reply.job_id}: event stream ended")


def _drill_table(ev: DrillCompleted) -> Table:
    t = Table(title=f"drill of {ev.dataset}: {ev.outcome.upper()}")
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail")
    t.add_row("backup", ev.backup_id, f"on {ev.target}, agent {ev.agent}")
    t.add_row("RTO", _secs(ev.rto_s), "drill start → data restored and checked")
    t.add_row("RPO", _secs(ev.rpo_s), "age of the newest restorable backup")
    for c in ev.checks:
        t.add_row(c.name, "ok" if c.ok else "FAILED", c.detail)
    return t


async def run_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with operator_bus(args) as bus:
        ev = await run_drill(
            bus,
            args.dataset,
            out,
            err,
            backup_id=args.backup,
            wait=not args.no_wait,
            timeout=args.timeout,
            requested_by=args.requested_by,
        )
    if isinstance(ev, DrillCompleted) and ev.outcome != "passed":
        err.print(f"mosaic-backup: drill of {ev.dataset} FAILED (backup {ev.backup_id})")
        return 1
    return 0


async def report(bus: Bus, out: Console, *, dataset: str | None, limit: int) -> MaintenanceList:
    reply = await bus.request(
        "maintenance", MaintenanceListRequest(job_kind="drill", dataset=dataset, limit=limit)
    )
    if isinstance(reply, ApiError):
        raise OperatorError(reply.message)
    if not isinstance(reply, MaintenanceList):
        raise OperatorError(f"unexpected reply {type(reply).__name__}")
    t = Table(title=f"{len(reply.results)} drill(s)")
    for col in ("dataset", "backup", "when", "outcome", "RTO", "RPO", "checks"):
        t.add_column(col, justify="right" if col in ("RTO", "RPO") else "left")
    for r in reply.results:
        t.add_row(
            r.dataset,
            r.backup_id or "—",
            r.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            r.outcome,
            _secs(r.rto_s),
            _secs(r.rpo_s),
            r.summary,
        )
    out.print(t)
    return reply


async def report_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with operator_bus(args) as bus:
        if args.host is not None:
            res = await drill_host.print_report(bus, args.host, out)
            return 0 if res.outcome == "passed" else 1
        await report(bus, out, dataset=args.dataset, limit=args.limit)
    return 0
