"""Whole-host disaster-recovery drills against real servers: a host with PostgreSQL (WAL
archiving), Redis and a files dataset is drilled on the maintenance agent to one point in
time — the database replays its WAL to exactly that instant, starts, is amchecked and
counted; Redis is checked with redis-check-rdb; the files are re-hashed — with RTO per
dataset and in total, the achieved RPO and a Markdown report; a damaged pack fails the
host drill, names the dataset and raises ``host_drill_failed``."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio.to_thread
import psycopg
import pytest

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator import host_drill_plan as plan
from coordinator.catalog import Catalog, open_catalog
from coordinator.service import Coordinator
from engine.storage.open import open_target
from mosaic import operator
from mosaic.commands.drill_host import host_drill
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import (
    AlertsConfig,
    CatalogConfig,
    CoordinatorConfig,
    DatasetConfig,
    MaintenanceConfig,
)
from shared.config.targets import LocalTargetConfig
from shared.errors import OperatorError
from shared.vocab import BackupType
from shared.wire.api import StatusRequest
from shared.wire.drills import host_drill_result_decoder
from shared.wire.events import BackupCompleted
from shared.wire.records import BackupRecord, MaintenanceRecord
from shared.wire.sources import FilesSource, PostgresSource, RedisSource, Source, SystemSource
from shared.wire.status import StatusReply
from tests.fixtures.postgres import ArchivingPostgres
from tests.fixtures.redis import RedisServer
from tests.harness import cli, make_tree, unique
from tests.test_maintenance_jobs import OFF, QUIET, Clock, eventually, flip_byte_in_a_pack


@dataclass
class HostStack:
    bus: Bus
    coordinator: Coordinator
    catalog: Catalog
    host: str
    maint: str
    repos: dict[str, Path]  # dataset → its repository folder


@pytest.fixture
def scratch() -> Iterator[Path]:
    # a drill starts PostgreSQL (as postgres) in here: pytest's tmp_path is root-only
    base = Path(tempfile.mkdtemp(prefix="mosaic-hostdrill-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@asynccontextmanager
async def host_stack(
    nats_url: str,
    work: Path,
    scratch: Path,
    sources: dict[str, Source],
    *,
    cron: str = "",
    clock: Clock | None = None,
) -> AsyncIterator[HostStack]:
    """A coordinator, the host's agent and a maintenance agent (same targets and key):
    every dataset on its own local target, so a flipped byte damages one dataset."""
    host, maint = unique("host"), unique("maint")
    repos = {name: work / f"repo-{name}" for name in sources}
    targets = {name: LocalTargetConfig(path=str(p)) for name, p in repos.items()}
    agents = [
        AgentConfig(
            name=n,
            nats_url=nats_url,
            key_file=str(work / "repo.key"),
            targets=targets,
            ack_wait_s=5.0,
        )
        for n in (host, maint)
    ]
    cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={
            name: DatasetConfig(agent=host, target=name, source=src)
            for name, src in sources.items()
        },
        scheduler_interval_s=0.2,
        alerts=AlertsConfig(interval_s=0.2),
        maintenance=MaintenanceConfig(
            **OFF, agent=maint, drill_scratch=str(scratch), host_drill_cron=cron
        ),
    )
    catalog = await open_catalog(cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            coordinator = Coordinator(cfg, catalog, clock=clock or Clock())
            await tg.start(coordinator.run)
            runners = []
            for agent_cfg in agents:  # the host first: it creates the repositories
                opened = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
                key, _ = await prepare_key(agent_cfg, opened)
                runners.append(AgentRunner(agent_cfg, key, opened))
                await tg.start(runners[-1].run)
            bus = await Bus.connect(nats_url, name="test")
            try:
                yield HostStack(bus, coordinator, catalog, host, maint, repos)
            finally:
                await bus.aclose()
                for r in runners:
                    await r.aclose()
                tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


async def backup(st: HostStack, dataset: str, kind: BackupType = "full") -> BackupCompleted:
    done = await operator.backup(st.bus, dataset, kind, QUIET, QUIET, timeout=120)
    assert isinstance(done, BackupCompleted)
    return done


async def test_drill_host_restores_every_dataset_to_one_point_and_reports(
    nats_url: str,
    tmp_path: Path,
    scratch: Path,
    archiving_postgres: ArchivingPostgres,
    redis_server: RedisServer,
) -> None:
    pg = archiving_postgres
    table = f"hd_{uuid.uuid4().hex[:8]}"
    redis_server.load([["SET", f"key:{i}", f"value {i}"] for i in range(300)])
    sources: dict[str, Source] = {
        "app-db": PostgresSource(port=pg.port, wal_spool=str(pg.spool)),
        "app-cache": RedisSource(port=redis_server.port),
        "app-files": FilesSource(path=str(make_tree(tmp_path / "src", big_mib=1))),
    }
    report = tmp_path / "drill.md"
    async with host_stack(nats_url, tmp_path, scratch, sources) as st:
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, note text)")
            conn.execute(f"INSERT INTO {table} SELECT g, 'A' FROM generate_series(1, 300) g")
        base = await backup(st, "app-db")
        cache = await backup(st, "app-cache")
        files = await backup(st, "app-files")
        time.sleep(1)
        point = datetime.now(UTC)  # the common point: batch A and the two backups before it
        time.sleep(1)
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute(f"INSERT INTO {table} SELECT g, 'B' FROM generate_series(301, 500) g")
        await backup(st, "app-db", "incremental")  # ships the WAL past the point

        args = ("drill", "host", st.host, "--pitr", point.isoformat(), "--report", str(report))
        run = functools.partial(cli, *args, "--nats", nats_url, timeout=300)
        done = await anyio.to_thread.run_sync(run)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"drill of host {st.host}: PASSED" in done.stdout
        [rec] = await st.catalog.list_maintenance(kind="host_drill", dataset=st.host)
        drills = await st.catalog.list_maintenance(kind="drill")
        again = functools.partial(cli, "drill", "report", "--host", st.host, "--nats", nats_url)
        printed = await anyio.to_thread.run_sync(again)
        shown = await anyio.to_thread.run_sync(functools.partial(cli, "status", "--nats", nats_url))
    # a passing host drill shows in status too (coordinator/host_drill_status.py)
    line = next(ln for ln in shown.stdout.splitlines() if ln.startswith(f"host drill {st.host}:"))
    assert "PASSED" in line and rec.job_id in line and "RTO" in line

    res = host_drill_result_decoder.decode(rec.detail)
    assert (res.outcome, res.agent, res.point) == ("passed", st.maint, point)
    # databases first, then application data; each restored on the maintenance agent
    assert [i.dataset for i in res.items] == ["app-cache", "app-db", "app-files"]
    assert {d.agent for d in drills} == {st.maint} and len(drills) == 3
    by = {i.dataset: i for i in res.items}
    db = by["app-db"]
    assert (db.backup_id, db.pitr, db.rpo_s) == (base.backup_id, point, 0.0)
    assert "postgres replay: ok" in db.checks and "pg_amcheck: ok" in db.checks
    assert f"public.{table}=300" in db.checks  # replayed to the point: batch A only
    assert by["app-cache"].backup_id == cache.backup_id
    assert "redis-check-rdb: ok" in by["app-cache"].checks
    assert by["app-files"].backup_id == files.backup_id and "rehash: ok" in by["app-files"].checks
    for i in res.items:
        assert i.outcome == "passed" and i.rto_s is not None and i.rto_s > 0
    assert res.rto_s >= sum(i.rto_s or 0 for i in res.items)
    # the achieved RPO: the point minus the oldest restored data (the cache's backup)
    assert res.rpo_s == pytest.approx((point - cache.finished_at).total_seconds())
    assert rec.rto_s == res.rto_s and rec.rpo_s == res.rpo_s

    text = report.read_text()
    assert text == res.report and text.startswith(f"# Disaster-recovery drill of host {st.host}")
    for name in sources:
        assert any(f"| {name} |" in line and "| pass |" in line for line in text.splitlines())
    assert "Total RTO" in text and "Achieved RPO" in text
    assert printed.returncode == 0 and f"drill of host {st.host}: PASSED" in printed.stdout
    assert list(scratch.iterdir()) == []  # every restored copy is gone


async def test_the_scheduled_host_drill_of_a_damaged_dataset_fails_and_alerts(
    nats_url: str, tmp_path: Path, scratch: Path, redis_server: RedisServer
) -> None:
    redis_server.load([["SET", f"key:{i}", f"value {i}"] for i in range(100)])
    sources: dict[str, Source] = {
        "cache": RedisSource(port=redis_server.port),
        "files": FilesSource(path=str(make_tree(tmp_path / "src", big_mib=1))),
    }
    # the default quarterly schedule; the coordinator's clock stands just before a run
    clock = Clock(datetime(2027, 1, 1, 3, 59, 0, tzinfo=UTC))
    cron = MaintenanceConfig().host_drill_cron
    async with host_stack(nats_url, tmp_path, scratch, sources, cron=cron, clock=clock) as st:
        with pytest.raises(OperatorError) as bad:
            await host_drill(st.bus, "no-such-host", QUIET, QUIET)
        await backup(st, "cache")
        await backup(st, "files")
        pack = flip_byte_in_a_pack(st.repos["files"])
        clock.now = datetime(2027, 1, 1, 4, 0, 30, tzinfo=UTC)  # the run comes due

        async def stored() -> list[MaintenanceRecord]:
            return await st.catalog.list_maintenance(kind="host_drill", dataset=st.host)

        [rec] = await eventually("the scheduled host drill's result", stored)

        async def alert() -> list[str]:
            firing = st.coordinator.alerter.firing()
            return [a.summary for a in firing if a.rule == "host_drill_failed"]

        assert await eventually("the host_drill_failed alert", alert) == [
            f"disaster-recovery drill of host {st.host} failed"
        ]
        status = await st.bus.request("status", StatusRequest())
        printed = await anyio.to_thread.run_sync(
            functools.partial(cli, "drill", "report", "--host", st.host, "--nats", nats_url)
        )
    assert str(bad.value).startswith("no dataset is backed up by agent 'no-such-host'")
    assert st.host in str(bad.value)
    res = host_drill_result_decoder.decode(rec.detail)
    assert rec.job_id == f"host_drill-{st.host}-20270101T0400Z" and res.requested_by == "scheduler"
    assert res.outcome == "failed" and rec.outcome == "failed"
    by = {i.dataset: i for i in res.items}
    assert by["cache"].outcome == "passed"
    assert by["files"].outcome == "failed" and pack.name in by["files"].checks
    assert "- Failed: files" in res.report
    assert "| FAILED |" in next(ln for ln in res.report.splitlines() if "| files |" in ln)
    assert printed.returncode == 1 and "FAILED" in printed.stdout and "files" in printed.stdout
    assert isinstance(status, StatusReply)
    shown = [f for f in status.recent_failures if f.job_kind == "host_drill"]
    assert [f.job_id for f in shown] == [rec.job_id]
    assert "files: failed" in (shown[0].error_message or "")
    [hd] = [h for h in status.host_drills if h.host == st.host]
    assert (hd.outcome, hd.job_id) == ("failed", rec.job_id)


# --- the plan (pure) -------------------------------------------------------------------


def _b(backup_id: str, kind: BackupType, start: int, end: int) -> BackupRecord:
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    return BackupRecord(
        backup_id=backup_id,
        dataset="d",
        agent="h",
        target="t",
        backup_type=kind,
        repository_id="r",
        started_at=t0 + timedelta(minutes=start),
        finished_at=t0 + timedelta(minutes=end),
        files=1,
        bytes_read=1,
        bytes_new=1,
        bytes_stored=1,
        duration_s=1.0,
    )


def test_the_plan_orders_by_stage_and_picks_one_point_the_databases_reach() -> None:
    pg = PostgresSource(port=5432, wal_spool="/spool")
    files = FilesSource(path="/srv")
    cfg = CoordinatorConfig(
        datasets={
            "etc": DatasetConfig(agent="h", target="t", source=SystemSource()),
            "web": DatasetConfig(agent="h", target="t", source=files),
            "db": DatasetConfig(agent="h", target="t", source=pg),
            "other": DatasetConfig(agent="h2", target="t", source=files),
        }
    )
    assert [n for n, _ in plan.host_datasets(cfg, "h")] == ["db", "web", "etc"]
    db = plan.Member("db", pg, [_b("base", "full", 0, 10), _b("log1", "incremental", 60, 61)])
    web = plan.Member("web", files, [_b("w1", "full", 30, 31), _b("w2", "full", 90, 91)])
    point = plan.common_point([db, web])
    assert point == db.backups[1].started_at  # the WAL of log1 reaches its start
    d, w = plan.choose(db, point), plan.choose(web, point)
    assert (d.backup_id, d.pitr, d.rpo_s) == ("base", point, 0.0)
    assert (w.backup_id, w.pitr, w.rpo_s) == ("w1", None, 29 * 60.0)  # w2 is after the point
    early = db.backups[0].finished_at - timedelta(minutes=1)
    assert plan.choose(db, early).outcome == "skipped"
    assert "no base backup finished by" in plan.choose(db, early).checks
    late = plan.choose(db, point + timedelta(minutes=5))  # past the WAL: newest log, no replay
    assert (late.backup_id, late.pitr, late.rpo_s) == ("log1", None, 300.0)
