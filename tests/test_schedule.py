"""Schedule computation (coordinator/schedule.py): plain values in, runs out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from coordinator.schedule import MAX_MISSED_LISTED, due_runs, job_id, next_run, next_runs
from shared.config.coordinator import CoordinatorConfig, ScheduleConfig
from shared.config.load import load
from shared.errors import ConfigError
from shared.subjects import check_token

REPO_ROOT = Path(__file__).resolve().parent.parent


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def sched(cron: str, **kw: object) -> ScheduleConfig:
    kw.setdefault("backup_type", "incremental")
    return ScheduleConfig(cron=cron, **kw)  # type: ignore[arg-type]


DAILY_2AM = sched("0 2 * * *")


def fires(s: ScheduleConfig, start: datetime, end: datetime) -> list[datetime]:
    """Fire times with a grace long enough that nothing counts as missed."""
    s = ScheduleConfig(
        cron=s.cron, timezone=s.timezone, backup_type=s.backup_type, tier=s.tier, grace_s=1e9
    )
    return [r.fire_time for r in due_runs({"ds": [s]}, start, end)]


# --- the interval (last_checked, now] -------------------------------------------------


def test_daily_run_is_due_once_with_a_deterministic_id() -> None:
    runs = due_runs({"db": [DAILY_2AM]}, utc(2024, 5, 1, 1, 59), utc(2024, 5, 1, 2, 0, 30))
    assert len(runs) == 1
    r = runs[0]
    assert (r.dataset, r.fire_time, r.missed) == ("db", utc(2024, 5, 1, 2, 0), False)
    assert r.job_id == "sched-db-daily-incremental-20240501T0200Z"


def test_interval_excludes_last_checked_and_includes_now() -> None:
    at = utc(2024, 5, 1, 2, 0)
    assert due_runs({"db": [DAILY_2AM]}, at, at + timedelta(hours=1)) == []
    assert [r.fire_time for r in due_runs({"db": [DAILY_2AM]}, at - timedelta(seconds=1), at)] == [
        at
    ]


def test_nothing_due_when_the_clock_does_not_advance() -> None:
    at = utc(2024, 5, 1, 2, 0)
    assert due_runs({"db": [DAILY_2AM]}, at, at) == []
    assert due_runs({"db": [DAILY_2AM]}, at, at - timedelta(hours=5)) == []


def test_consecutive_windows_neither_skip_nor_repeat() -> None:
    s = sched("*/7 * * * *", grace_s=1e9)
    start, end = utc(2024, 1, 1), utc(2024, 1, 2)
    whole = [r.job_id for r in due_runs({"ds": [s]}, start, end)]
    pieces: list[str] = []
    t = start
    while t < end:
        nxt = min(t + timedelta(seconds=173), end)
        pieces += [r.job_id for r in due_runs({"ds": [s]}, t, nxt)]
        t = nxt
    assert pieces == whole and len(whole) == 24 * 9  # :00 :07 … :56 each hour


def test_runs_of_several_datasets_come_oldest_first() -> None:
    runs = due_runs(
        {"b": [sched("30 2 * * *")], "a": [sched("0 3 * * *"), sched("0 2 * * *")]},
        utc(2024, 5, 1, 1, 0),
        utc(2024, 5, 1, 3, 30),
    )
    assert [(r.dataset, r.fire_time.strftime("%H:%M")) for r in runs] == [
        ("a", "02:00"),
        ("b", "02:30"),
        ("a", "03:00"),
    ]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        due_runs({"db": [DAILY_2AM]}, datetime(2024, 1, 1), utc(2024, 1, 2))
    with pytest.raises(ValueError, match="timezone-aware"):
        job_id("db", DAILY_2AM, datetime(2024, 1, 1))


# --- grace window ---------------------------------------------------------------------


def test_run_missed_inside_grace_runs_at_start() -> None:
    # down from 01:00 to 02:40; the 02:00 run is 40 minutes old, grace is 1 h
    runs = due_runs({"db": [DAILY_2AM]}, utc(2024, 5, 1, 1, 0), utc(2024, 5, 1, 2, 40))
    assert [(r.fire_time, r.missed) for r in runs] == [(utc(2024, 5, 1, 2, 0), False)]


def test_run_older_than_grace_is_reported_missed() -> None:
    runs = due_runs({"db": [DAILY_2AM]}, utc(2024, 5, 1, 1, 0), utc(2024, 5, 1, 3, 0, 1))
    assert [(r.fire_time, r.missed) for r in runs] == [(utc(2024, 5, 1, 2, 0), True)]


def test_run_exactly_at_the_grace_edge_still_runs() -> None:
    runs = due_runs({"db": [DAILY_2AM]}, utc(2024, 5, 1, 1, 0), utc(2024, 5, 1, 3, 0))
    assert [(r.fire_time, r.missed) for r in runs] == [(utc(2024, 5, 1, 2, 0), False)]


def test_grace_is_per_schedule() -> None:
    long = sched("0 2 * * *", tier="weekly", grace_s=6 * 3600)
    runs = due_runs({"db": [DAILY_2AM, long]}, utc(2024, 5, 1, 1), utc(2024, 5, 1, 5))
    assert sorted((r.schedule.tier, r.missed) for r in runs) == [
        ("daily", True),
        ("weekly", False),
    ]


def test_long_outage_lists_a_bounded_number_of_missed_runs_then_the_due_ones() -> None:
    every_minute = sched("* * * * *", grace_s=600)
    runs = due_runs({"ds": [every_minute]}, utc(2024, 1, 1), utc(2024, 3, 1))
    missed = [r for r in runs if r.missed]
    due = [r for r in runs if not r.missed]
    assert len(missed) == MAX_MISSED_LISTED
    assert [r.fire_time for r in due] == [
        utc(2024, 3, 1) - timedelta(minutes=m) for m in range(10, -1, -1)
    ]


# --- time zones and DST ---------------------------------------------------------------


def test_time_zone_shifts_the_utc_fire_time_with_dst() -> None:
    berlin = sched("0 2 * * *", timezone="Europe/Berlin")
    assert fires(berlin, utc(2024, 1, 9, 12), utc(2024, 1, 10, 12)) == [utc(2024, 1, 10, 1)]
    assert fires(berlin, utc(2024, 7, 9, 12), utc(2024, 7, 10, 12)) == [utc(2024, 7, 10, 0)]


def test_spring_forward_fires_once_after_the_gap() -> None:
    # 2024-03-31 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist
    berlin = sched("30 2 * * *", timezone="Europe/Berlin")
    got = fires(berlin, utc(2024, 3, 30, 12), utc(2024, 4, 1, 12))
    assert got[0].date() == datetime(2024, 3, 31).date()
    assert got[0] == utc(2024, 3, 31, 1, 0)  # 03:00 CEST, the first valid time after
    assert got[1:] == [utc(2024, 4, 1, 0, 30)]  # 02:30 CEST


def test_fall_back_fires_a_fixed_hour_once() -> None:
    # 2024-10-27 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice
    berlin = sched("30 2 * * *", timezone="Europe/Berlin")
    got = fires(berlin, utc(2024, 10, 26, 12), utc(2024, 10, 28, 12))
    assert got == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]


def test_fall_back_fires_an_hourly_schedule_in_both_repeated_hours() -> None:
    hourly = sched("30 * * * *", timezone="Europe/Berlin", tier="translog")
    got = fires(hourly, utc(2024, 10, 26, 23), utc(2024, 10, 27, 3))
    # 01:30 CEST, 02:30 CEST, 02:30 CET, 03:30 CET: four real hours, four runs
    assert got == [utc(2024, 10, 26, 23, 30)] + [utc(2024, 10, 27, h, 30) for h in (0, 1, 2)]
    assert len({job_id("ds", hourly, t) for t in got}) == 4


def test_starting_inside_the_repeated_hour_does_not_fire_again() -> None:
    berlin = sched("30 2 * * *", timezone="Europe/Berlin")
    # the first 02:30 (00:30 UTC) fired; the check resumes at 00:45 UTC = 02:45 CEST
    assert fires(berlin, utc(2024, 10, 27, 0, 45), utc(2024, 10, 27, 12)) == []


# --- first Sunday ---------------------------------------------------------------------


def test_first_sunday_of_each_month() -> None:
    monthly = sched("0 0 1-7 * sun", backup_type="full", tier="monthly")
    got = fires(monthly, utc(2023, 12, 31, 1), utc(2025, 1, 1))
    assert len(got) == 12
    assert all(t.weekday() == 6 and t.day <= 7 and t.hour == 0 for t in got)
    assert [t.day for t in got] == [7, 4, 3, 7, 5, 2, 7, 4, 1, 6, 3, 1]


def test_day_of_month_alone_and_weekday_alone_still_work() -> None:
    first = sched("0 0 1 * *")
    assert fires(first, utc(2024, 1, 1, 1), utc(2024, 4, 1, 1)) == [
        utc(2024, 2, 1),
        utc(2024, 3, 1),
        utc(2024, 4, 1),
    ]
    sundays = sched("0 1 * * sun")
    assert len(fires(sundays, utc(2024, 6, 1), utc(2024, 7, 1))) == 5


# --- job ids --------------------------------------------------------------------------


def test_job_ids_are_deterministic_and_distinct_per_tier_and_type() -> None:
    t = utc(2024, 6, 2, 1)
    full = sched("0 1 * * sun", backup_type="full", tier="weekly")
    assert job_id("db", full, t) == job_id("db", full, t) == "sched-db-weekly-full-20240602T0100Z"
    ids = {
        job_id("db", full, t),
        job_id("db", sched("0 1 * * *", tier="weekly"), t),
        job_id("db", sched("0 1 * * *", backup_type="full"), t),
        job_id("db2", full, t),
        job_id("db", full, t + timedelta(minutes=1)),
    }
    assert len(ids) == 5


def test_job_id_uses_utc_whatever_the_time_zone() -> None:
    berlin_time = datetime(2024, 6, 2, 3, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert job_id("db", DAILY_2AM, berlin_time).endswith("-20240602T0100Z")


def test_reordering_schedules_keeps_the_ids() -> None:
    a, b = sched("0 2 * * *"), sched("0 1 * * sun", backup_type="full", tier="weekly")
    window = (utc(2024, 6, 1), utc(2024, 6, 3))
    assert [r.job_id for r in due_runs({"db": [a, b]}, *window)] == [
        r.job_id for r in due_runs({"db": [b, a]}, *window)
    ]


def test_identical_schedules_are_one_run() -> None:
    runs = due_runs({"db": [DAILY_2AM, DAILY_2AM]}, utc(2024, 5, 1), utc(2024, 5, 1, 2, 30))
    assert len(runs) == 1


def test_long_dataset_names_give_distinct_token_safe_ids() -> None:
    t = utc(2024, 6, 2, 1)
    long_a, long_b = "a" * 120 + "-one", "a" * 120 + "-two"
    ia, ib = job_id(long_a, DAILY_2AM, t), job_id(long_b, DAILY_2AM, t)
    assert ia != ib
    for i in (ia, ib):
        assert len(i) <= 128 and check_token("job id", i) == i
        assert i.endswith("-daily-incremental-20240602T0100Z")


# --- next run -------------------------------------------------------------------------


def test_next_run() -> None:
    assert next_run(DAILY_2AM, utc(2024, 5, 1, 2, 0)) == utc(2024, 5, 2, 2, 0)
    assert next_run(DAILY_2AM, utc(2024, 5, 1, 1, 59)) == utc(2024, 5, 1, 2, 0)
    berlin = sched("30 2 * * *", timezone="Europe/Berlin")
    # after the first 02:30 of the fall-back night, the next is the following night
    assert next_run(berlin, utc(2024, 10, 27, 0, 31)) == utc(2024, 10, 28, 1, 30)
    weekly = sched("0 1 * * sun", backup_type="full", tier="weekly")
    assert next_runs({"db": [DAILY_2AM, weekly], "none": []}, utc(2024, 6, 2, 0)) == {
        "db": utc(2024, 6, 2, 1),
        "none": None,
    }


# --- the shipped policy ---------------------------------------------------------------


def test_shipped_example_reproduces_the_strategy() -> None:
    cfg = load(REPO_ROOT / "deploy" / "coordinator.toml.example", CoordinatorConfig)
    schedules = {name: ds.schedules for name, ds in cfg.datasets.items()}
    # Saturday 1 June 2024 12:00 to Sunday 2 June 12:00; 2 June is the first Sunday (the
    # runs come back as missed, being older than their grace: only the times matter here)
    runs = due_runs(schedules, utc(2024, 6, 1, 12), utc(2024, 6, 2, 12))
    got = {
        (r.fire_time.strftime("%H:%M"), r.dataset, r.schedule.backup_type, r.schedule.tier)
        for r in runs
    }
    assert got == {
        ("00:00", "db1-postgres-archive", "full", "monthly"),
        ("01:00", "db1-postgres", "full", "weekly"),
        ("01:00", "web1-gitea", "full", "weekly"),
        ("02:00", "db1-postgres", "incremental", "daily"),
        ("02:30", "web1-gitea", "incremental", "daily"),
        ("03:00", "web1-config", "incremental", "config"),
    }
    # the next Sunday is not the first of the month: no archive
    later = due_runs(schedules, utc(2024, 6, 8, 12), utc(2024, 6, 9, 12))
    assert "db1-postgres-archive" not in {r.dataset for r in later}
    # an ordinary Wednesday: only the three daily incrementals
    wed = due_runs(schedules, utc(2024, 6, 5), utc(2024, 6, 6))
    assert sorted(r.fire_time.strftime("%H:%M") for r in wed) == ["02:00", "02:30", "03:00"]


# --- bad config: refused at load, one line naming the file and the field ----------------

GOOD_CONFIG = """
[datasets.db]
agent = "db1"
target = "local"
source = { type = "files", path = "/srv/db" }
schedules = [
  { cron = "0 2 * * *", backup_type = "incremental" },
  { cron = "0 1 * * sun", timezone = "Europe/Berlin", backup_type = "full", tier = "weekly" },
]
"""


def _load(tmp_path: Path, text: str) -> CoordinatorConfig:
    p = tmp_path / "coordinator.toml"
    p.write_text(text)
    return load(p, CoordinatorConfig)


def test_good_schedule_config(tmp_path: Path) -> None:
    cfg = _load(tmp_path, GOOD_CONFIG)
    weekly = cfg.datasets["db"].schedules[1]
    assert (weekly.timezone, weekly.tier, weekly.grace_s) == ("Europe/Berlin", "weekly", 3600)
    assert cfg.retention.keep("weekly", "remote") == "8w"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (('"0 1 * * sun"', '"0 25 * * sun"'), "datasets.db.schedules[1].cron", "not a valid cron"),
        (('"0 2 * * *"', '"0 2 * *"'), "datasets.db.schedules[0].cron", "five fields"),
        (('"0 2 * * *"', '"@daily"'), "datasets.db.schedules[0].cron", "five fields"),
        (('"0 2 * * *"', '"0 0 30 2 *"'), "datasets.db.schedules[0].cron", "never fires"),
        (('"Europe/Berlin"', '"Mars/Olympus"'), "datasets.db.schedules[1].timezone", "unknown"),
        (('"Europe/Berlin"', '"../etc/passwd"'), "datasets.db.schedules[1].timezone", "IANA"),
        (('tier = "weekly"', 'tier = "hourly"'), "datasets.db.schedules[1].tier", "Invalid"),
        (('"incremental"', '"differential"'), "datasets.db.schedules[0].backup_type", "Invalid"),
    ],
)
def test_bad_schedule_is_named(
    tmp_path: Path, change: tuple[str, str], field: str, reason: str
) -> None:
    text = GOOD_CONFIG.replace(*change)
    assert text != GOOD_CONFIG
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    msg = str(exc.value)
    assert f"field '{field}'" in msg and reason in msg and "coordinator.toml" in msg, msg
    assert "\n" not in msg


def test_retention_that_keeps_no_copy_of_a_scheduled_tier_is_refused(tmp_path: Path) -> None:
    text = GOOD_CONFIG + '[retention.weekly]\nlocal = "0d"\nremote = "0w"\n'
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    msg = str(exc.value)
    assert "field 'retention.weekly'" in msg and "would delete the only copy" in msg
    assert "datasets.db.schedules[1]" in msg and "\n" not in msg


def test_zero_retention_of_an_unscheduled_tier_is_allowed(tmp_path: Path) -> None:
    text = GOOD_CONFIG + '[retention.yearly]\nlocal = "0d"\nremote = "0d"\narchive = "0y"\n'
    assert _load(tmp_path, text).retention.keep("yearly", "archive") == "0y"


@pytest.mark.parametrize("bad", ["7", "7 days", "7h", "-1d", "1.5y"])
def test_bad_retention_duration_is_named(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, GOOD_CONFIG + f'[retention.daily]\nremote = "{bad}"\n')
    msg = str(exc.value)
    assert "field 'retention.daily.remote'" in msg and "not a duration" in msg
    assert "\n" not in msg
