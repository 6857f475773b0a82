"""Replicated copies in the catalog (issue 5 follow-up): a scheduled replication records
each copied backup as a copy on the replica target, ``list`` shows where each backup has
copies, and status counts the replica from the catalog (backups and bytes), not only from
the replication result's lag."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from rich.console import Console

from mosaic import operator
from shared.config.coordinator import MaintenanceConfig
from tests.harness import make_tree
from tests.test_maintenance_jobs import Clock, backup_now, maint_stack, next_fire, result


async def test_replicated_backups_are_catalog_copies_listed_and_counted(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    fire = next_fire(15)
    clock = Clock(fire - timedelta(minutes=30))
    cfg = MaintenanceConfig(
        verify_cron="", prune_cron="", drill_cron="", replicate={"t": ["t2"]}, grace_s=60
    )
    async with maint_stack(
        nats_url, tmp_path, src, maintenance=cfg, clock=clock, targets=("t", "t2")
    ) as st:
        first = await backup_now(st)
        second = await backup_now(st)
        before = (await st.coordinator.status(dataset=st.dataset)).datasets[0]
        assert [t.target for t in before.targets] == ["t"]

        clock.now = fire
        rec = await result(st, "replicate")
        assert rec.outcome == "passed", rec.summary
        assert await st.catalog.copies_of([first, second]) == {first: ["t2"], second: ["t2"]}

        out = io.StringIO()
        await operator.list_backups(
            st.bus, Console(file=out, width=300), days=None, dataset=st.dataset
        )
        rows = [line for line in out.getvalue().splitlines() if first in line or second in line]
        assert len(rows) == 2 and all("│ t2 " in line for line in rows), out.getvalue()

        after = (await st.coordinator.status(dataset=st.dataset)).datasets[0]
        copies = {t.target: t for t in after.targets}
        stored = await st.catalog.get_backups([first, second])
        assert copies["t2"].backups == 2 and copies["t2"].lag_s == 0.0
        assert copies["t2"].bytes_stored == sum(b.bytes_stored for b in stored)
        assert after.compliance is not None and before.compliance is not None
        assert after.compliance.copies == before.compliance.copies + 1
        reply = await st.coordinator.status()
        assert reply.backups_total == 2  # copies are not more backups
