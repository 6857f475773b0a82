"""``mosaic-backup status``: the health of every dataset, from the coordinator.

Below the table (``mosaic.operator.status``): which coordinator is active and since when,
the datasets still pending their first backup, and scheduled runs the scheduler skipped
(missed while it was down, or superseded by a newer run of the same schedule), and
scheduled runs that went past the end of their maintenance window, and the newest
whole-host drill of each host."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mosaic.commands._options import add_nats_args, operator_bus

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

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
    for h in st.host_drills:
        rto = f"RTO {h.rto_s:.1f} s" if h.rto_s is not None else "RTO ?"
        rpo = f"RPO {h.rpo_s:.0f} s" if h.rpo_s is not None else "RPO ?"
        when = h.finished_at.isoformat(timespec="minutes")
        lines.append(f"host drill {h.host}: {h.outcome.upper()} {when}, {rto}, {rpo} ({h.job_id})")
    return lines + window_notes(st)


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic import operator

    async with operator_bus(args) as bus:
        st = await operator.status(bus, out)
    for line in notes(st):
        out.print(line, markup=False, highlight=False)
    if st.unprotected:
        out.print(unprotected_table(st))
    for line in coverage_notes(st):
        out.print(line, markup=False, highlight=False)
    return 0


def unprotected_table(st: StatusReply) -> Table:
    """What agents' inventories found that no dataset covers (coordinator/coverage.py);
    ignored items are listed too, marked with the ignore entry that matched."""
    from rich.table import Table

    t = Table(title=f"Unprotected: {st.unprotected_total} (of {st.inventories or 0} host(s))")
    for col in ("host", "kind", "item", "detail", "ignored"):
        t.add_column(col)
    for u in st.unprotected:
        t.add_row(u.agent, u.kind, u.key, u.detail, f"yes ({u.ignored_by})" if u.ignored else "")
    return t


def coverage_notes(st: StatusReply) -> list[str]:
    """Expiring certificates and ignore entries that match nothing, one line each."""
    lines = [
        f"certificate expiring: {c.agent} {c.path} ({c.subject}) in {c.days_left:.1f} days"
        for c in st.certificates
        if c.expiring and c.days_left is not None
    ]
    lines += [
        f"coverage: ignore entry {e!r} matches nothing (remove it or fix it in "
        "coordinator.toml [coverage] ignore)"
        for e in st.ignore_unmatched
    ]
    return lines


def window_notes(st: StatusReply, dataset: str | None = None) -> list[str]:
    """A line per dataset (of ``dataset`` only, if given) whose newest scheduled run
    went past the end of its maintenance window (coordinator/windows.py)."""
    from coordinator.windows import overshoot

    lines = []
    for d in st.datasets:
        w = d.window
        if w is None or not w.exceeded or dataset not in (None, d.dataset):
            continue
        end = w.window_end.isoformat(timespec="minutes") if w.window_end else "?"
        how = "still running" if w.running else "finished"
        lines.append(
            f"window exceeded: {d.dataset} {w.schedule} run {w.job_id}: {how} "
            f"{overshoot(w.exceeded_s)} past the end of its window {w.window} ({end})"
        )
    if dataset is None and st.windows_exceeded > len(lines):
        lines.append(f"window exceeded: {st.windows_exceeded} dataset(s) in all (see the API)")
    return lines
