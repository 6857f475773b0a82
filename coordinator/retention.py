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
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

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
    out: list[Decision] = []
    for b in backups:
        amount, unit = parse_keep(retention.keep(b.tier, target_tier))
        if newest[b.dataset] is b:
            out.append(Decision(b, True, f"newest backup of {b.dataset}: always kept"))
        elif amount == 0:
            out.append(Decision(b, False, f"expired: {b.tier} keeps none on {target_tier} targets"))
        elif b.finished_at >= cutoff(now, amount, unit):
            out.append(Decision(b, True, f"{b.tier}: newest {describe(amount, unit)}"))
        else:
            out.append(Decision(b, False, f"expired: older than {describe(amount, unit)}"))
    return out
