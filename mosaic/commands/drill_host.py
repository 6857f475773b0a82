"""``mosaic-backup drill host HOST``: a whole-host disaster-recovery drill, followed to
its end, and ``drill report --host HOST``: a past one's Markdown report.

The coordinator plans it (``coordinator/jobs/host_drill.py``) and answers with the plan;
this command prints it, then waits until the host's result is in the catalog
(``mosaic.api.maintenance``), prints per-dataset and total RTO and the achieved RPO,
writes the Markdown report to ``--report FILE`` and exits 1 when the drill failed.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec
from rich.console import Console
from rich.table import Table

from mosaic.commands._options import operator_bus
from mosaic.ui.display import who
from shared.errors import OperatorError
from shared.wire.api import ApiError, MaintenanceList, MaintenanceListRequest
from shared.wire.drills import (
    HostDrillAccepted,
    HostDrillRequest,
    HostDrillResult,
    host_drill_result_decoder,
)
from shared.wire.records import MaintenanceRecord

if TYPE_CHECKING:
    from shared.bus import Bus

KIND = "host_drill"
POLL_S = 1.0


def _secs(v: float | None) -> str:
    return "—" if v is None else f"{v:,.1f} s"


def _when(v: datetime | None) -> str:
    return "—" if v is None else v.strftime("%Y-%m-%d %H:%M:%S UTC")


def check_report_path(path: str | None) -> Path | None:
    """``--report FILE`` must be writable where it is asked for: checked before the drill."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise OperatorError(f"--report {path}: is a folder; name a file, e.g. {p / 'drill.md'}")
    if not p.parent.is_dir():
        raise OperatorError(
            f"--report {path}: folder {p.parent} does not exist; create it or pick another path"
        )
    return p


async def host_drill(
    bus: Bus,
    host: str,
    out: Console,
    err: Console,
    *,
    pitr: datetime | None = None,
    agent: str | None = None,
    wait: bool = True,
    timeout: float = 3 * 3600.0,
    requested_by: str | None = None,
) -> HostDrillResult | HostDrillAccepted:
    req = HostDrillRequest(host=host, pitr=pitr, agent=agent, requested_by=who(requested_by))
    reply = await bus.request("drill_host", req)
    if isinstance(reply, ApiError):
        raise OperatorError(reply.message)
    if not isinstance(reply, HostDrillAccepted):
        raise OperatorError(f"unexpected reply {type(reply).__name__}")
    err.print(
        f"host drill {reply.drill_id}: {len(reply.items)} dataset(s) of {host} on agent "
        f"{reply.agent}, to {_when(reply.point)}"
    )
    if not wait:
        return reply
    with err.status(f"drill of host {host}: restoring and checking on {reply.agent}"):
        rec = await _wait_result(bus, host, reply.drill_id, timeout)
    result = host_drill_result_decoder.decode(rec.detail)
    out.print(result_table(result))
    return result


async def _wait_result(bus: Bus, host: str, drill_id: str, timeout: float) -> MaintenanceRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await _host_results(bus, host, 50)
        found = next((r for r in rows if r.job_id == drill_id), None)
        if found is not None:
            return found
        await anyio.sleep(POLL_S)
    raise OperatorError(
        f"host drill {drill_id}: no result within {timeout:g} s; it may still be running "
        f"(see later: mosaic-backup drill report --host {host})"
    )


async def _host_results(bus: Bus, host: str, limit: int) -> list[MaintenanceRecord]:
    reply = await bus.request(
        "maintenance", MaintenanceListRequest(job_kind=KIND, dataset=host, limit=limit)
    )
    if isinstance(reply, ApiError):
        raise OperatorError(reply.message)
    if not isinstance(reply, MaintenanceList):
        raise OperatorError(f"unexpected reply {type(reply).__name__}")
    return reply.results


def result_table(r: HostDrillResult) -> Table:
    t = Table(
        title=f"drill of host {r.host}: {r.outcome.upper()} — total RTO {_secs(r.rto_s)}, "
        f"RPO {_secs(r.rpo_s)} at {_when(r.point)}"
    )
    for col in ("stage", "dataset", "backup", "data as of", "outcome", "RTO", "RPO", "checks"):
        t.add_column(col, justify="right" if col in ("RTO", "RPO") else "left")
    for i in r.items:
        t.add_row(
            i.stage,
            i.dataset,
            i.backup_id or "—",
            _when(i.data_at) + (" (replayed)" if i.pitr is not None else ""),
            "pass" if i.outcome == "passed" else i.outcome.upper(),
            _secs(i.rto_s),
            _secs(i.rpo_s),
            i.checks,
        )
    return t


async def host_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    report = check_report_path(args.report)
    if report is not None and args.no_wait:
        raise OperatorError("--report needs the drill's result; drop --no-wait")
    async with operator_bus(args) as bus:
        res = await host_drill(
            bus,
            args.host,
            out,
            err,
            pitr=args.pitr,
            agent=args.agent,
            wait=not args.no_wait,
            timeout=args.timeout,
            requested_by=args.requested_by,
        )
    if not isinstance(res, HostDrillResult):
        return 0
    if report is not None:
        await anyio.Path(report).write_text(res.report)
        err.print(f"report written to {report}")
    if res.outcome != "passed":
        bad = ", ".join(i.dataset for i in res.items if i.outcome != "passed")
        err.print(f"mosaic-backup: drill of host {res.host} FAILED ({bad})")
        return 1
    return 0


async def print_report(bus: Bus, host: str, out: Console) -> HostDrillResult:
    """The newest host drill of ``host``, its Markdown report printed as stored."""
    rows = await _host_results(bus, host, 1)
    if not rows:
        raise OperatorError(
            f"no host drill of {host} in the catalog (run: mosaic-backup drill host {host})"
        )
    try:
        result = host_drill_result_decoder.decode(rows[0].detail)
    except msgspec.DecodeError as exc:
        raise OperatorError(f"host drill {rows[0].job_id}: stored result unreadable") from exc
    out.print(result.report, markup=False, highlight=False, soft_wrap=True)
    return result
