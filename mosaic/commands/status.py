"""``mosaic-backup status``: the health of every dataset, from the coordinator.

Below the table (``mosaic.operator.status``): which coordinator is active and since when,
the datasets still pending their first backup, and scheduled runs the scheduler skipped
(missed while it was down, or superseded by a newer run of the same schedule)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mosaic.commands._options import add_nats_args, operator_bus

if TYPE_CHECKING:
    from rich.console import Console

    from shared.wire.status import StatusReply

HELP = "health of every dataset"


def register(p: argparse.ArgumentParser) -> None:
    add_nats_args(p)


def notes(st: StatusReply) -> list[str]:
    """The lines printed below the table (plain text, one fact each)."""
    if st.active_coordinator is None:
        lines = ["active coordinator: none known (no lease holder, or an older coordinator)"]
    else:
        since = st.active_since.isoformat(timespec="seconds") if st.active_since else "unknown"
        lines = [f"active coordinator: {st.active_coordinator} since {since}"]
    if st.datasets_pending:
        waiting = ", ".join(d.dataset for d in st.datasets if d.pending) or "see the API"
        lines.append(f"pending (no backup yet, not due yet): {st.datasets_pending}: {waiting}")
    for d in st.datasets:
        for s in d.skipped_runs:
            first = s.first.isoformat(timespec="minutes") if s.first else "?"
            last = s.last.isoformat(timespec="minutes") if s.last else "?"
            lines.append(
                f"skipped: {d.dataset} {s.tier} {s.backup_type}: {s.count} run(s) due "
                f"{first} .. {last} ({s.reason})"
            )
    return lines


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic import operator

    async with operator_bus(args) as bus:
        st = await operator.status(bus, out)
    for line in notes(st):
        out.print(line, markup=False, highlight=False)
    return 0
