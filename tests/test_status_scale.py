"""The status document over many datasets, on both catalog backends: counters cover every
dataset, detail comes one page at a time with the datasets that need attention first,
and the cached per-dataset pass follows every catalog change (a new backup, a failure,
a forgotten backup). The 1,000,000-row measurement is bench/catalog_scale.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from coordinator.catalog import Catalog, open_catalog
from coordinator.heartbeats import HeartbeatStore
from coordinator.status import StatusBuilder
from shared.config.coordinator import CoordinatorConfig, DatasetConfig
from shared.wire.records import BackupRecord, JobRecord
from shared.wire.sources import FilesSource

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
N = 30


def backup(backup_id: str, dataset: str, at: datetime, target: str = "local") -> BackupRecord:
    return BackupRecord(
        backup_id=backup_id,
        dataset=dataset,
        agent="a",
        target=target,
        backup_type="full",
        repository_id="r",
        started_at=at - timedelta(minutes=1),
        finished_at=at,
        files=1,
        bytes_read=100,
        bytes_new=10,
        bytes_stored=7,
        duration_s=60.0,
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def catalog(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Catalog]:
    url = (
        f"sqlite:///{tmp_path}/catalog.db"
        if request.param == "sqlite"
        else str(request.getfixturevalue("fresh_postgres_url"))
    )
    opened = await open_catalog(url)
    try:
        yield opened
    finally:
        await opened.aclose()


def builder(catalog: Catalog) -> StatusBuilder:
    cfg = CoordinatorConfig(
        datasets={
            f"ds{i:02d}": DatasetConfig(agent="a", target="local", source=FilesSource(path="/x"))
            for i in range(N)
        }
    )
    return StatusBuilder(cfg, catalog, HeartbeatStore(), clock=lambda: NOW)


async def test_pages_put_problems_first_and_counters_cover_all(catalog: Catalog) -> None:
    # every dataset backed up, except ds05 and ds20; ds10 failed after its backup
    for i in range(N):
        if i not in (5, 20):
            await catalog.record_backup(backup(f"b{i}", f"ds{i:02d}", NOW - timedelta(hours=i)))
    await catalog.record_job(
        JobRecord(
            job_id="j10",
            job_kind="backup",
            dataset="ds10",
            agent="a",
            target="local",
            status="dispatched",
            requested_at=NOW,
            updated_at=NOW,
        )
    )
    b = builder(catalog)
    first = await b.reply(limit=5)
    assert (first.datasets_total, first.backups_total) == (N, N - 2)
    assert (first.datasets_failing, first.datasets_without_backup) == (0, 2)
    assert first.status == "degraded" and first.last_backup_at == NOW

    await catalog.update_job("j10", "failed", NOW, error_code="source", error_message="gone")
    st = await b.reply(limit=5)  # the cached pass notices the failure
    assert st.datasets_failing == 1
    # problems first (never backed up: ds05, ds20; failing: ds10), then the rest by name;
    # 3-2-1 is unknown for the others (no heartbeat told the target's tags), so not a problem
    names = [d.dataset for d in st.datasets]
    assert names == ["ds05", "ds10", "ds20", "ds00", "ds01"]
    one = (await b.reply(dataset="ds10")).datasets
    assert [d.dataset for d in one] == ["ds10"]
    assert one[0].last_failure is not None and one[0].last_failure.job_id == "j10"
    assert one[0].last_backup is not None and one[0].last_backup.backup_id == "b10"
    assert (await b.reply(dataset="ds05")).datasets[0].last_backup is None

    pages = [await b.reply(limit=7, offset=o) for o in range(0, N, 7)]
    seen = [d.dataset for p in pages for d in p.datasets]
    assert sorted(seen) == [f"ds{i:02d}" for i in range(N)] and len(seen) == N

    # a forgotten backup and a new one both reach the cached pass
    assert await catalog.forget_backups(["b0"], target="local") == 1
    st = await b.reply(dataset="ds00")
    assert st.datasets_without_backup == 3 and st.datasets[0].last_backup is None
    await catalog.record_backup(backup("new0", "ds00", NOW))
    st = await b.reply(dataset="ds00")
    assert st.datasets_without_backup == 2 and st.backups_total == N - 2
    row = st.datasets[0]
    assert row.last_backup is not None and row.last_backup.backup_id == "new0"
    assert row.storage_used == 7 and [c.target for c in row.targets] == ["local"]


async def test_a_replica_row_counts_as_a_copy_and_lags(catalog: Catalog) -> None:
    await catalog.record_backup(backup("p1", "ds01", NOW - timedelta(hours=3)))
    await catalog.record_backup(backup("p2", "ds01", NOW - timedelta(hours=2)))
    await catalog.record_backup(backup("c1", "ds01", NOW - timedelta(hours=3), target="cold"))
    st = await builder(catalog).reply(dataset="ds01")
    [row] = st.datasets
    lags = {c.target: c.lag_s for c in row.targets}
    assert lags == {"cold": 2 * 3600.0, "local": None}  # p2 has waited two hours
    assert row.storage_used == 21
    # tags of "cold" are unknown without a heartbeat: not judged, but "local" holds p2
    assert row.compliance is not None and row.compliance.copies == 2
