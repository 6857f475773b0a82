"""``mosaic-backup verify [BACKUP_ID | --dataset D | --all]``: check backups now, on the
agents that hold the keys.

The coordinator (``mosaic.api.verify``) sends a verify job to the agent that verifies
the dataset's target on schedule (``[maintenance] agent``, else the dataset's own):
one backup, or every backup of the dataset on its target; ``--all`` sends one job per
dataset the coordinator knows. ``--read-data`` downloads packs and authenticates every
blob (``--subset N%``: a seeded share of them); without it the checks are structural
(manifests, trees, index, pack sizes), as ``repo verify`` without ``--read-data``. The
result is recorded like a scheduled verify (``drill report``'s sibling: the catalog's
maintenance results) and raises or resolves ``verify_failed`` for that dataset.

The summary table has one row per job; ``--detailed`` adds every damaged object (pack,
manifest, index segment) with what is wrong with it, the backups it breaks and the
repair command. Exit codes: 0 every verify passed, 1 damage found or a job failed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mosaic.commands._options import add_nats_args, as_arg, operator_bus, wait_args

if TYPE_CHECKING:
    from rich.console import Console

    from mosaic.fleet import Outcome
    from shared.bus import Bus
    from shared.wire.events import VerifyCompleted

HELP = "verify backups now, on the agents that hold the keys"


def percent(text: str) -> float:
    """``--subset`` value: ``N%`` (or ``N``) with 0 < N <= 100 (as ``repo verify``)."""
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage like 10%") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: choose a share above 0% and up to 100%")
    return value


def register(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("backup_id", nargs="?", default=None, metavar="BACKUP_ID")
    which.add_argument("--dataset", metavar="D", help="every backup of dataset D")
    which.add_argument("--all", action="store_true", help="every dataset of the coordinator")
    p.add_argument(
        "--read-data",
        action="store_true",
        help="download the packs and check every blob (default: structure only)",
    )
    p.add_argument(
        "--subset",
        type=percent,
        default=None,
        metavar="N%",
        help="with --read-data: read a seeded random N%% of the packs (default 100%%)",
    )
    p.add_argument(
        "--detailed",
        action="store_true",
        help="list every damaged object, what is wrong with it and the backups it breaks",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the results (the default; see --no-wait)"
    )
    wait_args(p, timeout=3600.0)
    as_arg(p)
    add_nats_args(p)


def _one_row(o: Outcome, ev: VerifyCompleted) -> None:
    o.duration_s = (ev.at - ev.started_at).total_seconds() if ev.started_at else None
    o.bytes = ev.bytes_read
    scope = f"{ev.backups} backup(s), {ev.packs_read}/{ev.packs} packs read"
    if ev.damaged:
        o.result = f"DAMAGED: {ev.damaged} object(s)"
        o.detail = f"{scope}; damaged: {', '.join(ev.damaged_objects[:5])}"
    else:
        o.ok, o.result = True, f"passed: {scope}"


def _detail(out: Console, dataset: str, ev: VerifyCompleted) -> None:
    from rich.table import Table
    from rich.text import Text

    if ev.findings:
        t = Table(title=f"{dataset}: damaged objects")
        for col in ("object", "what is wrong", "backups", "files", "repair"):
            t.add_column(col, overflow="fold")
        for f in ev.findings:
            t.add_row(
                f.obj,
                Text("\n".join(f.messages)),
                "\n".join(f.backups) or "—",
                f"{f.files:,}",
                f.repair or "—",
            )
        out.print(t)
    elif ev.damaged:  # an agent that predates findings: names only
        out.print(f"{dataset}: damaged: {', '.join(ev.damaged_objects)}", markup=False)
    broken = {b for f in ev.findings for b in f.backups} | set(ev.damaged_backups)
    checked = ev.checked or sorted(broken)
    t = Table(title=f"{dataset}: backups ({ev.backups} checked)")
    t.add_column("backup")
    t.add_column("result")
    for b in checked:
        objs = [f.obj for f in ev.findings if b in f.backups]
        t.add_row(b, Text(f"DAMAGED: {', '.join(objs) or 'see above'}" if b in broken else "ok"))
    if checked:
        out.print(t)
    else:
        out.print(f"{dataset}: {ev.backups} backup(s) checked, none damaged", markup=False)


async def verify_many(
    bus: Bus,
    requests: list[tuple[str, str | None]],
    out: Console,
    err: Console,
    *,
    args: argparse.Namespace,
) -> int:
    """One verify job per (dataset, backup id or None); the summary table; exit code."""
    from mosaic import fleet
    from mosaic.ui.display import who
    from shared.wire.api import ApiError, JobAccepted, VerifyRequest
    from shared.wire.events import VerifyCompleted

    rows: list[fleet.Outcome] = []
    for dataset, backup_id in requests:
        o = fleet.Outcome(backup_id or dataset)
        rows.append(o)
        req = VerifyRequest(
            dataset=None if backup_id else dataset,
            backup_id=backup_id,
            read_data=args.read_data,
            subset=args.subset or 100.0,
            requested_by=who(args.requested_by),
        )
        reply = await bus.request("verify", req)
        if isinstance(reply, JobAccepted):
            o.job_id, o.agent, o.ok, o.result = reply.job_id, reply.agent, True, "sent"
            err.print(f"verify job {reply.job_id} sent to agent {reply.agent}")
        else:
            o.result = "refused"
            o.detail = reply.message if isinstance(reply, ApiError) else type(reply).__name__
    results: list[tuple[str, VerifyCompleted]] = []
    if not args.no_wait:
        for o in rows:
            if not o.job_id:
                continue
            o.ok = False
            ev = await fleet.watch(
                bus,
                o,
                err,
                timeout=args.timeout,
                label=f"verify {o.dataset}",
                final=(VerifyCompleted,),
            )
            if isinstance(ev, VerifyCompleted):
                _one_row(o, ev)
                results.append((o.dataset, ev))
    code = fleet.print_outcomes(out, err, f"verify of {len(rows)} job(s)", rows, "read")
    if args.detailed:
        for name, ev in results:
            _detail(out, name, ev)
    return code


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic import fleet
    from shared.errors import OperatorError

    if args.subset is not None and not args.read_data:
        raise OperatorError("--subset needs --read-data (it is the share of packs to read)")
    if args.wait and args.no_wait:
        raise OperatorError("--wait and --no-wait contradict each other: give one")
    requests: list[tuple[str, str | None]]
    async with operator_bus(args) as bus:
        if args.all:
            requests = [(name, None) for name in await fleet.choose(bus, host=None)]
        elif args.dataset is not None:
            requests = [(args.dataset, None)]
        else:
            requests = [("", args.backup_id)]
        return await verify_many(bus, requests, out, err, args=args)
