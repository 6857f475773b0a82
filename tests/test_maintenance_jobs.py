"""Maintenance the coordinator orders on its schedule, run by a real agent over real NATS:
a scheduled verify finds a flipped byte and alerts, a scheduled prune removes exactly
what retention expires (and the rest restores byte-identical), a scheduled replication
gives a replica that restores. The coordinator's clock is moved, not waited for."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import anyio
import pytest
from rich.console import Console

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from agent.sources import restore_backup
from coordinator.catalog import Catalog, open_catalog
from coordinator.maintenance import Task, plan_tasks, tier_of
from coordinator.service import Coordinator
from engine.keys.files import load_key_file
from engine.repository import Repository
from engine.storage.local import LocalTarget
from engine.storage.open import open_target
from mosaic import operator
from mosaic.compare import tree_differences
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import (
    AlertsConfig,
    CatalogConfig,
    CoordinatorConfig,
    DatasetConfig,
    MaintenanceConfig,
)
from shared.config.load import load
from shared.config.targets import LocalTargetConfig
from shared.errors import ConfigError
from shared.wire.events import BackupCompleted
from shared.wire.records import MaintenanceRecord
from shared.wire.sources import FilesSource, Source
from tests.harness import make_tree, unique

QUIET = Console(quiet=True)
OFF = {"verify_cron": "", "prune_cron": "", "replicate_cron": "", "drill_cron": ""}
T = TypeVar("T")


class Clock:
    """The coordinator's time source; tests move it (None: the real time)."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now or datetime.now(UTC)


def next_fire(minute: int, hour: int | None = None, *, days: int = 0) -> datetime:
    """The next HH:MM:30 (or hh:MM:30 every hour) UTC at least ``days`` from now."""
    t = datetime.now(UTC) + timedelta(days=days)
    t = t.replace(minute=minute, second=30, microsecond=0)
    if hour is not None:
        t = t.replace(hour=hour)
    while t <= datetime.now(UTC) + timedelta(days=days):
        t += timedelta(hours=1 if hour is None else 24)
    return t


@dataclass
class MaintStack:
    bus: Bus
    coordinator: Coordinator
    catalog: Catalog
    agent: AgentConfig
    dataset: str
    clock: Clock
    targets: dict[str, Path]


