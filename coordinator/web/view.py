"""What the read pages share: formatting filters for the templates, paging, and the
per-dataset pieces (state, 30-day strip) computed from plain values."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import jinja2
from aiohttp import web

from coordinator import alerts
from coordinator.schedule import FireTimes
from shared.config.coordinator import DatasetConfig, ScheduleConfig
from shared.wire.records import BackupRecord, JobRecord

STRIP_DAYS = 30
PAGE_SIZE = 25
MAX_PAGE_SIZE = 200


def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"


def human_duration(s: float | None) -> str:
    if s is None:
        return "–"
    s = float(s)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{s // 60:.0f} min {s % 60:.0f} s"
    if s < 86400:
        return f"{s // 3600:.0f} h {s % 3600 // 60:.0f} min"
    return f"{s // 86400:.0f} d {s % 86400 // 3600:.0f} h"


def when(t: datetime | None) -> str:
    return "–" if t is None else t.strftime("%Y-%m-%d %H:%M:%S UTC")


def install_filters(env: jinja2.Environment) -> None:
    env.filters.update(bytes=human_bytes, duration=human_duration, when=when)


def age(now: datetime, t: datetime | None) -> str:
    """ "3 min ago" / "in 2 h"."""
    if t is None:
        return "never"
    s = (now - t).total_seconds()
    return f"{human_duration(s)} ago" if s >= 0 else f"in {human_duration(-s)}"


@dataclass(frozen=True)
class Paging:
    offset: int
    limit: int

    def links(self, shown: int, total: int | None) -> tuple[int | None, int | None]:
        """(previous offset, next offset), None where there is none."""
        prev = max(self.offset - self.limit, 0) if self.offset > 0 else None
        more = shown >= self.limit if total is None else self.offset + self.limit < total
        return prev, (self.offset + self.limit if more else None)


def paging(request: web.Request, default: int = PAGE_SIZE) -> Paging:
    """``?offset=&limit=`` (bad values: one line, 400)."""
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", str(default)))
    except ValueError:
        raise web.HTTPBadRequest(text="offset and limit must be whole numbers") from None
    if offset < 0 or not 1 <= limit <= MAX_PAGE_SIZE:
        raise web.HTTPBadRequest(text=f"offset >= 0 and 1 <= limit <= {MAX_PAGE_SIZE}, please")
    return Paging(offset, limit)


def state_of(
    name: str,
    cfg: DatasetConfig,
    *,
    now: datetime,
    newest: datetime | None,
    failing: bool,
    pending: bool,
    running: bool,
    grace_s: float,
    times: FireTimes,
) -> str:
    """running / failed / pending / missing (never backed up) / overdue / ok / unscheduled."""
    if running:
        return "running"
    if failing:
        return "failed"
    if pending:
        return "pending"
    if newest is None:
        return "missing"
    due = alerts.last_due(cfg.schedules, now - timedelta(seconds=grace_s), times)
    if due is not None and newest < due:
        return "overdue"
    return "ok"


@dataclass(frozen=True)
class Cell:
    day: str
    state: str  # ok, failed, missed, running, none
    detail: str


class DueDays:
    """The UTC days of the last ``days`` on which a dataset's schedules fired, computed
    once per distinct set of schedules (datasets share a handful of them)."""

    def __init__(self, now: datetime, times: FireTimes, days: int = STRIP_DAYS) -> None:
        self.now, self.times = now, times
        self.since = datetime(now.year, now.month, now.day, tzinfo=now.tzinfo) - timedelta(
            days=days - 1
        )
        self._memo: dict[tuple[ScheduleConfig, ...], dict[date, datetime]] = {}

    def of(self, cfg: DatasetConfig) -> dict[date, datetime]:
        """Day → the newest fire time that day."""
        key = tuple(cfg.schedules)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = {}
            for s in key:
                at = self.now
                while True:
                    t = self.times.prev(s, at)
                    if t < self.since:
                        break
                    hit[t.date()] = max(hit.get(t.date(), t), t)
                    at = t - timedelta(microseconds=1)
        return hit


def strip(
    cfg: DatasetConfig,
    *,
    now: datetime,
    backups: Iterable[BackupRecord],
    failures: Iterable[JobRecord],
    running: bool,
    first_seen: datetime | None,
    due: DueDays,
    days: int = STRIP_DAYS,
) -> list[Cell]:
    """One cell a day (UTC), oldest first: ok (a backup finished), failed (only
    failures), missed (a scheduled time passed with neither), running (today, a job
    runs), none (nothing was due)."""
    ok: dict[date, int] = {}
    for b in backups:
        ok[b.finished_at.date()] = ok.get(b.finished_at.date(), 0) + 1
    failed: dict[date, int] = {}
    for f in failures:
        failed[f.updated_at.date()] = failed.get(f.updated_at.date(), 0) + 1
    due_days = due.of(cfg)
    today = now.date()
    cells = []
    for i in range(days - 1, -1, -1):
        day = today - timedelta(days=i)
        n_ok, n_failed = ok.get(day, 0), failed.get(day, 0)
        fired = due_days.get(day)
        if day == today and running:
            state, detail = "running", "a backup is running"
        elif n_ok:
            state, detail = "ok", f"{n_ok} backup(s)" + (f", {n_failed} failed" if n_failed else "")
        elif n_failed:
            state, detail = "failed", f"{n_failed} failed"
        elif fired is not None and (first_seen is None or fired >= first_seen) and day < today:
            state, detail = "missed", "scheduled, no backup"
        else:
            state, detail = "none", "nothing due"
        cells.append(Cell(day.isoformat(), state, f"{day.isoformat()}: {detail}"))
    return cells


def trend(backups: Sequence[BackupRecord], attr: str) -> list[float]:
    """``attr`` of ``backups`` (newest first in) oldest first out."""
    return [float(getattr(b, attr) or 0) for b in reversed(backups)]
