"""Retention on replica targets (issue 5): a replica is pruned by its own target tier, so
the remote copy of a daily backup outlives the local one (14 days against 7), the kept
copies restore byte-identical, the catalog's copy rows match the replica's manifests,
and a dataset's newest backup is never expired from any target."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

from agent.sources import restore_backup
from coordinator.maintenance import Task, plan_tasks, with_replica_upkeep
from engine.keys.files import load_key_file
from engine.repository import Repository
from engine.storage.local import LocalTarget
from mosaic import operator
from mosaic.compare import tree_differences
from shared.config.coordinator import CoordinatorConfig, DatasetConfig, MaintenanceConfig
from shared.wire.events import BackupCompleted
from shared.wire.records import MaintenanceRecord
from shared.wire.sources import FilesSource
from tests.harness import make_tree
from tests.test_maintenance_jobs import QUIET, Clock, MaintStack, eventually, maint_stack, next_fire


def test_every_replica_target_gets_a_verify_and_a_prune_by_the_replicating_agent() -> None:
    src = FilesSource(path="/srv")
    cfg = CoordinatorConfig(
        datasets={
            "a": DatasetConfig(agent="h1", target="local", source=src),
            "b": DatasetConfig(agent="h1", target="nas", source=src),
        },
        maintenance=MaintenanceConfig(
            replicate={"local": ["offsite", "nas"], "nas": ["offsite"]}, agent="maint"
        ),
    )
    tasks = with_replica_upkeep(plan_tasks(cfg))
    for kind in ("verify", "prune"):
        assert [t for t in tasks if t.kind == kind] == [
            Task(kind, "maint", "local", datasets=("a",)),
            Task(kind, "maint", "nas", datasets=("a", "b")),  # primary of b, replica of a
            Task(kind, "maint", "offsite", datasets=("a", "b")),
        ]


def manifests(repo: Path) -> set[str]:
    return {p.name for p in (repo / "manifests").iterdir()}


async def prune_results(st: MaintStack, after: int) -> dict[str, MaintenanceRecord]:
    """The newest prune result of each target once both have more than ``after``."""

    async def probe() -> dict[str, MaintenanceRecord] | None:
        rows = {t: await st.catalog.list_maintenance(kind="prune", target=t) for t in st.targets}
        if all(len(r) > after for r in rows.values()):
            return {t: r[0] for t, r in rows.items()}
        return None

    return await eventually("a prune result from both targets", probe)


async def test_a_remote_replica_keeps_dailies_twice_as_long_and_they_restore(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    replicate_at = next_fire(15)
    clock = Clock(replicate_at - timedelta(minutes=30))
    cfg = MaintenanceConfig(
        verify_cron="",
        drill_cron="",
        prune_cron="30 4 * * *",
        replicate={"t": ["t2"]},
        target_tiers={"t2": "remote"},  # t: local (daily 7 days), t2: remote (14 days)
        grace_s=60,
        gc_margin_s=0.2,
    )
    async with maint_stack(
        nats_url, tmp_path, src, maintenance=cfg, clock=clock, targets=("t", "t2")
    ) as st:
        ids: list[str] = []
        expected: dict[str, Path] = {}
        for i in range(3):
            (src / "version.txt").write_text(f"backup {i}\n")
            done = await operator.backup(
                st.bus, st.dataset, "incremental", QUIET, QUIET, tier="daily", timeout=120
            )
            assert isinstance(done, BackupCompleted)
            ids.append(done.backup_id)
            expected[done.backup_id] = tmp_path / f"expected-{i}"
            shutil.copytree(src, expected[done.backup_id], symlinks=True)
        oldest, middle, newest = ids

        clock.now = replicate_at
        await eventually(
            "the replicate result",
            lambda: st.catalog.list_maintenance(kind="replicate", limit=1),
        )
        assert {c.backup_id for c in await st.catalog.copies_on("t2")} == set(ids)

        # Ten days on: past the local 7 days, inside the remote 14.
        clock.now = next_fire(30, 4, days=10)
        done10 = await prune_results(st, 0)
        assert all(r.outcome == "passed" for r in done10.values()), done10
        primary = [b.backup_id for b in await st.catalog.list_backups(dataset=st.dataset)]
        assert primary == [newest]  # the newest backup is kept, whatever its age
        assert manifests(st.targets["t"]) == {newest}
        copies = [c.backup_id for c in await st.catalog.copies_on("t2")]
        assert copies == [newest, middle, oldest]
        assert manifests(st.targets["t2"]) == set(copies)

        key = load_key_file(st.agent.key_file)
        replica = await Repository.open(LocalTarget("t2", st.targets["t2"]), key)
        for backup_id in (oldest, middle):
            out = tmp_path / f"restored-{backup_id}"
            await restore_backup(replica, await replica.load_manifest(backup_id), out)
            assert tree_differences(expected[backup_id], out) == []

        # Twenty days on: past the remote 14 as well; the newest copy still stays.
        clock.now = next_fire(30, 4, days=20)
        done20 = await prune_results(st, 1)
        assert all(r.outcome == "passed" for r in done20.values()), done20
        assert [c.backup_id for c in await st.catalog.copies_on("t2")] == [newest]
        assert manifests(st.targets["t2"]) == {newest}
        assert manifests(st.targets["t"]) == {newest}

    replica = await Repository.open(LocalTarget("t2", st.targets["t2"]), key)
    out = tmp_path / "restored-newest"
    await restore_backup(replica, await replica.load_manifest(newest), out)
    assert tree_differences(expected[newest], out) == []