@asynccontextmanager
async def maint_stack(
    nats_url: str,
    work: Path,
    source: Path | Source,
    *,
    maintenance: MaintenanceConfig | None,
    clock: Clock | None = None,
    targets: tuple[str, ...] = ("t",),
) -> AsyncIterator[MaintStack]:
    """A coordinator (SQLite catalog, fast scheduler and alerts) and one agent with local
    targets ``targets``; the dataset is stored on the first."""
    name, dataset = unique("agent"), unique("ds")
    paths = {t: work / f"repo-{t}" for t in targets}
    agent_cfg = AgentConfig(
        name=name,
        nats_url=nats_url,
        key_file=str(work / "repo.key"),
        targets={t: LocalTargetConfig(path=str(p)) for t, p in paths.items()},
        ack_wait_s=5.0,
    )
    src = FilesSource(path=str(source)) if isinstance(source, Path) else source
    coord_cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={dataset: DatasetConfig(agent=name, target=targets[0], source=src)},
        scheduler_interval_s=0.2,
        alerts=AlertsConfig(interval_s=0.2),
        maintenance=maintenance,
    )
    clock = clock or Clock()
    catalog = await open_catalog(coord_cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            coordinator = Coordinator(coord_cfg, catalog, clock=clock)
            await tg.start(coordinator.run)
            opened = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
            key, _ = await prepare_key(agent_cfg, opened)
            runner = AgentRunner(agent_cfg, key, opened)
            await tg.start(runner.run)
            bus = await Bus.connect(nats_url, name="test")
            try:
                yield MaintStack(bus, coordinator, catalog, agent_cfg, dataset, clock, paths)
            finally:
                await bus.aclose()
                await runner.aclose()
                tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


async def eventually(what: str, probe: Callable[[], Awaitable[T | None]], limit: float = 90) -> T:
    """Poll ``probe`` until it returns something (bounded; the failure says what)."""
    with anyio.move_on_after(limit):
        while True:
            got = await probe()
            if got:
                return got
            await anyio.sleep(0.1)
    raise AssertionError(f"timed out after {limit:.0f}s waiting for {what}")


async def result(st: MaintStack, kind: str) -> MaintenanceRecord:
    async def probe() -> MaintenanceRecord | None:
        rows = await st.catalog.list_maintenance(kind=kind, limit=1)
        return rows[0] if rows else None

    return await eventually(f"a {kind} result in the catalog", probe)


def flip_byte_in_a_pack(repo_dir: Path) -> Path:
    packs = sorted(p for p in (repo_dir / "data").rglob("*") if p.is_file())
    pack = max(packs, key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x40
    pack.write_bytes(bytes(data))
    return pack


async def backup_now(st: MaintStack, job_id: str | None = None) -> str:
    """A backup of the stack's dataset; with ``job_id`` as the scheduler would run it."""
    if job_id is None:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=120)
        assert isinstance(done, BackupCompleted)
        return done.backup_id
    await st.coordinator.dispatch_scheduled(st.dataset, "full", job_id)
    await eventually(f"backup {job_id}", lambda: st.catalog.get_backup(job_id))
    return job_id


# --- pure ------------------------------------------------------------------------------


def test_tasks_follow_the_datasets_and_the_tier_comes_from_the_scheduled_id() -> None:
    src = FilesSource(path="/srv")
    cfg = CoordinatorConfig(
        datasets={
            "a": DatasetConfig(agent="h1", target="local", source=src),
            "b": DatasetConfig(agent="h1", target="local", source=src),
            "c": DatasetConfig(agent="h2", target="nas", source=src),
        },
        maintenance=MaintenanceConfig(replicate={"local": ["offsite"]}, agent="maint"),
    )
    assert plan_tasks(cfg) == [
        Task("verify", "maint", "local", datasets=("a", "b")),
        Task("prune", "maint", "local", datasets=("a", "b")),
        Task("replicate", "maint", "local", to_target="offsite", datasets=("a", "b")),
        Task("verify", "maint", "nas", datasets=("c",)),
        Task("prune", "maint", "nas", datasets=("c",)),
        Task("drill", "h1", "local", dataset="a"),
        Task("drill", "h1", "local", dataset="b"),
        Task("drill", "h2", "nas", dataset="c"),
    ]
    assert tier_of("sched-web-db-weekly-full-20260101T0100Z", "web-db") == "weekly"
    assert tier_of("backup-web-db-20260101T010000Z-abc123", "web-db") == "daily"


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('verify_cron = "0 4 * *"', "maintenance.verify_cron"),
        ('drill_cron = "0 0 31 2 *"', "maintenance.drill_cron"),
        ('timezone = "Mars/Olympus"', "maintenance.timezone"),
        ('replicate = { nowhere = ["offsite"] }', "maintenance.replicate.nowhere"),
        (
            'replicate = { local = ["offsite"] }\ntarget_tiers = { ofsite = "remote" }',
            "maintenance.target_tiers.ofsite",
        ),
    ],
)
def test_bad_maintenance_config_names_the_field(tmp_path: Path, line: str, field: str) -> None:
    cfg = tmp_path / "coordinator.toml"
    cfg.write_text(
        '[datasets.web]\nagent = "h1"\ntarget = "local"\n'
        '[datasets.web.source]\ntype = "files"\npath = "/srv"\n'
        f"[maintenance]\n{line}\n"
    )
    with pytest.raises(ConfigError) as err:
        load(cfg, CoordinatorConfig)
    text = str(err.value)
    assert f"field '{field}'" in text and str(cfg) in text and "\n" not in text


# --- against real servers -------------------------------------------------------------------


