"""Retention tiers in the catalog (issue 5 follow-up): a scheduled backup carries its
schedule's tier, a manual one the operator's ``--tier`` (default: weekly for a full
backup, daily for an incremental one), and prune keeps each by its tier's rule. The
operator's requests name who asked (``user@host`` or ``--as``) in the audit trail."""

from __future__ import annotations

import getpass
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from coordinator.catalog import open_catalog
from coordinator.jobs.backup import BackupJobs
from coordinator.maintenance import tier_of
from coordinator.scheduler import Scheduler
from mosaic import operator
from mosaic.cli import build_parser
from shared.config.coordinator import (
    CoordinatorConfig,
    DatasetConfig,
    MaintenanceConfig,
    ScheduleConfig,
)
from shared.vocab import BackupType, Tier
from shared.wire.api import JobAccepted
from shared.wire.events import BackupCompleted
from shared.wire.jobs import BackupJob, Job
from shared.wire.sources import FilesSource
from tests.harness import make_tree
from tests.test_maintenance_jobs import QUIET, Clock, maint_stack, next_fire, result


async def test_the_scheduler_passes_the_tier_of_the_schedule_that_fired(tmp_path: Path) -> None:
    monthly = ScheduleConfig(cron="0 0 1-7 * sun", backup_type="full", tier="monthly")
    sent: list[tuple[str, str, str | None, str]] = []

    async def send(job: Job) -> JobAccepted:
        assert isinstance(job, BackupJob)
        sent.append((job.dataset, job.backup_type, job.tier, job.requested_by))
        return JobAccepted(job_id=job.job_id, agent=job.agent)

    db = DatasetConfig(agent="a", target="t", source=FilesSource(path="/srv"))
    catalog = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        fire = datetime(2026, 6, 7, 0, 0, tzinfo=UTC)  # the first Sunday of June
        factory = BackupJobs(CoordinatorConfig(datasets={"db": db}), catalog).for_run
        s = Scheduler({"db": [monthly]}, catalog, factory, send, interval_s=1, clock=lambda: fire)
        await s.tick(fire - timedelta(minutes=1))
    finally:
        await catalog.aclose()
    assert sent == [("db", "full", "monthly", "scheduler")]


def test_backup_takes_tier_and_as_on_the_command_line() -> None:
    args = build_parser().parse_args(
        ["backup", "--dataset", "db", "--tier", "monthly", "--as", "alice"]
    )
    assert (args.tier, args.requested_by) == ("monthly", "alice")
    args = build_parser().parse_args(["restore", "b1", "--to", "/tmp/x", "--as", "bob"])
    assert args.requested_by == "bob"
    assert operator.who() == f"{getpass.getuser()}@{socket.gethostname()}"


def test_recorded_tier_wins_over_the_backup_id() -> None:
    sched = "sched-web-daily-full-20260101T0200Z"
    assert tier_of(sched, "web", "monthly") == "monthly"
    assert tier_of(sched, "web") == "daily"  # a row from before the tier column


async def test_a_manual_monthly_backup_is_kept_by_the_monthly_rule(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    fire = next_fire(30, 4, days=10)  # ten days on: daily (7 d local) expired, monthly not
    clock = Clock(fire - timedelta(minutes=30))
    cfg = MaintenanceConfig(
        verify_cron="", prune_cron="30 4 * * *", replicate_cron="", drill_cron="", gc_margin_s=0.2
    )
    async with maint_stack(nats_url, tmp_path, src, maintenance=cfg, clock=clock) as st:

        async def backup(
            kind: BackupType, tier: Tier | None = None, requested_by: str | None = None
        ) -> BackupCompleted:
            done = await operator.backup(
                st.bus, st.dataset, kind, QUIET, QUIET, tier=tier, requested_by=requested_by
            )
            assert isinstance(done, BackupCompleted)
            return done

        monthly = await backup("full", tier="monthly", requested_by="alice")
        daily = await backup("incremental")  # no --tier: daily
        weekly = await backup("full")  # no --tier: weekly
        newest = await backup("incremental")
        tiers = {b.backup_id: b.tier for b in await st.catalog.list_backups(dataset=st.dataset)}
        assert tiers == {
            monthly.backup_id: "monthly",
            daily.backup_id: "daily",
            weekly.backup_id: "weekly",
            newest.backup_id: "daily",
        }
        assert monthly.tier == "monthly"  # carried back by the agent's event

        clock.now = fire
        rec = await result(st, "prune")
        assert rec.outcome == "passed", rec.summary
        kept = [b.backup_id for b in await st.catalog.list_backups(dataset=st.dataset)]
        assert kept == [newest.backup_id, weekly.backup_id, monthly.backup_id]
        manifests = {p.name for p in (st.targets["t"] / "manifests").iterdir()}
        assert manifests == set(kept)

        actors = {
            e.backup_id: e.actor for e in await st.catalog.list_audit(action="backup_requested")
        }
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    assert actors == {
        monthly.backup_id: "alice",
        daily.backup_id: me,
        weekly.backup_id: me,
        newest.backup_id: me,
    }
