"""Progress of one job, reported by the pipeline and published by the runner."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Progress:
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0


ProgressFn = Callable[[Progress], Awaitable[None]]


async def no_progress(_: Progress) -> None:
    return None
