"""``mosaic-backup check``: the strategy's validation checklist, from the coordinator.

One line per item of the checklist (coordinator/checklist.py computes it, the same
answer as ``GET /api/v1/check``) with pass / fail / unknown and its evidence, then the
items behind every line that did not pass. Exit 0 when no line fails, 1 when one does
(with ``--strict`` also when one is unknown); ``--json`` prints the report itself.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mosaic.commands._options import add_nats_args, operator_bus

if TYPE_CHECKING:
    from rich.console import Console

    from shared.wire.check import CheckReport

HELP = "the validation checklist: pass / fail / unknown with evidence"
DESCRIPTION = (
    "Check the whole estate against the strategy's checklist: recent backups, coverage, "
    "maintenance windows, keys, replication, 3-2-1, restore drills, verify, free space. "
    "Exit 1 when a line fails (with --strict also when one is unknown)."
)
_STYLE = {"pass": "green", "fail": "bold red", "unknown": "yellow"}
ITEMS_SHOWN = 10  # per line in the table view; --json has them all


def register(p: argparse.ArgumentParser) -> None:
    add_nats_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true", help="unknown lines fail too (exit 1)")
    p.add_argument(
        "--all",
        dest="all_items",
        action="store_true",
        help="list every item behind each line, passing ones too (default: the others)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="give up when the coordinator has not answered in S seconds (default 60)",
    )


def exit_code(report: CheckReport, *, strict: bool) -> int:
    bad = {"fail", "unknown"} if strict else {"fail"}
    return 1 if any(line.status in bad for line in report.lines) else 0


def show(report: CheckReport, out: Console, *, all_items: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"checklist of {report.coordinator}", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("evidence", overflow="fold")
    for line in report.lines:
        verdict = f"[{_STYLE[line.status]}]{line.status}[/]"
        table.add_row(escape(line.title), verdict, escape(line.evidence))
    out.print(table)
    for line in report.lines:
        shown = [i for i in line.items if all_items or i.status != "pass"]
        for item in shown if all_items else shown[:ITEMS_SHOWN]:
            out.print(
                f"{item.status}: {line.name}: {item.subject}: {item.evidence}",
                markup=False,
                highlight=False,
            )
        more = line.failed + line.unknown - min(len(shown), ITEMS_SHOWN)
        if more > 0 and not all_items:
            out.print(f"{line.name}: {more} more not passing (see --json)", markup=False)
    out.print(f"overall: {report.status}", markup=False, highlight=False)


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    import msgspec

    from shared.errors import OperatorError
    from shared.wire.api import ApiError
    from shared.wire.check import CheckReport, CheckRequest

    async with operator_bus(args) as bus:
        reply = await bus.request("check", CheckRequest(), timeout=args.timeout)
    if isinstance(reply, ApiError):
        raise OperatorError(f"check: the coordinator refused: {reply.message}")
    if not isinstance(reply, CheckReport):
        raise OperatorError(
            f"check: unexpected reply {type(reply).__name__} (is the coordinator older "
            "than this command? upgrade it)"
        )
    report = reply
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(report)).decode())
    else:
        show(report, out, all_items=args.all_items)
    code = exit_code(report, strict=args.strict)
    if code and not args.json:
        why = "a line failed" if report.status == "fail" else "a line is unknown (--strict)"
        err.print(f"check: {why}", markup=False, highlight=False)
    return code
