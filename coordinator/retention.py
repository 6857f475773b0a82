"""Which backups retention keeps and which it expires: grandfather-father-son by tier.

Prune deletes data, so the decision is made here from plain values, with a reason for
every backup, and tested on its edges; prune only carries it out (and ``--dry-run``
prints the reasons).

Each backup belongs to the tier of the schedule that made it: daily (son), weekly
(father), monthly and yearly (grandfather), plus configuration and transaction-log
tiers. A tier keeps its backups for a window that depends on the kind of target holding
them (``RetentionConfig.keep(tier, target_tier)``: daily 7 days on local targets, 14 on
remote ones…). For one target tier, in this order:

1. The newest backup of each dataset is always kept, whatever its tier and age: a
   misconfigured or stalled schedule must never leave a dataset with no backup.
2. A tier kept ``0`` on this target tier is expired there.
3. A backup that finished at or after ``now - window`` is kept; months and years are
   calendar ones (``now - 1m`` on 31 March is 29 February in a leap year).
4. Anything else is expired.

Backups are self-contained (an incremental only reuses its parent's chunks), so expiring
one never breaks another.

Every decision says why twice: ``reason``, the rule in a few words ("daily: newest 7
days"), and ``why``, the line ``repo prune --dry-run`` prints, which also names the
backup's place in its tier and the date ("kept: daily #3 (2026-11-30), within 7 days",
"dropped: daily #9 (2026-11-20): beyond daily 7 days (cutoff 2026-11-26)"). ``#1`` is
the newest backup of that dataset and tier. ``repo prune --keep-last`` and ``--forget``
decide here too (:func:`keep_last`, :func:`named`), so a preview and the prune that
follows it read the same decision.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.config.coordinator import KEEP_FORMAT, RetentionConfig, TargetTier
from shared.vocab import Tier

_UNITS = {"d": "day", "w": "week", "m": "month", "y": "year"}


@dataclass(frozen=True)
class Backup:
    """What selection needs to know about one backup."""

    backup_id: str
    dataset: str
    tier: Tier
    finished_at: datetime  # timezone-aware


@dataclass(frozen=True)
class Decision:
    backup: Backup
    keep: bool
    reason: str  # "daily: newest 7 days", "expired: older than 14 days", …
    rank: int = 0  # 1: the newest of its dataset and tier (keep_last: of its dataset)
    detail: str = ""  # the whole line: rule, rank, date (see the module docstring)

    @property
    def why(self) -> str:
        return self.detail or self.reason


def parse_keep(value: str) -> tuple[int, str]:
    """``"14d"`` → ``(14, "d")``; raises ValueError on anything else."""
    m = KEEP_FORMAT.match(value)
    if not m:
        raise ValueError(f"retention {value!r} is not N followed by d, w, m or y")
    return int(m.group(1)), m.group(2)


def describe(amount: int, unit: str) -> str:
    """``(14, "d")`` → ``"14 days"``, ``(1, "y")`` → ``"1 year"``."""
    word = _UNITS[unit]
    return f"{amount} {word}" if amount == 1 else f"{amount} {word}s"


def _months_back(t: datetime, months: int) -> datetime:
    index = t.year * 12 + (t.month - 1) - months
    year, month = divmod(index, 12)
    day = min(t.day, calendar.monthrange(year, month + 1)[1])
    return t.replace(year=year, month=month + 1, day=day)


def cutoff(now: datetime, amount: int, unit: str) -> datetime:
    """The oldest ``finished_at`` that a window of ``amount`` ``unit`` still keeps."""
    if unit == "d":
        return now - timedelta(days=amount)
    if unit == "w":
        return now - timedelta(weeks=amount)
    if unit == "m":
        return _months_back(now, amount)
    if unit == "y":
        return _months_back(now, 12 * amount)
    raise ValueError(f"unknown retention unit {unit!r}")


def select(
    backups: Sequence[Backup],
    retention: RetentionConfig,
    target_tier: TargetTier,
    now: datetime,
) -> list[Decision]:
    """Keep or expire each backup held on a ``target_tier`` target; input order kept."""
    newest: dict[str, Backup] = {}
    for b in backups:
        cur = newest.get(b.dataset)
        if cur is None or (b.finished_at, b.backup_id) > (cur.finished_at, cur.backup_id):
            newest[b.dataset] = b
    ranks = _ranks(backups, lambda b: (b.dataset, b.tier))
    out: list[Decision] = []
    for b in backups:
        amount, unit = parse_keep(retention.keep(b.tier, target_tier))
        window, rank = describe(amount, unit), ranks[id(b)]
        place = f"{b.tier} #{rank} ({_day(b.finished_at)})"
        edge = (cutoff(now, amount, unit) if amount else now).astimezone(UTC)
        if newest[b.dataset] is b:
            why = f"kept: {place}, the newest backup of {b.dataset}: always kept"
            out.append(Decision(b, True, f"newest backup of {b.dataset}: always kept", rank, why))
        elif amount == 0:
            none = f"{b.tier} keeps none on {target_tier} targets"
            out.append(Decision(b, False, f"expired: {none}", rank, f"dropped: {place}: {none}"))
        elif b.finished_at >= edge:
            why = f"kept: {place}, within {window}"
            out.append(Decision(b, True, f"{b.tier}: newest {window}", rank, why))
        else:
            why = f"dropped: {place}: beyond {b.tier} {window} (cutoff {edge:%Y-%m-%d %H:%M} UTC)"
            out.append(Decision(b, False, f"expired: older than {window}", rank, why))
    return out


def keep_last(backups: Sequence[Backup], n: int) -> list[Decision]:
    """Keep the ``n`` newest backups of each dataset (``repo prune --keep-last``)."""
    ranks = _ranks(backups, lambda b: b.dataset)
    out: list[Decision] = []
    for b in backups:
        rank = ranks[id(b)]
        place = f"keep_last #{rank} of {b.dataset} ({_day(b.finished_at)})"
        if rank <= n:
            reason = f"among the newest {n} of {b.dataset}"
            out.append(Decision(b, True, reason, rank, f"kept: {place}, {reason}"))
        else:
            reason = f"older than the newest {n} of {b.dataset}"
            out.append(Decision(b, False, reason, rank, f"dropped: {place}: {reason}"))
    return out


def named(backups: Sequence[Backup], forget: Collection[str]) -> list[Decision]:
    """Forget exactly the backups named (``repo prune --forget``)."""
    return [
        Decision(b, False, "named by --forget", 0, "dropped: named by --forget")
        if b.backup_id in forget
        else Decision(b, True, "not named by --forget", 0, "kept: not named by --forget")
        for b in backups
    ]


def _ranks(backups: Sequence[Backup], group: Callable[[Backup], object]) -> dict[int, int]:
    """id(backup) → its place in its group, newest first (1 = the newest)."""
    order = sorted(backups, key=lambda b: (b.finished_at, b.backup_id), reverse=True)
    seen: dict[object, int] = {}
    out: dict[int, int] = {}
    for b in order:
        key = group(b)
        out[id(b)] = seen[key] = seen.get(key, 0) + 1
    return out


def _day(t: datetime) -> str:
    return f"{t.astimezone(UTC):%Y-%m-%d}"
