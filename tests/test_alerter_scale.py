"""The alerter reads the catalog in a fixed number of queries per tick, whatever the
number of datasets (issue 5 follow-up), and still sees what the rules need: a new slow
backup raises ``duration_anomaly`` and a failed backup ``backup_failed``."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from coordinator.alerter import Alerter
from coordinator.catalog import Catalog, open_catalog
from shared.config.coordinator import CoordinatorConfig, DatasetConfig
from shared.wire.records import BackupRecord, JobRecord
from shared.wire.sources import FilesSource

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


class Counting:
    """The real catalog, counting the calls the alerter makes (each is one query here)."""

    def __init__(self, inner: Catalog) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return getattr(self.inner, name)


def config(n: int) -> CoordinatorConfig:
    src = FilesSource(path="/srv")
    return CoordinatorConfig(
        datasets={f"ds{i:03d}": DatasetConfig(agent="a", target="t", source=src) for i in range(n)}
    )


def backup(dataset: str, day: int, duration_s: float) -> BackupRecord:
    at = T0 + timedelta(days=day)
    return BackupRecord(
        backup_id=f"{dataset}-{day}",
        dataset=dataset,
        agent="a",
        target="t",
        backup_type="full",
        repository_id="r",
        started_at=at - timedelta(seconds=duration_s),
        finished_at=at,
        files=1,
        bytes_read=1,
        bytes_new=1,
        bytes_stored=1,
        duration_s=duration_s,
    )


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[Catalog]:
    cat = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield cat
    await cat.aclose()


async def test_a_tick_makes_the_same_queries_for_one_dataset_and_for_fifty(
    catalog: Catalog,
) -> None:
    cfg = config(50)
    for name in cfg.datasets:
        for day in range(4):
            await catalog.record_backup(backup(name, day, 100.0))
    counts = []
    for n in (1, 50):
        counting = Counting(catalog)
        alerter = Alerter(config(n), counting, clock=lambda: T0 + timedelta(days=4))  # type: ignore[arg-type]
        await alerter.tick()
        await alerter.tick()  # steady: histories come from the cache
        counts.append(dict(counting.calls))
    # the same queries, and real ones (two ticks that read nothing would be "the same"):
    # the newest backups and failures on each tick, the histories once (then cached)
    assert counts[0] == counts[1]
    assert (counts[0]["target_summaries"], counts[0]["last_failures"]) == (2, 2)
    assert counts[0]["duration_history"] == 1


async def test_a_new_slow_backup_and_a_failure_are_seen_through_the_cache(
    catalog: Catalog,
) -> None:
    cfg = config(2)
    for day in range(4):
        await catalog.record_backup(backup("ds000", day, 100.0))
        await catalog.record_backup(backup("ds001", day, 100.0))
    now = T0 + timedelta(days=4, hours=1)
    alerter = Alerter(cfg, catalog, clock=lambda: now)
    assert [a.fingerprint for a in await alerter.tick()] == []

    await catalog.record_backup(backup("ds001", 4, 500.0))  # 5× the previous ones
    failed_at = T0 + timedelta(days=4, minutes=30)
    await catalog.record_job(
        JobRecord(
            job_id="j1",
            job_kind="backup",
            dataset="ds000",
            agent="a",
            target="t",
            status="failed",
            requested_at=failed_at,
            updated_at=failed_at,
            error_code="source",
            error_message="pg_dump exited with 1",
        )
    )
    fired = {a.fingerprint: a for a in await alerter.tick()}
    assert set(fired) == {"duration_anomaly/ds001/", "backup_failed/ds000/"}
    assert "500s" in fired["duration_anomaly/ds001/"].summary
