"""Schedules that behave (issue 13): missed runs collapse to the newest, a new dataset
never catches up on times before it existed, a grace shorter than the scheduler's pass
is refused at load, a fresh install is "pending" (not degraded, no alert) until the
first run is due, and status says who is active since when and which runs were skipped.

Real SQLite and PostgreSQL catalogs, a real NATS for the lease; the scheduler's clock
is injected and its passes are driven with explicit times (``Scheduler.tick``), so
"at most one run" is a count of what was sent, not a wait.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
import pytest

from coordinator import alerts
from coordinator.catalog import Catalog, open_catalog
from coordinator.heartbeats import HeartbeatStore
from coordinator.jobs.backup import BackupJobs
from coordinator.leader import Leader
from coordinator.schedule import (
    SKIP_BEFORE_DATASET,
    SKIP_SUPERSEDED,
    collapse,
    due_runs,
    job_id,
)
from coordinator.scheduler import SKIPPED_ACTION, Scheduler
from coordinator.status import StatusBuilder
from mosaic.commands.status import notes
from shared.config.coordinator import CoordinatorConfig, DatasetConfig, ScheduleConfig
from shared.config.load import load
from shared.errors import ConfigError
from shared.wire.records import BackupRecord
from shared.wire.sources import FilesSource
from shared.wire.status import DatasetStatus, SkippedRuns, StatusReply
from tests.harness import unique
from tests.test_scheduler import Clock, Recorder

T = datetime(2025, 3, 4, 10, 0, 20, tzinfo=UTC)  # 20 s after a minute
EVERY_MINUTE = ScheduleConfig(cron="* * * * *", backup_type="incremental")  # grace 3600
DAILY = ScheduleConfig(cron="0 2 * * *", backup_type="incremental")
COMPAT = Path(__file__).parent / "data" / "compat-1"


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[Catalog]:
    cat = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield cat
    await cat.aclose()


def config(schedule: ScheduleConfig = EVERY_MINUTE, **kw: Any) -> CoordinatorConfig:
    db = DatasetConfig(agent="a", target="t", source=FilesSource(path="/srv"), schedules=[schedule])
    return CoordinatorConfig(datasets={"db": db}, **kw)


def scheduler(catalog: Catalog, rec: Recorder, clock: Clock) -> Scheduler:
    cfg = config()
    return Scheduler(
        {"db": [EVERY_MINUTE]},
        catalog,
        BackupJobs(cfg, catalog).for_run,
        rec,
        interval_s=30.0,
        clock=clock,
    )


async def start(s: Scheduler) -> None:
    """The scheduler's start (first-seen, the catch-up pass), then stop its loop."""
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        tg.cancel_scope.cancel()


def minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


# --- missed runs collapse -----------------------------------------------------------


def test_a_pass_runs_only_the_newest_run_of_a_schedule() -> None:
    runs = collapse(due_runs({"db": [EVERY_MINUTE]}, T - timedelta(hours=1), T))
    assert [r.fire_time for r in runs if not r.missed] == [minute(T)]
    assert {r.skipped for r in runs if r.missed} == {SKIP_SUPERSEDED}
    assert len(runs) == 60


def test_no_run_older_than_the_dataset_runs() -> None:
    seen = T - timedelta(minutes=5, seconds=30)
    runs = collapse(due_runs({"db": [EVERY_MINUTE]}, T - timedelta(hours=1), T), {"db": seen})
    assert [r.fire_time for r in runs if not r.missed] == [minute(T)]
    early = [r for r in runs if r.skipped == SKIP_BEFORE_DATASET]
    assert len(early) == 54 and all(r.fire_time < seen for r in early)
    # a dataset that appeared after the newest due time: nothing runs at all
    late = collapse(due_runs({"db": [EVERY_MINUTE]}, T - timedelta(hours=1), T), {"db": T})
    assert [r for r in late if not r.missed] == []


async def test_a_fresh_coordinator_sends_nothing_from_before_the_dataset(
    catalog: Catalog,
) -> None:
    rec, clock = Recorder(catalog), Clock(T)
    s = scheduler(catalog, rec, clock)
    await start(s)
    assert rec.sent == []  # the old scheduler sent 60 jobs here
    assert s.first_seen == {"db": T}
    # the next minute comes: that one run goes out, once
    clock.now = minute(T) + timedelta(minutes=1, seconds=5)
    last = await s.tick(T)
    assert rec.sent == [job_id("db", EVERY_MINUTE, minute(T) + timedelta(minutes=1))]
    await s.tick(last)
    assert len(rec.sent) == 1
    # a restart keeps the dataset's first appearance
    again = scheduler(catalog, Recorder(catalog), Clock(T + timedelta(hours=2)))
    await start(again)
    assert again.first_seen == {"db": T}


