"""Retention reasons (coordinator/retention.py) and ``repo prune --dry-run``: the preview
names the rule that keeps each backup, or why it goes; it agrees with what the real prune
then forgets and with what the coordinator's prune job would forget; a dry run changes
no byte of the repository and no row of the catalog."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from msgspec.structs import replace

from coordinator.maintenance import Task
from coordinator.retention import Backup, keep_last, select
from engine.keys.files import load_key_file
from engine.repository import Repository
from engine.storage.local import LocalTarget
from mosaic import operator
from shared.config.coordinator import RetentionConfig
from shared.config.targets import LocalTargetConfig
from shared.vocab import Tier
from shared.wire.events import BackupCompleted
from tests.fixtures.fleet_stack import eventually, fleet
from tests.harness import agent_toml, make_tree
from tests.test_maintenance_jobs import QUIET

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
# (tier, age in days): a year of a GFS schedule's output, away from the window edges
AGES: list[tuple[Tier, float]] = (
    [("daily", d + 0.5) for d in range(11)]
    + [("weekly", 3.5 + 7 * w) for w in range(6)]
    + [("monthly", 15.5 + 30 * m) for m in range(4)]
)


def _backups(now: datetime, dataset: str = "db") -> list[Backup]:
    return [
        Backup(f"sched-{dataset}-{tier}-full-{i:02d}", dataset, tier, now - timedelta(days=age))
        for i, (tier, age) in enumerate(AGES)
    ]


def test_each_decision_names_its_rule_rank_and_date() -> None:
    got = {d.backup.backup_id: d for d in select(_backups(NOW), RetentionConfig(), "local", NOW)}
    assert got["sched-db-daily-full-00"].why == (
        "kept: daily #1 (2026-12-03), the newest backup of db: always kept"
    )
    assert got["sched-db-daily-full-02"].why == "kept: daily #3 (2026-12-01), within 7 days"
    assert got["sched-db-daily-full-08"].why == (
        "dropped: daily #9 (2026-11-25): beyond daily 7 days (cutoff 2026-11-26 12:00 UTC)"
    )
    assert got["sched-db-weekly-full-12"].why == "kept: weekly #2 (2026-11-23), within 4 weeks"
    assert got["sched-db-weekly-full-15"].why.startswith("dropped: weekly #5 (2026-11-02)")
    assert got["sched-db-monthly-full-17"].why == "kept: monthly #1 (2026-11-18), within 3 months"
    assert got["sched-db-monthly-full-20"].why.startswith("dropped: monthly #4 (2026-08-20)")
    # the words decide nothing: keep is what the prune acts on, and it matches the text
    for d in got.values():
        assert d.why.startswith("kept: " if d.keep else "dropped: "), d.why
    kept = sorted(b for b, d in got.items() if d.keep)
    assert len(kept) == 7 + 4 + 3
    # archive targets keep no daily or weekly backup at all, and say so
    archive = {
        d.backup.backup_id: d for d in select(_backups(NOW), RetentionConfig(), "archive", NOW)
    }
    assert archive["sched-db-weekly-full-11"].why == (
        "dropped: weekly #1 (2026-11-30): weekly keeps none on archive targets"
    )
    last = {d.backup.backup_id: d.why for d in keep_last(_backups(NOW), 2)}
    assert (
        last["sched-db-daily-full-00"]
        == "kept: keep_last #1 of db (2026-12-03), among the newest 2 of db"
    )
    assert last["sched-db-weekly-full-11"].startswith("dropped: keep_last #4 of db")


def _tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Every file's content hash and mtime: a dry run must change neither."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_mtime_ns,
            )
    return out


def _rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """The catalog tables a prune could change, every row."""
    with sqlite3.connect(db) as con:
        return {
            t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in ("backups", "backup_copies", "jobs", "maintenance", "audit")
        }


def _table(text: str) -> dict[str, tuple[str, str]]:
    """backup id → (keep/forget, why) from the prune table."""
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 5 and cells[3] in ("keep", "forget"):
            out[cells[0]] = (cells[3], cells[4])
    return out


async def test_dry_run_preview_matches_the_real_prune_and_changes_nothing(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    async with fleet(nats_url, tmp_path, {"web": ("a", src)}) as f:
        name, agent = f.datasets["web"], f.agents["a"]
        done = await operator.backup(f.bus, name, "full", QUIET, QUIET, timeout=120)
        assert isinstance(done, BackupCompleted)
        # a year of scheduled backups: the real one's manifest under older dates and ids
        now = datetime.now(UTC)
        key = load_key_file(Path(agent.key_file))
        repo = await Repository.open(LocalTarget("t", f.repos["a"]), key)
        real = await repo.load_manifest(done.backup_id)
        base = await f.catalog.get_backup(done.backup_id)
        assert base is not None
        for b in _backups(now, name)[1:]:  # the newest is the real backup
            await repo.commit_manifest(
                replace(real, backup_id=b.backup_id, finished_at=b.finished_at)
            )
            await f.catalog.record_backup(
                replace(base, backup_id=b.backup_id, finished_at=b.finished_at, tier=b.tier)
            )
        config = agent_toml(
            tmp_path / "agent.toml",
            name=agent.name,
            nats_url=nats_url,
            key_file=Path(agent.key_file),
            targets={"t": LocalTargetConfig(path=str(f.repos["a"]))},
            extra="audit_plain_nats = true",  # the test's NATS has no users
        )
        repo_before, rows_before = _tree_digest(f.repos["a"]), _rows(tmp_path / "catalog.db")

        proc = await f.cli(
            "repo",
            "prune",
            "--config",
            str(config),
            "--retention",
            "daily",
            "--dry-run",
            nats=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        preview = _table(proc.stdout)
        assert len(preview) == len(AGES), proc.stdout
        assert preview[done.backup_id][0] == "keep" and "always kept" in preview[done.backup_id][1]
        assert re.match(
            r"kept: weekly #2 \(\d{4}-\d\d-\d\d\), within 4 weeks",
            preview[f"sched-{name}-weekly-full-12"][1],
        )
        dropped = {b for b, (action, _) in preview.items() if action == "forget"}
        assert len(dropped) == len(AGES) - (7 + 4 + 3)
        assert all(preview[b][1].startswith("dropped: ") for b in dropped)
        # nothing was deleted or written: not a byte of the repository, not a catalog row
        assert _tree_digest(f.repos["a"]) == repo_before
        assert _rows(tmp_path / "catalog.db") == rows_before

        # the coordinator's prune job would forget the same backups
        task = Task("prune", agent.name, "t", datasets=(name,))
        assert set(await f.coordinator.maintenance.expired(task, datetime.now(UTC))) == dropped

        # the real prune forgets exactly what the preview said, for the same reasons
        proc = await f.cli(
            "repo",
            "prune",
            "--config",
            str(config),
            "--retention",
            "daily",
            "--margin",
            "0.1",
            nats=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert _table(proc.stdout) == preview
        left = set(await repo.list_manifests())
        assert left == set(preview) - dropped
        assert f"removed {len(dropped)} backups" in proc.stdout

        async def audited() -> bool:
            return _rows(tmp_path / "catalog.db")["audit"] != rows_before["audit"]

        assert await eventually("the prune's audit entry", audited)