async def test_scheduled_verify_finds_a_flipped_byte_and_alerts(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    fire = next_fire(0, 4)
    clock = Clock(fire - timedelta(minutes=30))
    cfg = MaintenanceConfig(**{**OFF, "verify_cron": "0 4 * * *"}, verify_subset=100)
    async with maint_stack(nats_url, tmp_path, src, maintenance=cfg, clock=clock) as st:
        await backup_now(st)
        pack = flip_byte_in_a_pack(st.targets["t"])
        clock.now = fire  # 04:00 has come: the scheduler orders the verify
        rec = await result(st, "verify")
        assert rec.job_id == f"verify-{st.agent.name}-t-{fire:%Y%m%dT0400Z}"
        assert rec.outcome == "failed"
        assert pack.name in rec.summary and "1 damaged object" in rec.summary

        async def alert() -> list[str]:
            return [a.summary for a in st.coordinator.alerter.firing() if a.rule == "verify_failed"]

        fired = await eventually("the verify_failed alert", alert)
        assert fired == [f"verify of target t holding {st.dataset} failed"]
        job = await st.catalog.get_job(rec.job_id)
        assert job is not None and (job.job_kind, job.status) == ("verify", "completed")
        (audited,) = await st.catalog.list_audit(action="verify_scheduled")
        assert (audited.actor, audited.job_id) == ("scheduler", rec.job_id)


async def test_scheduled_prune_removes_exactly_the_expired_backups(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    fire = next_fire(30, 4, days=10)  # ten days on: the daily tier (7 days) expired
    clock = Clock(fire - timedelta(minutes=30))
    cfg = MaintenanceConfig(**{**OFF, "prune_cron": "30 4 * * *"}, gc_margin_s=0.2)
    async with maint_stack(nats_url, tmp_path, src, maintenance=cfg, clock=clock) as st:
        ds = st.dataset
        weekly = await backup_now(st, f"sched-{ds}-weekly-full-20261101T0100Z")
        only_daily = src / "only-in-the-daily.bin"
        only_daily.write_bytes(random.Random(5).randbytes(700_000))
        expired = await backup_now(st, f"sched-{ds}-daily-full-20261101T0200Z")
        only_daily.unlink()
        newest = await backup_now(st, f"sched-{ds}-daily-full-20261102T0200Z")
        repo_dir = st.targets["t"]
        packs_before = {p.name for p in (repo_dir / "data").rglob("*") if p.is_file()}

        clock.now = fire
        rec = await result(st, "prune")
        assert rec.outcome == "passed"
        assert rec.summary.startswith("forgot 1 backup(s)")
        manifests = {p.name for p in (repo_dir / "manifests").iterdir()}
        assert manifests == {weekly, newest}
        assert [b.backup_id for b in await st.catalog.list_backups(dataset=ds)] == [
            newest,
            weekly,
        ]
        packs_after = {p.name for p in (repo_dir / "data").rglob("*") if p.is_file()}
        assert packs_after < packs_before  # the expired backup's own pack went
        restored = tmp_path / "restored"
        await operator.restore(st.bus, weekly, str(restored), QUIET, QUIET, timeout=120)
        assert tree_differences(src, restored) == []
    assert expired not in manifests


async def test_scheduled_replication_gives_a_restorable_replica(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    fire = next_fire(15)
    clock = Clock(fire - timedelta(minutes=30))
    # a short grace: the start-up catch-up must not find the previous hour's run
    cfg = MaintenanceConfig(
        **{**OFF, "replicate_cron": "15 * * * *"}, replicate={"t": ["t2"]}, grace_s=60
    )
    async with maint_stack(
        nats_url, tmp_path, src, maintenance=cfg, clock=clock, targets=("t", "t2")
    ) as st:
        backup_id = await backup_now(st)
        clock.now = fire
        rec = await result(st, "replicate")
        assert rec.outcome == "passed" and rec.summary.endswith("; in sync")
        assert f'"lag_s":{{"{st.dataset}":0.0}}' in rec.detail
        key = load_key_file(st.agent.key_file)
    replica = await Repository.open(LocalTarget("t2", st.targets["t2"]), key)
    restored = tmp_path / "from-replica"
    await restore_backup(replica, await replica.load_manifest(backup_id), restored)
    assert tree_differences(src, restored) == []


async def test_a_failed_maintenance_job_is_recorded_with_the_agents_reason(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    fire = next_fire(15)
    clock = Clock(fire - timedelta(minutes=30))
    cfg = MaintenanceConfig(
        **{**OFF, "replicate_cron": "15 * * * *"}, replicate={"t": ["nowhere"]}, grace_s=60
    )
    async with maint_stack(nats_url, tmp_path, src, maintenance=cfg, clock=clock) as st:
        await backup_now(st)
        clock.now = fire
        rec = await result(st, "replicate")
        job = await st.catalog.get_job(rec.job_id)
    assert rec.outcome == "failed"
    assert rec.summary.startswith("config: ") and "has no target 'nowhere'" in rec.summary
    assert job is not None and job.status == "failed"