async def test_after_an_outage_only_the_newest_missed_run_runs_and_status_says_so(
    catalog: Catalog,
) -> None:
    await catalog.datasets_seen(["db"], T - timedelta(days=30))  # an old dataset
    rec = Recorder(catalog)
    await start(scheduler(catalog, rec, Clock(T)))  # down for days, back at T
    assert rec.sent == [job_id("db", EVERY_MINUTE, minute(T))]  # the old code: 60
    entries = await catalog.list_audit(action=SKIPPED_ACTION)
    assert len(entries) == 1 and entries[0].dataset == "db"
    skipped = msgspec.json.decode(entries[0].detail, type=SkippedRuns)
    assert (skipped.reason, skipped.count) == (SKIP_SUPERSEDED, 59)
    assert skipped.last == minute(T) - timedelta(minutes=1)
    # a second coordinator over the same window (fail-over): no second entry, and the
    # runs that did go out are not reported as skipped
    await start(scheduler(catalog, Recorder(catalog), Clock(T)))
    assert len(await catalog.list_audit(action=SKIPPED_ACTION)) == 1

    st = await StatusBuilder(config(), catalog, HeartbeatStore(), clock=lambda: T).reply()
    (ds,) = st.datasets
    assert [(s.reason, s.count, s.tier) for s in ds.skipped_runs] == [
        (SKIP_SUPERSEDED, 59, "daily")
    ]
    assert any("skipped: db daily incremental: 59 run(s)" in line for line in notes(st))


# --- grace shorter than the scheduler's pass ------------------------------------------


def write(tmp_path: Path, text: str, top: str = "") -> Path:
    p = tmp_path / "coordinator.toml"
    p.write_text(
        top + '[datasets.db]\nagent = "a"\ntarget = "t"\n'
        'source = { type = "files", path = "/srv" }\n' + text
    )
    return p


def test_grace_below_the_scheduler_interval_is_refused_naming_both_fields(
    tmp_path: Path,
) -> None:
    p = write(
        tmp_path,
        '[[datasets.db.schedules]]\ncron = "0 2 * * *"\nbackup_type = "full"\n'
        '[[datasets.db.schedules]]\ncron = "0 3 * * *"\nbackup_type = "full"\ngrace_s = 0\n',
    )
    with pytest.raises(ConfigError) as exc:
        load(p, CoordinatorConfig)
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg
    assert "'datasets.db.schedules[1].grace_s'" in msg and "'scheduler_interval_s' (30)" in msg
    assert "at least 30" in msg


def test_grace_equal_to_the_interval_loads_and_maintenance_grace_is_checked(
    tmp_path: Path,
) -> None:
    ok = write(
        tmp_path,
        '[[datasets.db.schedules]]\ncron = "0 2 * * *"\nbackup_type = "full"\ngrace_s = 10\n',
        top="scheduler_interval_s = 10\n",
    )
    assert load(ok, CoordinatorConfig).datasets["db"].schedules[0].grace_s == 10
    bad = write(tmp_path, "[maintenance]\ngrace_s = 5\n")
    with pytest.raises(ConfigError, match=r"'maintenance.grace_s': 5 is shorter than"):
        load(bad, CoordinatorConfig)


# --- a fresh install is pending, not degraded -----------------------------------------


def backup_of(dataset: str, at: datetime) -> BackupRecord:
    return BackupRecord(
        backup_id=unique("b"),
        dataset=dataset,
        agent="a",
        target="t",
        backup_type="full",
        repository_id="r",
        started_at=at - timedelta(minutes=1),
        finished_at=at,
        files=1,
        bytes_read=1,
        bytes_new=1,
        bytes_stored=1,
        duration_s=60.0,
    )


