"""The one progress bar of every long command: bytes, rate and ETA on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from engine.progress import Progress as JobProgress
from engine.progress import ProgressFn


def byte_bar(err: Console, label: str) -> tuple[Progress, TaskID, ProgressFn]:
    """A transient bar on ``err`` (silent when it is not a terminal, so logs and pipes get
    no stray lines) and a reporter that feeds it from the pipeline's progress."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = bar.add_task(label, total=None)

    async def report(p: JobProgress) -> None:
        bar.update(task, total=p.bytes_total or None, completed=p.bytes_done)

    return bar, task, report
