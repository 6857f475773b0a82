"""Alert rules and the alert state machine, with plain values and a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from coordinator.alert_sinks import alertmanager_payload, safe_url
from coordinator.alerts import (
    AlertState,
    DatasetSnapshot,
    Finding,
    RecentBackup,
    backup_failed,
    backup_missing,
    duration_anomaly,
    evaluate,
    last_due,
    replication_lag,
    step,
    storage_low,
    verification_failed,
)
from shared import subjects
from shared.config.coordinator import AlertsConfig, ScheduleConfig
from shared.wire.base import encode
from shared.wire.monitoring import alert_decoder

NOW = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)  # a Tuesday
DAILY = ScheduleConfig(cron="0 2 * * *", backup_type="incremental")
H = timedelta(hours=1)
CFG = AlertsConfig()


def snap(**kw: object) -> DatasetSnapshot:
    return DatasetSnapshot(dataset="db", target="t", **kw)  # type: ignore[arg-type]


def incr(*durations: float) -> tuple[RecentBackup, ...]:
    return tuple(RecentBackup("incremental", d) for d in durations)


# --- backup_failed ----------------------------------------------------------------------


def test_backup_failed_fires_until_a_later_success() -> None:
    assert backup_failed(snap()) is None
    assert backup_failed(snap(last_success=NOW - H)) is None
    f = backup_failed(snap(last_failure=NOW, failure="job j1: source: no such path"))
    assert f is not None and (f.rule, f.dataset, f.severity) == ("backup_failed", "db", "critical")
    assert "no such path" in f.description
    assert backup_failed(snap(last_success=NOW - H, last_failure=NOW)) is not None
    assert backup_failed(snap(last_success=NOW, last_failure=NOW - H)) is None


# --- backup_missing ---------------------------------------------------------------------


def test_last_due_honours_time_zone_and_several_schedules() -> None:
    assert last_due([], NOW) is None
    assert last_due([DAILY], NOW) == datetime(2024, 3, 5, 2, 0, tzinfo=UTC)
    assert last_due([DAILY], datetime(2024, 3, 5, 2, 0, tzinfo=UTC)) == datetime(
        2024, 3, 5, 2, 0, tzinfo=UTC
    )
    berlin = ScheduleConfig(cron="0 11 * * *", timezone="Europe/Berlin", backup_type="full")
    assert last_due([DAILY, berlin], NOW) == datetime(2024, 3, 5, 10, 0, tzinfo=UTC)
    weekdays = ScheduleConfig(cron="0 2 * * mon-fri", backup_type="incremental")
    sunday = datetime(2024, 3, 3, 12, 0, tzinfo=UTC)
    assert last_due([weekdays], sunday) == datetime(2024, 3, 1, 2, 0, tzinfo=UTC)


def test_backup_missing_after_grace_only() -> None:
    no_sched = snap(last_success=NOW - timedelta(days=30))
    assert backup_missing(no_sched, NOW, 3600) is None  # unscheduled: nothing is expected
    # due 02:00, grace 1 h: at 02:59 still fine, at 03:01 missing
    yesterday = snap(schedules=[DAILY], last_success=NOW - timedelta(days=1) - 9 * H)
    at = datetime(2024, 3, 5, 2, 59, tzinfo=UTC)
    assert backup_missing(yesterday, at, 3600) is None
    f = backup_missing(yesterday, at + timedelta(minutes=2), 3600)
    assert f is not None and f.rule == "backup_missing" and "02:00" in f.description
    # the 02:00 run succeeded at 02:05: resolved
    today = snap(schedules=[DAILY], last_success=datetime(2024, 3, 5, 2, 5, tzinfo=UTC))
    assert backup_missing(today, NOW, 3600) is None
    never = backup_missing(snap(schedules=[DAILY]), NOW, 3600)
    assert never is not None and "since ever" in never.summary


def test_weekday_schedule_is_not_missing_over_the_weekend() -> None:
    weekdays = ScheduleConfig(cron="0 2 * * mon-fri", backup_type="incremental")
    friday = datetime(2024, 3, 1, 2, 10, tzinfo=UTC)
    sunday = datetime(2024, 3, 3, 23, 0, tzinfo=UTC)
    assert backup_missing(snap(schedules=[weekdays], last_success=friday), sunday, 3600) is None


# --- duration_anomaly ------------------------------------------------------------------


def test_duration_anomaly_needs_three_previous_backups() -> None:
    assert duration_anomaly("db", (), 2.0) is None
    assert duration_anomaly("db", incr(100, 10, 10), 2.0) is None  # only two before it
    f = duration_anomaly("db", incr(100, 10, 10, 10), 2.0)
    assert f is not None and f.rule == "duration_anomaly" and f.severity == "warning"
    assert "10.0s average of the previous 3" in f.description


def test_duration_anomaly_threshold_window_and_type() -> None:
    assert duration_anomaly("db", incr(20, 10, 10, 10), 2.0) is None  # exactly 2x: fine
    assert duration_anomaly("db", incr(21, 10, 10, 10), 2.0) is not None
    # only the newest 5 previous count: the slow old ones do not hide the anomaly
    assert duration_anomaly("db", incr(30, 10, 10, 10, 10, 10, 1000, 1000), 2.0) is not None
    # a weekly full is compared with earlier fulls, not with the incrementals
    mixed = (RecentBackup("full", 300), *incr(10, 10, 10, 10), RecentBackup("full", 250))
    assert duration_anomaly("db", mixed, 2.0) is None
    fulls = (RecentBackup("full", 300), *(RecentBackup("full", 100) for _ in range(3)))
    assert duration_anomaly("db", (*fulls, *incr(10)), 2.0) is not None
    # resolves once the newest backup is normal again
    assert duration_anomaly("db", incr(10, 30, 10, 10, 10), 2.0) is None


# --- rules whose data comes later -------------------------------------------------------


def test_rules_with_measurements_as_arguments() -> None:
    assert verification_failed("db", "t", None) is None
    assert verification_failed("db", "t", True) is None
    v = verification_failed("db", "t", False, "pack 3f2a: bad MAC")
    assert v is not None and v.target == "t" and v.description == "pack 3f2a: bad MAC"

    assert replication_lag("db", "off", None) is None
    assert replication_lag("db", "off", 3600) is None
    r = replication_lag("db", "off", 3601)
    assert r is not None and r.fingerprint == "replication_lag/db/off"

    assert storage_low("db", "t", None) is None
    assert storage_low("db", "t", 0.2) is None
    s = storage_low("db", "t", 0.19)
    assert s is not None and "19% free" in s.summary


def test_evaluate_runs_the_rules_it_has_data_for() -> None:
    snaps = [
        snap(last_failure=NOW, recent=incr(100, 10, 10, 10)),
        DatasetSnapshot(dataset="web", target="t", last_success=NOW),
    ]
    found = evaluate(snaps, CFG, NOW)
    assert sorted(f.fingerprint for f in found) == ["backup_failed/db/", "duration_anomaly/db/"]


# --- state ------------------------------------------------------------------------------


def failed(dataset: str = "db") -> Finding:
    return Finding(rule="backup_failed", dataset=dataset, severity="critical", summary="x")


def test_fires_once_then_resolves_once() -> None:
    state, out = step(AlertState(), [failed()], NOW, coordinator="c1")
    [a] = out
    assert (a.status, a.fingerprint, a.starts_at, a.ends_at) == (
        "firing",
        "backup_failed/db/",
        NOW,
        None,
    )
    assert a.coordinator == "c1"
    # still firing: no repeat notification, start time kept
    state, out = step(state, [failed()], NOW + H)
    assert out == [] and state.firing["backup_failed/db/"].starts_at == NOW
    state, out = step(state, [], NOW + 2 * H)
    [r] = out
    assert (r.status, r.starts_at, r.ends_at) == ("resolved", NOW, NOW + 2 * H)
    assert state.firing == {}
    # nothing more to say while it stays resolved
    assert step(state, [], NOW + 3 * H) == (AlertState(), [])
    # coming back is a new alert
    state, out = step(state, [failed()], NOW + 4 * H)
    assert [(x.status, x.starts_at) for x in out] == [("firing", NOW + 4 * H)]


def test_deduplicated_by_rule_dataset_and_target() -> None:
    lag = [replication_lag("db", "off", 7200), replication_lag("db", "cold", 7200)]
    findings = [failed(), failed(), failed("web"), *(f for f in lag if f)]
    state, out = step(AlertState(), findings, NOW)
    assert sorted(a.fingerprint for a in out) == [
        "backup_failed/db/",
        "backup_failed/web/",
        "replication_lag/db/cold",
        "replication_lag/db/off",
    ]
    state, out = step(state, [failed("web"), *(f for f in lag if f)], NOW + H)
    assert [(a.fingerprint, a.status) for a in out] == [("backup_failed/db/", "resolved")]


# --- wire formats -----------------------------------------------------------------------


def test_alert_wire_message_and_subject() -> None:
    _, [a] = step(AlertState(), [failed()], NOW)
    assert alert_decoder.decode(encode(a)) == a
    raw = msgspec.json.decode(encode(a))
    assert raw["kind"] == "alert" and raw["schema"] == 1
    assert subjects.alert("backup_failed", "db") == "mosaic.alert.backup_failed.db"
    with pytest.raises(ValueError):
        subjects.alert("backup_failed", "a.b")


def test_alertmanager_payload() -> None:
    v = verification_failed("db", "t", False, "bad MAC")
    assert v is not None
    state, fired = step(AlertState(), [failed(), v], NOW)
    _, resolved = step(state, [v], NOW + H)
    doc = alertmanager_payload([*fired, *resolved], "http://c:8470/api/v1/alerts")
    assert doc[0] == {
        "labels": {"alertname": "backup_failed", "dataset": "db", "severity": "critical"},
        "annotations": {"summary": "x", "description": ""},
        "startsAt": "2024-03-05T12:00:00+00:00",
        "generatorURL": "http://c:8470/api/v1/alerts",
    }
    assert doc[1]["labels"]["target"] == "t" and "endsAt" not in doc[1]
    assert doc[2]["endsAt"] == "2024-03-05T13:00:00+00:00"
    assert doc[2]["labels"]["alertname"] == "backup_failed"
    assert "generatorURL" not in alertmanager_payload(fired)[0]


def test_webhook_url_is_logged_without_secrets() -> None:
    assert safe_url("https://u:pw@hooks.example/x?token=s") == "https://hooks.example/x"
