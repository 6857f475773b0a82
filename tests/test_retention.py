"""Retention selection (coordinator/retention.py): keep or expire, with a reason each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from coordinator.retention import Backup, Decision, cutoff, describe, parse_keep, select
from shared.config.coordinator import RetentionConfig, TierRetention
from shared.vocab import Tier

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
DEFAULT = RetentionConfig()
US = timedelta(microseconds=1)


def b(
    ident: str, age: timedelta, tier: Tier = "daily", dataset: str = "db", now: datetime = NOW
) -> Backup:
    return Backup(backup_id=ident, dataset=dataset, tier=tier, finished_at=now - age)


def by_id(decisions: list[Decision]) -> dict[str, tuple[bool, str]]:
    return {d.backup.backup_id: (d.keep, d.reason) for d in decisions}


def days(n: float) -> timedelta:
    return timedelta(days=n)


def test_daily_keeps_seven_days_locally_and_fourteen_remotely() -> None:
    backups = [b(f"d{i}", days(i) + timedelta(hours=1)) for i in range(20)]
    local = by_id(select(backups, DEFAULT, "local", NOW))
    remote = by_id(select(backups, DEFAULT, "remote", NOW))
    assert [i for i, (keep, _) in local.items() if keep] == [f"d{i}" for i in range(7)]
    assert [i for i, (keep, _) in remote.items() if keep] == [f"d{i}" for i in range(14)]
    assert local["d3"] == (True, "daily: newest 7 days")
    assert local["d7"] == (False, "expired: older than 7 days")
    assert remote["d15"] == (False, "expired: older than 14 days")


def test_window_edge_is_inclusive() -> None:
    edge = b("edge", days(7))
    past = b("past", days(7) + US)
    newest = b("newest", timedelta(0))
    got = by_id(select([edge, past, newest], DEFAULT, "local", NOW))
    assert got["edge"][0] is True
    assert got["past"][0] is False


def test_newest_backup_of_a_dataset_is_never_expired() -> None:
    # a dataset whose schedule stopped a year ago still keeps its last backup
    old = [b("old1", days(400)), b("old2", days(365))]
    got = by_id(select(old, DEFAULT, "local", NOW))
    assert got["old2"] == (True, "newest backup of db: always kept")
    assert got["old1"][0] is False


def test_newest_is_per_dataset() -> None:
    backups = [
        b("a-old", days(30), dataset="a"),
        b("a-new", days(20), dataset="a"),
        b("z-only", days(90), dataset="z"),
    ]
    got = by_id(select(backups, DEFAULT, "local", NOW))
    assert {k: v[0] for k, v in got.items()} == {"a-old": False, "a-new": True, "z-only": True}


def test_newest_tie_is_broken_deterministically() -> None:
    t = days(30)
    got = by_id(select([b("x1", t), b("x2", t)], DEFAULT, "local", NOW))
    assert got == {
        "x1": (False, "expired: older than 7 days"),
        "x2": (True, "newest backup of db: always kept"),
    }


def test_a_tier_kept_nowhere_on_a_target_tier_is_expired_there() -> None:
    got = by_id(select([b("d", days(1)), b("n", days(0))], DEFAULT, "archive", NOW))
    assert got["d"] == (False, "expired: daily keeps none on archive targets")
    assert got["n"][0] is True  # still the newest


def test_grandfather_father_son_across_tiers() -> None:
    backups = [
        b("daily-3d", days(3)),
        b("daily-10d", days(10)),
        b("weekly-3w", days(21), "weekly"),
        b("weekly-5w", days(35), "weekly"),
        b("monthly-2m", days(61), "monthly"),
        b("monthly-4m", days(122), "monthly"),
        b("monthly-20m", days(610), "monthly"),
        b("yearly-18m", days(548), "yearly"),
        b("newest", timedelta(minutes=5)),
    ]
    keep = {
        tier: {i for i, (k, _) in by_id(select(backups, DEFAULT, tier, NOW)).items() if k}
        for tier in ("local", "remote", "archive")
    }
    assert keep["local"] == {"daily-3d", "weekly-3w", "monthly-2m", "newest"}
    assert keep["remote"] == {
        "daily-3d",
        "daily-10d",
        "weekly-3w",
        "weekly-5w",
        "monthly-2m",
        "monthly-4m",
        "yearly-18m",
        "newest",
    }
    assert keep["archive"] == {"monthly-2m", "monthly-4m", "monthly-20m", "yearly-18m", "newest"}


def test_calendar_months_and_years() -> None:
    end_of_march = datetime(2024, 3, 31, 12, tzinfo=UTC)
    assert cutoff(end_of_march, 1, "m") == datetime(2024, 2, 29, 12, tzinfo=UTC)
    assert cutoff(end_of_march, 13, "m") == datetime(2023, 2, 28, 12, tzinfo=UTC)
    assert cutoff(datetime(2024, 2, 29, tzinfo=UTC), 1, "y") == datetime(2023, 2, 28, tzinfo=UTC)
    assert cutoff(datetime(2024, 1, 15, tzinfo=UTC), 3, "m") == datetime(2023, 10, 15, tzinfo=UTC)
    assert cutoff(NOW, 2, "w") == NOW - days(14)
    # on 1 June, "3 months" reaches back to 1 March 00:00 exactly
    june = datetime(2024, 6, 1, tzinfo=UTC)
    march = datetime(2024, 3, 1, tzinfo=UTC)
    backups = [
        Backup(backup_id="edge", dataset="db", tier="monthly", finished_at=march),
        Backup(backup_id="before", dataset="db", tier="monthly", finished_at=march - US),
        b("n", days(0), now=june),
    ]
    got = by_id(select(backups, DEFAULT, "local", june))
    assert got["edge"] == (True, "monthly: newest 3 months")
    assert got["before"] == (False, "expired: older than 3 months")


def test_overrides_replace_only_the_fields_given() -> None:
    cfg = RetentionConfig(daily=TierRetention(local="2d"))
    assert cfg.keep("daily", "local") == "2d"
    assert cfg.keep("daily", "remote") == "14d"
    backups = [b("d1", days(1)), b("d3", days(3)), b("n", days(0))]
    assert {k: v[0] for k, v in by_id(select(backups, cfg, "local", NOW)).items()} == {
        "d1": True,
        "d3": False,
        "n": True,
    }


def test_yearly_reason_is_singular() -> None:
    got = by_id(select([b("y", days(100), "yearly"), b("n", days(0))], DEFAULT, "local", NOW))
    assert got["y"] == (True, "yearly: newest 1 year")


def test_input_order_is_kept_and_empty_input_is_fine() -> None:
    backups = [b("z", days(1)), b("a", days(0)), b("m", days(30))]
    assert [d.backup.backup_id for d in select(backups, DEFAULT, "local", NOW)] == ["z", "a", "m"]
    assert select([], DEFAULT, "local", NOW) == []


def test_a_backup_from_the_future_is_kept() -> None:
    got = by_id(select([b("skew", -days(1)), b("n", days(0))], DEFAULT, "local", NOW))
    assert got["skew"][0] is True


@pytest.mark.parametrize(
    ("text", "parsed", "words"),
    [("7d", (7, "d"), "7 days"), ("1y", (1, "y"), "1 year"), ("12m", (12, "m"), "12 months")],
)
def test_parse_and_describe(text: str, parsed: tuple[int, str], words: str) -> None:
    assert parse_keep(text) == parsed
    assert describe(*parsed) == words


@pytest.mark.parametrize("bad", ["", "7", "d", "7h", "-1d", "1.5d", "7 d", "123456d"])
def test_parse_refuses_anything_else(bad: str) -> None:
    with pytest.raises(ValueError, match="not N followed by"):
        parse_keep(bad)
