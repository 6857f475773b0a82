"""The scheduler loop: due runs are dispatched once, across restarts.

The clock is injected, so a run is due at once instead of after a real cron minute.
First against a real SQLite catalog with a recording dispatcher (which run goes out and
which does not), then end to end with a real NATS server, coordinator and agent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import Catalog, open_catalog
from coordinator.jobs.backup import BackupJobs
from coordinator.schedule import job_id
from coordinator.scheduler import Scheduler
from coordinator.service import Coordinator
from engine.storage.open import open_target
from mosaic import operator
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import (
    CatalogConfig,
    CoordinatorConfig,
    DatasetConfig,
    ScheduleConfig,
)
from shared.config.targets import LocalTargetConfig
from shared.errors import BusError
from shared.vocab import utcnow
from shared.wire.api import JobAccepted
from shared.wire.events import BackupCompleted
from shared.wire.jobs import Job
from shared.wire.records import JobRecord
from shared.wire.sources import FilesSource
from tests.harness import make_tree, unique

QUIET = Console(quiet=True)
FIRE = datetime(2024, 1, 7, 2, 0, tzinfo=UTC)  # a Sunday
DAILY = ScheduleConfig(cron="0 2 * * *", backup_type="incremental")
WEEKLY = ScheduleConfig(cron="0 1 * * sun", backup_type="full", tier="weekly")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Recorder:
    """Stands in for the coordinator's dispatch path: records the job like it does."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.sent: list[str] = []
        self.fail = False

    async def __call__(self, job: Job) -> JobAccepted:
        if self.fail:
            raise BusError("nats down")
        now = utcnow()
        await self.catalog.record_job(
            JobRecord(
                job_id=job.job_id,
                job_kind="backup",
                dataset=job.dataset,
                agent=job.agent,
                target=job.target,
                status="dispatched",
                requested_at=now,
                updated_at=now,
            )
        )
        self.sent.append(job.job_id)
        return JobAccepted(job_id=job.job_id, agent=job.agent)


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[Catalog]:
    cat = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield cat
    await cat.aclose()


def jobs(catalog: Catalog) -> BackupJobs:
    """The coordinator's real job factory, for one dataset ``db``."""
    db = DatasetConfig(agent="a", target="t", source=FilesSource(path="/srv"))
    return BackupJobs(CoordinatorConfig(datasets={"db": db}), catalog)


def scheduler(catalog: Catalog, rec: Recorder, clock: Clock) -> Scheduler:
    return Scheduler(
        {"db": [DAILY, WEEKLY]}, catalog, jobs(catalog).for_run, rec, interval_s=0.01, clock=clock
    )


async def test_start_catches_up_inside_grace_only(catalog: Catalog) -> None:
    # down since Saturday; now Sunday 02:10: 01:00 weekly is 70 min old (grace 1 h)
    await catalog.datasets_seen(["db"], FIRE - timedelta(days=7))  # configured long ago
    rec = Recorder(catalog)
    s = scheduler(catalog, rec, Clock(FIRE + timedelta(minutes=10)))
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        tg.cancel_scope.cancel()
    assert rec.sent == [job_id("db", DAILY, FIRE)]


async def test_restart_does_not_dispatch_again(catalog: Catalog) -> None:
    clock = Clock(FIRE + timedelta(seconds=30))
    first = Recorder(catalog)
    await scheduler(catalog, first, clock).tick(FIRE - timedelta(hours=1))
    assert first.sent == [job_id("db", DAILY, FIRE)]
    await catalog.update_job(first.sent[0], "completed", utcnow(), backup_id=first.sent[0])
    again = Recorder(catalog)
    await scheduler(catalog, again, clock).tick(FIRE - timedelta(hours=1))
    assert again.sent == []


async def test_dispatched_but_never_started_is_published_again(catalog: Catalog) -> None:
    # a crash between the catalog write and the publish; JetStream drops the re-publish
    # if the first one did get through (same Nats-Msg-Id inside the window)
    clock = Clock(FIRE + timedelta(seconds=30))
    first = Recorder(catalog)
    await scheduler(catalog, first, clock).tick(FIRE - timedelta(hours=1))
    again = Recorder(catalog)
    await scheduler(catalog, again, clock).tick(FIRE - timedelta(hours=1))
    assert again.sent == first.sent