async def test_a_dataset_without_a_backup_is_pending_until_its_first_run_plus_grace(
    catalog: Catalog,
) -> None:
    installed = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)  # the daily run is at 02:00
    clock = Clock(installed)
    b = StatusBuilder(config(DAILY), catalog, HeartbeatStore(), clock=clock)
    st = await b.reply()
    assert st.status == "healthy"  # the old code: "degraded" at once
    assert (st.datasets_pending, st.datasets_without_backup) == (1, 0)
    (ds,) = st.datasets
    assert ds.pending is True and ds.first_seen == installed
    assert any(line.startswith("pending (no backup yet") for line in notes(st))
    # the first run is due tomorrow 02:00; an hour (missing_grace_s) later it is missing
    clock.now = datetime(2025, 3, 5, 2, 59, tzinfo=UTC)
    assert (await b.reply()).status == "healthy"
    clock.now = datetime(2025, 3, 5, 3, 0, 1, tzinfo=UTC)
    st = await b.reply()
    assert st.status == "degraded" and (st.datasets_pending, st.datasets_without_backup) == (0, 1)
    assert st.datasets[0].pending is False
    # a backup ends it either way
    await catalog.record_backup(backup_of("db", clock.now))
    st = await b.reply()
    assert st.status == "healthy" and st.datasets_pending == 0


def test_backup_missing_waits_for_the_first_run_after_the_dataset_appeared() -> None:
    installed = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
    ds = alerts.DatasetSnapshot(dataset="db", target="t", schedules=(DAILY,), first_seen=installed)
    assert alerts.backup_missing(ds, installed, 3600) is None  # the old rule fired here
    assert alerts.backup_missing(ds, datetime(2025, 3, 5, 2, 59, tzinfo=UTC), 3600) is None
    late = alerts.backup_missing(ds, datetime(2025, 3, 5, 3, 1, tzinfo=UTC), 3600)
    assert late is not None and late.rule == "backup_missing"


# --- first appearances in both catalogs, and old catalogs upgraded -----------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_datasets_seen_keeps_the_first_appearance(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'c.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("fresh_postgres_url"))
    )
    cat = await open_catalog(url)
    try:
        assert await cat.datasets_seen(["a", "b", "a"], T) == {"a": T, "b": T}
        later = T + timedelta(days=1)
        assert await cat.datasets_seen(["b", "c"], later) == {"b": T, "c": later}
        assert await cat.datasets_seen(["a"], T - timedelta(days=9)) == {"a": T}
        assert await cat.datasets_seen([], T) == {}
    finally:
        await cat.aclose()


async def test_an_upgraded_catalog_dates_its_datasets_from_their_oldest_job_or_backup(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite"
    shutil.copy(COMPAT / "catalog-v5.sqlite", path)
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT dataset, min(at) FROM (SELECT dataset, requested_at AS at FROM jobs"
            " UNION ALL SELECT dataset, started_at FROM backups) GROUP BY dataset"
        ).fetchall()
    finally:
        conn.close()
    assert rows
    oldest = {d: datetime.fromtimestamp(us / 1e6, UTC) for d, us in rows}
    cat = await open_catalog(f"sqlite:///{path}")
    try:
        now = datetime(2030, 1, 1, tzinfo=UTC)
        got = await cat.datasets_seen([*oldest, "brand-new"], now)
    finally:
        await cat.aclose()
    assert got == {**oldest, "brand-new": now}


# --- who is active, since when ---------------------------------------------------------


async def test_status_names_the_active_coordinator_and_since_when_on_a_standby(
    nats_url: str, catalog: Catalog
) -> None:
    bucket = unique("lease")
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        active = Leader(js, "coord-a/1", ttl_s=3.0, bucket=bucket)
        standby = Leader(js, "coord-b/2", ttl_s=3.0, bucket=bucket)

        async def body(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            await tg.start(active.run_when_leader, body)  # ready: it holds the lease
            await tg.start(standby.run_when_leader, body)  # ready: it is the standby
            assert active.is_leader and not standby.is_leader
            assert active.since is not None
            b = StatusBuilder(
                config(DAILY), catalog, HeartbeatStore(), clock=lambda: T, lease=standby.holder
            )
            st = await b.reply()
            assert (st.active_coordinator, st.active_since) == ("coord-a/1", active.since)
            assert notes(st)[0] == (
                f"active coordinator: coord-a/1 since {active.since.isoformat(timespec='seconds')}"
            )
            assert await active.holder() == ("coord-a/1", active.since)
            tg.cancel_scope.cancel()
    finally:
        await nc.close()


def test_status_notes_without_a_known_holder() -> None:
    st = StatusReply(
        status="healthy",
        coordinator="c",
        datasets=[DatasetStatus(dataset="d", agent="a", target="t")],
        recent_failures=[],
        backups_total=0,
    )
    assert notes(st) == [
        "active coordinator: none known (no lease holder, or an older coordinator)"
    ]
