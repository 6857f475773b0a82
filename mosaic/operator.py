"""Operator commands: talk to the coordinator over NATS and show what happens.

Requests go to ``mosaic.api.<verb>``; a started job is then followed through its events
(stored in JetStream, so nothing is missed between the reply and the subscription) with
a progress bar (bytes, rate, ETA) on stderr; results are tables on stdout.
"""

from __future__ import annotations

from contextlib import aclosing
from datetime import datetime
from typing import TypeVar

import anyio
from rich.console import Console
from rich.table import Table

from mosaic.ui.display import size, summary_table, who
from mosaic.ui.progress import byte_bar
from shared.bus import Bus
from shared.errors import OperatorError
from shared.vocab import BackupType, Tier
from shared.wire.api import (
    ApiError,
    ApiReply,
    BackupList,
    BackupRequest,
    JobAccepted,
    ListRequest,
    RestoreRequest,
    StatusRequest,
)
from shared.wire.events import (
    BackupCompleted,
    Event,
    JobFailed,
    JobProgress,
    JobStarted,
    RestoreCompleted,
)
from shared.wire.status import StatusReply

T = TypeVar("T")


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "—"


def _expect(reply: ApiReply, kind: type[T]) -> T:
    if isinstance(reply, ApiError):
        raise OperatorError(reply.message)
    if not isinstance(reply, kind):
        raise OperatorError(f"unexpected reply {type(reply).__name__}")
    return reply


async def follow(bus: Bus, job_id: str, err: Console, *, timeout: float, label: str) -> Event:
    """Show a job's progress until it completes or fails; return the final event."""
    bar, task, _ = byte_bar(err, f"{label} (waiting for agent)")
    with bar:
        async with aclosing(bus.watch_job(job_id, timeout=timeout)) as events:
            async for ev in events:
                if isinstance(ev, JobStarted):
                    again = f", attempt {ev.delivery}" if ev.delivery > 1 else ""
                    bar.update(task, description=f"{label} on {ev.agent}{again}")
                elif isinstance(ev, JobProgress):
                    bar.update(task, total=ev.bytes_total or None, completed=ev.bytes_done)
                elif isinstance(ev, BackupCompleted | RestoreCompleted | JobFailed):
                    return ev
    raise OperatorError(f"job {job_id}: event stream ended")


async def backup(
    bus: Bus,
    dataset: str,
    backup_type: BackupType,
    out: Console,
    err: Console,
    *,
    wait: bool = True,
    timeout: float = 600.0,
    tier: Tier | None = None,
    requested_by: str | None = None,
) -> BackupCompleted | JobAccepted:
    req = BackupRequest(
        dataset=dataset, backup_type=backup_type, tier=tier, requested_by=who(requested_by)
    )
    acc = _expect(await bus.request("backup", req), JobAccepted)
    err.print(f"backup job {acc.job_id} sent to agent {acc.agent}")
    if not wait:
        return acc
    ev = await follow(bus, acc.job_id, err, timeout=timeout, label=f"backup {dataset}")
    if isinstance(ev, JobFailed):
        raise OperatorError(f"backup job {ev.job_id} failed on {ev.agent}: {ev.message}")
    assert isinstance(ev, BackupCompleted)
    await until_cataloged(bus, ev, err)
    out.print(
        summary_table(
            f"backup {ev.backup_id}",
            ev.summary,
            {
                "dataset": ev.dataset,
                "target": ev.target,
                "type": ev.backup_type,
                **({"tier": ev.tier} if ev.tier else {}),
                **({"log lag": f"{ev.log_lag_s:.1f} s"} if ev.log_lag_s is not None else {}),
            },
        )
    )
    return ev


async def until_cataloged(bus: Bus, ev: BackupCompleted, err: Console) -> None:
    """Return once the coordinator's catalog lists the backup, so a command run next
    (restore it, back up again incrementally) sees it. The catalog trails the events
    stream by moments."""
    with anyio.move_on_after(10):
        while True:
            reply = await bus.request("list", ListRequest(dataset=ev.dataset, limit=5))
            if isinstance(reply, BackupList) and any(
                b.backup_id == ev.backup_id for b in reply.backups
            ):
                return
            await anyio.sleep(0.05)
    err.print(f"warning: backup {ev.backup_id} is stored but not yet in the catalog")


async def restore(
    bus: Bus,
    backup_id: str,
    destination: str,
    out: Console,
    err: Console,
    *,
    wait: bool = True,
    timeout: float = 600.0,
    paths: list[str] | None = None,
    pitr: datetime | None = None,
    requested_by: str | None = None,
) -> RestoreCompleted | JobAccepted:
    acc = _expect(
        await bus.request(
            "restore",
            RestoreRequest(
                backup_id=backup_id,
                destination=destination,
                paths=paths or [],
                pitr=pitr,
                requested_by=who(requested_by),
            ),
        ),
        JobAccepted,
    )
    err.print(f"restore job {acc.job_id} sent to agent {acc.agent}")
    if not wait:
        return acc
    ev = await follow(bus, acc.job_id, err, timeout=timeout, label=f"restore {backup_id}")
    if isinstance(ev, JobFailed):
        raise OperatorError(f"restore job {ev.job_id} failed on {ev.agent}: {ev.message}")
    assert isinstance(ev, RestoreCompleted)
    t = Table(title=f"restore of {backup_id}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("agent", ev.agent)
    t.add_row("destination", ev.destination)
    t.add_row("files", f"{ev.files:,}")
    t.add_row("bytes written", size(ev.bytes_written))
    t.add_row("duration", f"{ev.duration_s:.2f} s")
    out.print(t)
    return ev


async def list_backups(bus: Bus, out: Console, *, days: int | None, dataset: str | None) -> None:
    rows = _expect(
        await bus.request("list", ListRequest(days=days, dataset=dataset)), BackupList
    ).backups
    t = Table(title=f"{len(rows)} backup(s)" + (f" in the last {days} day(s)" if days else ""))
    for col in (
        "backup id",
        "dataset",
        "type",
        "tier",
        "agent",
        "target",
        "copies",
        "finished",
        "files",
        "read",
        "stored",
    ):
        t.add_column(
            col,
            justify="right" if col in ("files", "read", "stored") else "left",
            no_wrap=col in ("backup id", "finished"),
        )
    for b in rows:
        t.add_row(
            b.backup_id,
            b.dataset,
            b.backup_type,
            b.tier or "—",
            b.agent,
            b.target,
            ", ".join(b.copies) or "—",
            _when(b.finished_at),
            f"{b.files:,}",
            size(b.bytes_read),
            size(b.bytes_stored),
        )
    out.print(t)


async def status(bus: Bus, out: Console) -> StatusReply:
    st = _expect(await bus.request("status", StatusRequest()), StatusReply)
    t = Table(title=f"mosaic-backup: {st.status} ({st.backups_total} backups in catalog)")
    for col in ("dataset", "agent", "target", "last backup", "last failure"):
        t.add_column(col)
    for d in st.datasets:
        fail = d.last_failure
        t.add_row(
            d.dataset,
            d.agent,
            d.target,
            _when(d.last_backup.finished_at) if d.last_backup else "never",
            f"{_when(fail.updated_at)}: {fail.error_message}" if fail else "—",
        )
    out.print(t)
    return st