async def test_failed_dispatch_is_retried_on_the_next_pass(catalog: Catalog) -> None:
    clock = Clock(FIRE + timedelta(seconds=30))
    rec = Recorder(catalog)
    s = scheduler(catalog, rec, clock)
    rec.fail = True
    start = FIRE - timedelta(minutes=1)
    assert await s.tick(start) == start  # nothing went out: look at the same window again
    rec.fail = False
    clock.now += timedelta(seconds=30)
    assert await s.tick(start) == clock.now
    assert rec.sent == [job_id("db", DAILY, FIRE)]
    assert await s.tick(clock.now) == clock.now and len(rec.sent) == 1


async def test_missed_runs_are_not_dispatched(catalog: Catalog) -> None:
    rec = Recorder(catalog)
    clock = Clock(FIRE + timedelta(hours=5))
    await scheduler(catalog, rec, clock).tick(FIRE - timedelta(hours=3))
    assert rec.sent == []


async def test_no_schedules_returns_at_once(catalog: Catalog) -> None:
    rec = Recorder(catalog)
    s = Scheduler(
        {"db": []}, catalog, jobs(catalog).for_run, rec, interval_s=0.01, clock=Clock(FIRE)
    )
    with anyio.fail_after(5):
        await s.run()
    assert rec.sent == []


# --- end to end: NATS, coordinator, agent --------------------------------------------


async def test_scheduled_backup_runs_once_across_coordinator_restart(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    agent_name, dataset = unique("agent"), unique("ds")
    agent_cfg = AgentConfig(
        name=agent_name,
        nats_url=nats_url,
        key_file=str(tmp_path / "repo.key"),
        targets={"t": LocalTargetConfig(path=str(tmp_path / "repo"))},
        ack_wait_s=5.0,
        progress_interval_s=0.2,
    )
    cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        datasets={
            dataset: DatasetConfig(
                agent=agent_name, target="t", source=FilesSource(path=str(src)), schedules=[DAILY]
            )
        },
        scheduler_interval_s=0.2,
    )
    clock = Clock(FIRE + timedelta(seconds=30))
    first_id = job_id(dataset, DAILY, FIRE)
    catalog = await open_catalog(cfg.catalog.url)
    # configured before 02:00 (a fresh dataset never runs times before it appeared)
    await catalog.datasets_seen([dataset], FIRE - timedelta(days=1))
    bus = await Bus.connect(nats_url, name="test")
    try:
        async with anyio.create_task_group() as tg:
            targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
            key, _ = await prepare_key(agent_cfg, targets)
            runner = AgentRunner(agent_cfg, key, targets)
            await tg.start(runner.run)

            # 1. the coordinator starts 30 s after 02:00 and runs the 02:00 backup
            async with anyio.create_task_group() as coord:
                await coord.start(Coordinator(cfg, catalog, clock=clock).run)
                done = await operator.follow(bus, first_id, QUIET, timeout=60, label="sched")
                assert isinstance(done, BackupCompleted) and done.backup_id == first_id
                await operator.until_cataloged(bus, done, QUIET)
                coord.cancel_scope.cancel()
            job = await catalog.get_job(first_id)
            assert job is not None and job.status == "completed"

            # 2. a new coordinator on the same catalog, same moment: the run is not sent
            # again. A manual backup queued behind anything it might have sent proves
            # it: the agent runs one job at a time, in order.
            async with anyio.create_task_group() as coord:
                await coord.start(Coordinator(cfg, catalog, clock=clock).run)
                manual = await operator.backup(bus, dataset, "incremental", QUIET, QUIET)
                assert isinstance(manual, BackupCompleted)
                rows = await catalog.list_backups(dataset=dataset)
                assert sorted(r.backup_id for r in rows) == sorted([first_id, manual.backup_id])

                # 3. the clock reaches the next day's 02:00: the loop sends that run
                clock.now = FIRE + timedelta(days=1, seconds=1)
                next_id = job_id(dataset, DAILY, FIRE + timedelta(days=1))
                nxt = await operator.follow(bus, next_id, QUIET, timeout=60, label="sched")
                assert isinstance(nxt, BackupCompleted) and nxt.backup_type == "incremental"
                await operator.until_cataloged(bus, nxt, QUIET)
                coord.cancel_scope.cancel()

            await runner.aclose()
            tg.cancel_scope.cancel()
    finally:
        await bus.aclose()
        await catalog.aclose()
