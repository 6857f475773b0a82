"""Maintenance windows (issue 13): ``window = "02:00-04:00"`` on a schedule, refused at
load when it cannot work, and ``window_exceeded`` (status, alert, audit, /metrics, the
status and list notes) for a scheduled run that finished after its window's end or is
still running there.

The pure parts with plain values; then a real NATS, coordinator (SQLite catalog, HTTP
API) and agent, the coordinator's clock injected: a run is made due by setting the
clock, and "past the window's end" by moving it, never by waiting. A backup's
``finished_at`` is the agent's real time, so the finished cases schedule the run a few
real minutes ago and give it a window that ended before it could finish (or one that
ends hours later).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import aiohttp
import anyio
import pytest

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import Catalog, open_catalog
from coordinator.heartbeats import HeartbeatStore
from coordinator.schedule import job_id
from coordinator.service import Coordinator
from coordinator.windows import WINDOW_ACTION, Windows, judge, overshoot, window_bounds
from engine.storage.open import open_target
from mosaic.commands.status import notes, window_notes
from shared.config.agent import AgentConfig, HookConfig
from shared.config.coordinator import (
    CatalogConfig,
    CoordinatorConfig,
    DatasetConfig,
    HttpConfig,
    ScheduleConfig,
)
from shared.config.load import load
from shared.config.targets import LocalTargetConfig
from shared.errors import ConfigError
from shared.vocab import utcnow
from shared.wire.records import BackupRecord, JobRecord
from shared.wire.sources import FilesSource
from shared.wire.status import WindowStatus
from tests.harness import cli, make_tree, unique
from tests.test_scheduler import Clock

T = TypeVar("T")
FIRE = datetime(2024, 1, 7, 2, 0, tzinfo=UTC)


# --- config: what a window may be -----------------------------------------------------


def write(tmp_path: Path, cron: str, window: str, timezone: str = "UTC") -> Path:
    p = tmp_path / "coordinator.toml"
    p.write_text(
        '[datasets.db]\nagent = "a"\ntarget = "t"\nsource = { type = "files", path = "/srv" }\n'
        '[[datasets.db.schedules]]\ncron = "0 3 * * sun"\nbackup_type = "full"\n'
        f'[[datasets.db.schedules]]\ncron = "{cron}"\nbackup_type = "incremental"\n'
        f'timezone = "{timezone}"\nwindow = "{window}"\n'
    )
    return p


@pytest.mark.parametrize(
    ("cron", "window"),
    [
        ("0 2 * * *", "02:00-04:00"),
        ("30 23 * * *", "22:00-02:00"),  # wraps past midnight
        ("15 0 * * *", "22:00-02:00"),  # after midnight, inside the wrapped window
        ("*/15 2-3 * * *", "2:00-4:00"),  # every run of the cron lies inside
        ("0 2 * * *", "02:00-23:59"),
    ],
)
def test_a_window_that_holds_every_run_of_the_cron_loads(
    tmp_path: Path, cron: str, window: str
) -> None:
    cfg = load(write(tmp_path, cron, window, "Europe/Berlin"), CoordinatorConfig)
    first, second = cfg.datasets["db"].schedules
    assert first.window is None and second.window == window


@pytest.mark.parametrize(
    ("cron", "window", "says"),
    [
        ("0 2 * * *", "2am-4am", 'is not a time range; write "HH:MM-HH:MM"'),
        ("0 2 * * *", "02:00-24:00", "is not a time range"),
        ("0 2 * * *", "02:00-02:00", "leaves no time at all"),
        ("0 2 * * *", "03:00-05:00", "does not contain the run at 02:00 (cron '0 2 * * *')"),
        # end before start, not meant to wrap: the swapped window is the fix
        (
            "0 2 * * *",
            "04:00-02:00",
            "the next day, and the run at 02:00 (cron '0 2 * * *') "
            'is outside it (did you mean "02:00-04:00"?)',
        ),
        # it does wrap, but starts after the run: no swap offered
        ("0 2 * * *", "22:00-02:00", "outside it (widen the window to include 02:00"),
        ("*/30 * * * *", "02:00-04:00", "does not contain the run at 00:00"),
    ],
)
def test_a_window_that_cannot_work_is_refused_in_one_line(
    tmp_path: Path, cron: str, window: str, says: str
) -> None:
    p = write(tmp_path, cron, window)
    with pytest.raises(ConfigError) as exc:
        load(p, CoordinatorConfig)
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg
    assert "field 'datasets.db.schedules[1].window'" in msg  # the dataset, schedule, field
    assert says in msg


def test_a_bad_cron_is_reported_as_the_cron_not_the_window(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"schedules\[1\]\.cron'"):
        load(write(tmp_path, "0 2 * *", "02:00-04:00"), CoordinatorConfig)


# --- which window a run belongs to, and when it exceeds it -----------------------------


def sched(cron: str, window: str, tz: str = "UTC") -> ScheduleConfig:
    return ScheduleConfig(cron=cron, backup_type="incremental", timezone=tz, window=window)


def test_window_bounds_follow_the_schedules_wall_clock() -> None:
    plain = sched("0 2 * * *", "02:00-04:00")
    assert window_bounds(plain, FIRE) == (FIRE, FIRE + timedelta(hours=2))
    wraps = sched("30 23 * * *", "22:00-02:00")
    late = datetime(2024, 1, 6, 23, 30, tzinfo=UTC)
    assert window_bounds(wraps, late) == (
        datetime(2024, 1, 6, 22, 0, tzinfo=UTC),
        datetime(2024, 1, 7, 2, 0, tzinfo=UTC),
    )
    after_midnight = sched("15 0 * * *", "22:00-02:00")
    assert window_bounds(after_midnight, datetime(2024, 1, 7, 0, 15, tzinfo=UTC))[1] == FIRE
    # Berlin, the night clocks go forward (2025-03-30 02:00 CET → 03:00 CEST): the window
    # ends at 05:00 on the wall, 03:00 UTC, three real hours after its 01:00 CET start
    berlin = sched("0 1 * * *", "01:00-05:00", "Europe/Berlin")
    start, end = window_bounds(berlin, datetime(2025, 3, 30, 0, 0, tzinfo=UTC))
    assert (start, end) == (
        datetime(2025, 3, 30, 0, 0, tzinfo=UTC),
        datetime(2025, 3, 30, 3, 0, tzinfo=UTC),
    )


def test_finished_at_the_end_is_inside_running_at_the_end_is_not() -> None:
    end = FIRE + timedelta(hours=2)
    base = WindowStatus(schedule="daily", window="02:00-04:00", window_end=end, job_id="j")
    assert not judge(base, finished=end, running=False, now=end).exceeded
    late = judge(base, finished=end + timedelta(seconds=90), running=False, now=end)
    assert (late.exceeded, late.exceeded_s, late.running) == (True, 90.0, False)
    at_end = judge(base, finished=None, running=True, now=end)
    assert (at_end.exceeded, at_end.exceeded_s, at_end.running) == (True, 0.0, True)
    inside = judge(base, finished=None, running=True, now=end - timedelta(minutes=1))
    assert (inside.exceeded, inside.running) == (False, True)
    assert [overshoot(s) for s in (12, 250, 3900)] == ["12s", "4m 10s", "1h 05m"]


# --- from catalog rows: failures, several windowed schedules, runs never sent -----------


async def test_a_failure_after_the_end_exceeds_and_the_exceeded_schedule_is_shown(
    tmp_path: Path,
) -> None:
    daily = sched("0 2 * * *", "02:00-04:00")
    weekly = ScheduleConfig(
        cron="0 1 * * sun", backup_type="full", tier="weekly", window="01:00-03:00"
    )
    cfg = CoordinatorConfig(
        datasets={
            "db": DatasetConfig(
                agent="a", target="t", source=FilesSource(path="/srv"), schedules=[daily, weekly]
            )
        }
    )
    now = datetime(2024, 1, 8, 10, 0, tzinfo=UTC)  # Monday; the weekly ran on Sunday
    sunday, monday = FIRE - timedelta(hours=1), FIRE + timedelta(days=1)
    catalog = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        await catalog.datasets_seen(["db"], FIRE - timedelta(days=30))
        weekly_id, daily_id = job_id("db", weekly, sunday), job_id("db", daily, monday)
        await catalog.record_backup(
            BackupRecord(
                backup_id=weekly_id,
                dataset="db",
                agent="a",
                target="t",
                backup_type="full",
                repository_id="r",
                started_at=sunday,
                finished_at=sunday + timedelta(hours=2, minutes=30),  # 30 min past 03:00
                files=1,
                bytes_read=1,
                bytes_new=1,
                bytes_stored=1,
                duration_s=9000.0,
                tier="weekly",
            )
        )
        await catalog.record_job(
            JobRecord(
                job_id=daily_id,
                job_kind="backup",
                dataset="db",
                agent="a",
                target="t",
                status="dispatched",
                requested_at=monday,
                updated_at=monday,
            )
        )
        await catalog.update_job(daily_id, "failed", monday + timedelta(hours=1), error_code="x")
        windows = Windows(cfg, catalog, HeartbeatStore(), clock=lambda: now)
        (w_daily, w_weekly) = (await windows.statuses(now))["db"]
        assert (w_daily.job_id, w_daily.exceeded) == (daily_id, False)  # failed at 03:00
        assert (w_weekly.job_id, w_weekly.exceeded_s) == (weekly_id, 1800.0)
        (finding,) = await windows.findings(now)
        assert finding.rule == WINDOW_ACTION and weekly_id in finding.summary

        # a later failure of the daily, after its end: both exceeded, the newest is shown
        tuesday = monday + timedelta(days=1)
        late_id = job_id("db", daily, tuesday)
        await catalog.record_job(
            JobRecord(
                job_id=late_id,
                job_kind="backup",
                dataset="db",
                agent="a",
                target="t",
                status="dispatched",
                requested_at=tuesday,
                updated_at=tuesday,
            )
        )
        await catalog.update_job(late_id, "failed", tuesday + timedelta(hours=2, seconds=10))
        later = now + timedelta(days=1)
        (finding,) = await Windows(cfg, catalog, HeartbeatStore()).findings(later)
        assert late_id in finding.summary and "10s past" in finding.summary
        recorded = {e.job_id for e in await catalog.list_audit(action=WINDOW_ACTION)}
        assert recorded == {weekly_id, late_id}

        # a run the scheduler never sent (the coordinator was down): no job, not exceeded
        wednesday = later + timedelta(days=1)
        (w_daily, _) = (await Windows(cfg, catalog, HeartbeatStore()).statuses(wednesday))["db"]
        assert (w_daily.job_id, w_daily.exceeded) == (None, False)
    finally:
        await catalog.aclose()


# --- end to end: NATS, coordinator, agent ---------------------------------------------


@dataclass
class Estate:
    coordinator: Coordinator
    catalog: Catalog
    clock: Clock
    http: str


@asynccontextmanager
async def estate(
    nats_url: str,
    tmp_path: Path,
    schedules: dict[str, ScheduleConfig],
    clock: Clock,
    hooks: dict[str, HookConfig] | None = None,
) -> AsyncIterator[Estate]:
    """One agent backing up a small tree for each dataset in ``schedules``, and a
    coordinator whose clock is ``clock`` (the datasets configured a day before it)."""
    src = make_tree(tmp_path / "src", big_mib=1)
    agent_name = unique("agent")
    agent_cfg = AgentConfig(
        name=agent_name,
        nats_url=nats_url,
        key_file=str(tmp_path / "repo.key"),
        targets={"t": LocalTargetConfig(path=str(tmp_path / "repo"))},
        ack_wait_s=5.0,
        progress_interval_s=0.2,
        hooks=hooks or {},
    )
    cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        datasets={
            name: DatasetConfig(
                agent=agent_name, target="t", source=FilesSource(path=str(src)), schedules=[s]
            )
            for name, s in schedules.items()
        },
        scheduler_interval_s=0.2,
        http=HttpConfig(port=0, anonymous=True),
    )
    catalog = await open_catalog(cfg.catalog.url)
    await catalog.datasets_seen(sorted(schedules), clock.now - timedelta(days=1))
    try:
        async with anyio.create_task_group() as tg:
            targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
            key, _ = await prepare_key(agent_cfg, targets)
            runner = AgentRunner(agent_cfg, key, targets)
            await tg.start(runner.run)
            coordinator = Coordinator(cfg, catalog, clock=clock)
            await tg.start(coordinator.run)
            yield Estate(coordinator, catalog, clock, f"http://127.0.0.1:{coordinator.http_port}")
            await runner.aclose()
            tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 60) -> T:
    """``probe()`` once it is not None (a positive marker, bounded)."""
    with anyio.fail_after(timeout):
        while True:
            got = await probe()
            if got is not None:
                return got
            await anyio.sleep(0.05)


async def scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("backup_window_exceeded_total")
    }


def hhmm(t: datetime) -> str:
    return f"{t:%H:%M}"


async def test_a_backup_finishing_after_its_window_is_exceeded_by_the_overshoot(
    nats_url: str, tmp_path: Path
) -> None:
    # Both runs fire three real minutes ago; "late"'s window closed a minute after it
    # fired, before any backup could finish; "roomy"'s stays open for hours.
    fire = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=3)
    cron = f"{fire.minute} {fire.hour} * * *"
    late = sched(cron, f"{hhmm(fire)}-{hhmm(fire + timedelta(minutes=1))}")
    roomy = sched(cron, f"{hhmm(fire)}-{hhmm(fire + timedelta(hours=3))}")
    clock = Clock(fire + timedelta(seconds=30))
    lt, rm = unique("late"), unique("roomy")  # job ids are NATS message ids: never reused
    async with estate(nats_url, tmp_path, {lt: late, rm: roomy}, clock) as e:
        ids = {name: job_id(name, s, fire) for name, s in ((lt, late), (rm, roomy))}
        done: dict[str, BackupRecord] = {}
        for name, jid in ids.items():
            done[name] = await eventually(lambda jid=jid: e.catalog.get_backup(jid))  # type: ignore[misc]

        st = await e.coordinator.status()
        by = {d.dataset: d.window for d in st.datasets}
        end = fire + timedelta(minutes=1)
        over = (done[lt].finished_at - end).total_seconds()
        assert over > 60  # it finished after the window closed, which was before now
        assert by[lt] == WindowStatus(
            schedule="daily",
            window=late.window or "",
            window_end=end,
            job_id=ids[lt],
            exceeded=True,
            exceeded_s=over,
        )
        roomy_w = by[rm]
        assert roomy_w is not None and roomy_w.job_id == ids[rm]
        assert (roomy_w.exceeded, roomy_w.exceeded_s, roomy_w.running) == (False, 0.0, False)
        assert st.windows_exceeded == 1
        lines = [line for line in notes(st) if line.startswith("window exceeded:")]
        assert lines == [
            f"window exceeded: {lt} daily run {ids[lt]}: finished {overshoot(over)} past "
            f"the end of its window {late.window} ({end.isoformat(timespec='minutes')})"
        ]
        assert window_notes(st, rm) == []  # what `list --dataset roomy` adds
        # the real commands print it: `status` below its table, `list` below the history
        for args in (("status",), ("list",), ("list", "--dataset", rm)):
            ran = await anyio.to_thread.run_sync(
                functools.partial(cli, *args, "--nats", nats_url, "--connect-timeout", "5")
            )
            assert ran.returncode == 0, ran.stderr
            printed = " ".join(ran.stdout.split())  # rich wraps long lines
            assert (" ".join(lines[0].split()) in printed) == (args[-1] != rm), ran.stdout

        # the alert, once per dataset; one audit entry per run; the counter from them
        await e.coordinator.alerter.tick()
        firing = [a for a in e.coordinator.alerter.firing() if a.rule == WINDOW_ACTION]
        assert [a.dataset for a in firing] == [lt]
        assert overshoot(over) in firing[0].summary and "finished" in firing[0].summary
        await e.coordinator.alerter.tick()
        entries = await e.catalog.list_audit(action=WINDOW_ACTION)
        assert [(x.dataset, x.job_id) for x in entries] == [(lt, ids[lt])]
        assert await scrape(e.http) == {
            f'backup_window_exceeded_total{{dataset="{lt}"}}': 1.0,
            f'backup_window_exceeded_total{{dataset="{rm}"}}': 0.0,
        }


async def test_a_run_still_going_at_its_windows_end_is_running_and_exceeded(
    nats_url: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    nightly = sched("0 2 * * *", "02:00-04:00")
    hold = HookConfig(pre=[f"while [ ! -e {go} ]; do sleep 0.05; done"], timeout_s=120)
    clock = Clock(FIRE + timedelta(seconds=30))
    db = unique("db")  # job ids are NATS message ids: never reused
    async with estate(nats_url, tmp_path, {db: nightly}, clock, {db: hold}) as e:
        jid = job_id(db, nightly, FIRE)

        async def running() -> bool | None:
            job = await e.catalog.get_job(jid)
            return True if job is not None and job.status == "running" else None

        await eventually(running)
        end = FIRE + timedelta(hours=2)
        clock.now = FIRE + timedelta(hours=1)  # still inside the window
        (ds,) = (await e.coordinator.status()).datasets
        assert ds.window is not None and ds.window.job_id == jid and not ds.window.exceeded

        clock.now = end + timedelta(minutes=5)  # 04:05, the hook still holds the backup
        st = await e.coordinator.status()
        (ds,) = st.datasets
        assert ds.window == WindowStatus(
            schedule="daily",
            window="02:00-04:00",
            window_end=end,
            job_id=jid,
            running=True,
            exceeded=True,
            exceeded_s=300.0,
        )
        assert st.windows_exceeded == 1
        assert any(f"{db} daily run" in x and "still running 5m 00s past" in x for x in notes(st))
        await e.coordinator.alerter.tick()
        (alert,) = [a for a in e.coordinator.alerter.firing() if a.rule == WINDOW_ACTION]
        assert "still running 5m 00s past" in alert.summary

        go.touch()  # let it finish: now it finished (years, in real time) after the end
        backup = await eventually(lambda: e.catalog.get_backup(jid))
        (ds,) = (await e.coordinator.status()).datasets
        assert ds.window is not None and not ds.window.running and ds.window.exceeded
        assert ds.window.exceeded_s == (backup.finished_at - end).total_seconds()
        await e.coordinator.alerter.tick()
        # seen exceeding twice (running, then finished): one run, counted once
        assert len(await e.catalog.list_audit(action=WINDOW_ACTION)) == 1
        assert await scrape(e.http) == {f'backup_window_exceeded_total{{dataset="{db}"}}': 1.0}
