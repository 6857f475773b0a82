"""Whole-host disaster-recovery drills: the operator's request, the plan the coordinator
answers with, and the result it keeps (``MaintenanceRecord`` of kind ``host_drill``,
its ``detail`` the JSON of :class:`HostDrillResult`, whose ``report`` is the Markdown
a person files as the drill's documentation).

A host drill is one :class:`~shared.wire.jobs.DrillJob` per dataset of the host, sent
one after another by the coordinator (databases, then application data and volumes,
then configuration), each recorded as an ordinary drill; the host result sums them up.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.wire.base import Msg as _Msg

Stage = Literal["database", "application", "configuration"]
STAGES: tuple[Stage, ...] = ("database", "application", "configuration")


class HostDrillRequest(_Msg, frozen=True, kw_only=True, tag="host_drill_request"):
    """Drill every dataset ``host`` (the agent that backs them up) holds, on ``agent``
    (None: ``[maintenance] agent``, else the host itself), to one point in time:
    ``pitr`` (None: the newest point every point-in-time dataset reaches)."""

    host: str
    pitr: datetime | None = None
    agent: str | None = None
    requested_by: str = "operator"


class HostDrillItem(msgspec.Struct, frozen=True, kw_only=True):
    """One dataset of a host drill as planned and, once its drill reported, as it went.

    ``data_at`` is the point the restored data stands at: the drill's point for a
    point-in-time restore, else the chosen backup's end. ``rpo_s`` = point − data_at."""

    dataset: str
    stage: Stage
    kind: str  # the source kind: postgres, redis, files, …
    job_id: str = ""
    target: str = ""
    backup_id: str = ""
    pitr: datetime | None = None  # replayed to this instant (point-in-time datasets)
    data_at: datetime | None = None
    rpo_s: float | None = None
    outcome: Literal["passed", "failed", "skipped", "planned"] = "planned"
    rto_s: float | None = None
    checks: str = ""  # one line: the drill's checks, or why it was not run


class HostDrillAccepted(_Msg, frozen=True, kw_only=True, tag="host_drill_accepted"):
    """The coordinator took the drill: its id (the ``host_drill`` result's job id), the
    agent that restores, the common point and the ordered plan."""

    drill_id: str
    host: str
    agent: str
    point: datetime
    items: list[HostDrillItem] = []


class HostDrillResult(msgspec.Struct, frozen=True, kw_only=True):
    """A finished host drill. ``rto_s``: from the first drill's dispatch until the last
    dataset was restored and checked; ``rpo_s``: the largest per-dataset RPO."""

    drill_id: str
    host: str
    agent: str
    point: datetime
    outcome: Literal["passed", "failed"]
    started_at: datetime
    finished_at: datetime
    rto_s: float
    rpo_s: float | None = None
    items: list[HostDrillItem] = []
    requested_by: str = "operator"
    report: str = ""  # Markdown


host_drill_result_decoder = msgspec.json.Decoder(HostDrillResult)


def _secs(v: float | None) -> str:
    return "—" if v is None else f"{v:,.1f} s"


def _when(v: datetime | None) -> str:
    return "—" if v is None else v.strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def render_report(r: HostDrillResult) -> str:
    """The Markdown report of a host drill (pure)."""
    failed = [i.dataset for i in r.items if i.outcome != "passed"]
    lines = [
        f"# Disaster-recovery drill of host {r.host}: {r.outcome.upper()}",
        "",
        f"- Drill: `{r.drill_id}` (requested by {r.requested_by})",
        f"- Restored on agent: `{r.agent}`",
        f"- Common point in time: {_when(r.point)}",
        f"- Started: {_when(r.started_at)}; finished: {_when(r.finished_at)}",
        f"- Total RTO: {_secs(r.rto_s)} (first restore started → last dataset checked)",
        f"- Achieved RPO: {_secs(r.rpo_s)} (the point → the oldest restored data)",
    ]
    if failed:
        lines.append(f"- Failed: {', '.join(failed)}")
    lines += [
        "",
        "| # | stage | dataset | kind | backup | data as of | outcome | RTO | RPO | checks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, i in enumerate(r.items, 1):
        pitr = f" (replayed to {_when(i.pitr)})" if i.pitr is not None else ""
        lines.append(
            f"| {n} | {i.stage} | {i.dataset} | {i.kind} | `{i.backup_id or '—'}`{pitr} "
            f"| {_when(i.data_at)} | {'pass' if i.outcome == 'passed' else i.outcome.upper()} "
            f"| {_secs(i.rto_s)} | {_secs(i.rpo_s)} | {_cell(i.checks)} |"
        )
    lines += [
        "",
        "Each dataset was restored into a scratch folder on the agent, started or read with",
        "its own tools (a throwaway server for databases; files re-hashed against the",
        "manifest; volume tars listed) and removed afterwards.",
        "",
    ]
    return "\n".join(lines)
