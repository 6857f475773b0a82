"""Operator commands over many datasets at once (``backup --all``, ``backup --host H``,
``verify --all``): which datasets, and one job per dataset followed to its end.

The dataset list is the coordinator's (``mosaic.api.status``, read page by page, so an
estate of thousands of datasets is listed whole). Jobs are all sent first, so the agents
work on them side by side, then followed one after another; a job that ended while an
earlier one was followed is read from the events stream from its start, so nothing is
missed. Each job ends as one :class:`Outcome`, the row of the summary table.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import aclosing
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from mosaic.ui.display import size
from mosaic.ui.progress import byte_bar
from shared.bus import Bus
from shared.errors import BusError, OperatorError
from shared.wire.api import ApiError, StatusRequest
from shared.wire.events import Event, JobFailed, JobProgress, JobStarted
from shared.wire.status import AgentStatus, DatasetStatus, StatusReply

PAGE = 500  # datasets per status request


async def all_datasets(bus: Bus) -> tuple[list[DatasetStatus], list[AgentStatus]]:
    """Every dataset the coordinator knows (sorted by name) and the agents it has heard.

    Pages are ordered problems first, so a dataset whose state changes between two
    requests can move past the offset: the pages are read again (a few times at most)
    until every dataset of ``datasets_total`` was seen."""
    found: dict[str, DatasetStatus] = {}
    agents: dict[str, AgentStatus] = {}
    for _ in range(3):
        total = await _pages(bus, found, agents)
        if len(found) >= total:
            break
    return sorted(found.values(), key=lambda d: d.dataset), list(agents.values())


async def _pages(bus: Bus, found: dict[str, DatasetStatus], agents: dict[str, AgentStatus]) -> int:
    """Read every page once into ``found`` and ``agents``; the datasets' total."""
    offset = 0
    while True:
        reply = await bus.request("status", StatusRequest(limit=PAGE, offset=offset))
        if isinstance(reply, ApiError):
            raise OperatorError(reply.message)
        if not isinstance(reply, StatusReply):
            raise OperatorError(f"unexpected reply {type(reply).__name__}")
        for d in reply.datasets:
            found[d.dataset] = d
        for a in reply.agents:
            agents[a.agent] = a
        offset += len(reply.datasets)
        # datasets_total is 0 from coordinators that predate paging: one page is all
        if not reply.datasets or offset >= reply.datasets_total:
            return max(reply.datasets_total, len(found))


def on_host(
    datasets: Iterable[DatasetStatus], agents: Iterable[AgentStatus], host: str
) -> list[DatasetStatus]:
    """The datasets of agent ``host``, or of the agents whose heartbeats report that
    host name (``backup --host``)."""
    names = {host} | {a.agent for a in agents if a.hostname and a.hostname == host}
    return [d for d in datasets if d.agent in names]


async def choose(bus: Bus, *, host: str | None) -> list[str]:
    """The dataset names ``--all`` (``host`` None) or ``--host`` means; an empty choice
    is an error that says what exists."""
    datasets, agents = await all_datasets(bus)
    chosen = datasets if host is None else on_host(datasets, agents, host)
    if not chosen:
        if host is None:
            raise OperatorError("the coordinator has no dataset (add one to coordinator.toml)")
        known = ", ".join(sorted({d.agent for d in datasets})) or "none"
        raise OperatorError(
            f"--host {host}: no dataset of an agent or host of that name (agents: {known})"
        )
    return [d.dataset for d in chosen]


@dataclass
class Outcome:
    """One dataset's job, as the summary table shows it."""

    dataset: str
    job_id: str = ""
    agent: str = ""
    ok: bool = False
    result: str = ""
    duration_s: float | None = None
    bytes: int | None = None
    detail: str = ""  # shown under the table (a failure's message, in full)


async def follow(
    bus: Bus, job_id: str, err: Console, *, timeout: float, label: str, final: tuple[type, ...]
) -> Event:
    """Show a job's progress until an event of a ``final`` type or a failure arrives."""
    bar, task, _ = byte_bar(err, f"{label} (waiting for agent)")
    with bar:
        async with aclosing(bus.watch_job(job_id, timeout=timeout)) as events:
            async for ev in events:
                if isinstance(ev, JobStarted):
                    again = f", attempt {ev.delivery}" if ev.delivery > 1 else ""
                    bar.update(task, description=f"{label} on {ev.agent}{again}")
                elif isinstance(ev, JobProgress):
                    bar.update(task, total=ev.bytes_total or None, completed=ev.bytes_done)
                elif isinstance(ev, (JobFailed, *final)):
                    return ev
    raise OperatorError(f"job {job_id}: event stream ended")


async def watch(
    bus: Bus, o: Outcome, err: Console, *, timeout: float, label: str, final: tuple[type, ...]
) -> Event | None:
    """The job's final event; None after filling ``o`` when it failed or went silent."""
    try:
        ev = await follow(bus, o.job_id, err, timeout=timeout, label=label, final=final)
    except (BusError, OperatorError) as exc:
        o.result, o.detail = "no result", str(exc)
        return None
    if isinstance(ev, JobFailed):
        o.result, o.detail = f"FAILED ({ev.code})", ev.message
        return None
    return ev


def outcome_table(title: str, rows: list[Outcome], *, bytes_label: str) -> Table:
    t = Table(title=title)
    for col in ("dataset", "job id", "agent", "result", "duration", bytes_label):
        t.add_column(col, justify="right" if col in ("duration", bytes_label) else "left")
    for o in rows:
        t.add_row(
            o.dataset,
            o.job_id or "—",
            o.agent or "—",
            o.result if o.ok else f"[red]{o.result}[/red]",
            "—" if o.duration_s is None else f"{o.duration_s:,.2f} s",
            "—" if o.bytes is None else size(o.bytes),
        )
    return t


def print_outcomes(out: Console, err: Console, title: str, rows: list[Outcome], unit: str) -> int:
    """The summary table, then one line per problem; the exit code (1: any not ok)."""
    if not out.is_terminal:
        out.width = max(out.width, 200)
    out.print(outcome_table(title, rows, bytes_label=unit))
    bad = [o for o in rows if not o.ok]
    for o in bad:
        err.print(f"{o.dataset}: {o.result}: {o.detail}", markup=False, highlight=False)
    if bad:
        names = ", ".join(o.dataset for o in bad)
        err.print(f"mosaic-backup: {len(bad)} of {len(rows)} failed: {names}", markup=False)
        return 1
    return 0
