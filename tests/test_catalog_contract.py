"""The catalog contract (coordinator/catalog/base.py), run on every backend.

One suite, parametrised over SQLite and a real PostgreSQL. A behaviour that differs
between the backends is a bug in one of them, not something the suite tolerates.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

from coordinator.catalog import Catalog, open_catalog
from shared.errors import CatalogError
from shared.wire.records import BackupRecord, JobRecord, MaintenanceRecord
from tests.fixtures.postgres import free_port

T0 = datetime(2024, 3, 10, 2, 15, 30, 123456, tzinfo=UTC)


def job(job_id: str = "job-1", **changes: Any) -> JobRecord:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "job_kind": "backup",
        "dataset": "gitea-db",
        "agent": "host-a",
        "target": "local",
        "status": "dispatched",
        "requested_at": T0,
        "updated_at": T0,
    }
    return JobRecord(**(fields | changes))


def backup(backup_id: str, finished_at: datetime, **changes: Any) -> BackupRecord:
    fields: dict[str, Any] = {
        "backup_id": backup_id,
        "dataset": "gitea-db",
        "agent": "host-a",
        "target": "local",
        "backup_type": "full",
        "repository_id": "repo-1",
        "started_at": finished_at - timedelta(minutes=3),
        "finished_at": finished_at,
        "files": 12,
        "bytes_read": 10_000_000_000,
        "bytes_new": 4_000_000,
        "bytes_stored": 1_500_000,
        "duration_s": 180.25,
    }
    return BackupRecord(**(fields | changes))


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A URL to an empty catalog of each backend (fresh file or fresh database)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/not/yet/there/catalog.db"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
async def catalog(catalog_url: str) -> AsyncIterator[Catalog]:
    opened = await open_catalog(catalog_url)
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_record_and_get_job(catalog: Catalog) -> None:
    assert await catalog.get_job("job-1") is None
    await catalog.record_job(job())
    assert await catalog.get_job("job-1") == job()


async def test_record_job_twice_keeps_the_first(catalog: Catalog) -> None:
    await catalog.record_job(job())
    await catalog.record_job(job(status="running", updated_at=T0 + timedelta(seconds=5)))
    assert await catalog.get_job("job-1") == job()


async def test_update_job_moves_through_states(catalog: Catalog) -> None:
    await catalog.record_job(job())
    t1, t2, t3 = (T0 + timedelta(seconds=s) for s in (1, 60, 90))
    await catalog.update_job("job-1", "running", t1)
    assert await catalog.get_job("job-1") == job(status="running", updated_at=t1)
    await catalog.update_job("job-1", "completed", t2, backup_id="bk-1")
    done = job(status="completed", updated_at=t2, backup_id="bk-1")
    assert await catalog.get_job("job-1") == done
    # A redelivered "started" event arrives late: a completed job stays completed.
    await catalog.update_job("job-1", "running", t3)
    await catalog.update_job("job-1", "dispatched", t3)
    assert await catalog.get_job("job-1") == done


async def test_failed_job_keeps_error_and_may_be_retried(catalog: Catalog) -> None:
    await catalog.record_job(job())
    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    await catalog.update_job("job-1", "failed", t1, error_code="source", error_message="boom")
    await catalog.update_job("job-1", "failed", t1, error_code="source", error_message="boom")
    failed = job(status="failed", updated_at=t1, error_code="source", error_message="boom")
    assert await catalog.get_job("job-1") == failed
    await catalog.update_job("job-1", "running", t2)  # redelivered to another agent
    assert await catalog.get_job("job-1") == job(status="running", updated_at=t2)


async def test_update_of_unknown_job_is_ignored(catalog: Catalog) -> None:
    await catalog.update_job("nope", "completed", T0, backup_id="bk-1")
    assert await catalog.get_job("nope") is None


async def test_record_backup_twice_replaces_nothing(catalog: Catalog) -> None:
    first = backup("bk-1", T0)
    await catalog.record_backup(first)
    await catalog.record_backup(backup("bk-1", T0 + timedelta(hours=1), bytes_stored=1))
    assert await catalog.get_backup("bk-1") == first
    assert await catalog.get_backup("bk-2") is None
    assert await catalog.count_backups() == 1


async def test_list_backups_newest_first_with_filters(catalog: Catalog) -> None:
    made = [
        backup(f"bk-{i}", T0 + timedelta(hours=i), dataset="redis" if i % 2 else "gitea-db")
        for i in range(8)
    ]
    for record in random.Random(7).sample(made, len(made)):
        await catalog.record_backup(record)
    newest_first = made[::-1]
    assert await catalog.list_backups() == newest_first
    assert await catalog.list_backups(limit=3) == newest_first[:3]
    since = made[4].finished_at  # inclusive
    assert await catalog.list_backups(since=since) == newest_first[:4]
    redis = [b for b in newest_first if b.dataset == "redis"]
    assert await catalog.list_backups(dataset="redis") == redis
    assert await catalog.list_backups(dataset="redis", since=since, limit=1) == redis[:1]
    assert await catalog.list_backups(dataset="nothing") == []
    assert await catalog.list_backups(limit=0) == []


async def test_last_backup_per_dataset(catalog: Catalog) -> None:
    assert await catalog.last_backup("gitea-db") is None
    older, newer = backup("bk-1", T0), backup("bk-2", T0 + timedelta(days=1))
    other = backup("bk-3", T0 + timedelta(days=2), dataset="redis")
    for record in (newer, other, older):
        await catalog.record_backup(record)
    assert await catalog.last_backup("gitea-db") == newer
    assert await catalog.last_backup("redis") == other


async def test_recent_failures_newest_first(catalog: Catalog) -> None:
    for i in range(5):
        await catalog.record_job(job(f"job-{i}", dataset=f"ds-{i % 2}"))
    # Fail them out of order; job-4 completes instead.
    for i in (2, 0, 3, 1):
        at = T0 + timedelta(minutes=10 * i)
        await catalog.update_job(f"job-{i}", "failed", at, error_code="x", error_message="y")
    await catalog.update_job("job-4", "completed", T0 + timedelta(hours=5), backup_id="bk")
    failures = await catalog.recent_failures()
    assert [f.job_id for f in failures] == ["job-3", "job-2", "job-1", "job-0"]
    assert all(f.status == "failed" and f.error_code == "x" for f in failures)
    assert [f.job_id for f in await catalog.recent_failures(limit=2)] == ["job-3", "job-2"]


async def test_last_failure_per_dataset(catalog: Catalog) -> None:
    assert await catalog.last_failure("gitea-db") is None
    for name in ("job-1", "job-2", "job-3"):
        await catalog.record_job(job(name))
    await catalog.update_job("job-1", "failed", T0 + timedelta(hours=1), error_code="a")
    await catalog.update_job("job-2", "failed", T0 + timedelta(hours=2), error_code="b")
    await catalog.update_job("job-3", "completed", T0 + timedelta(hours=3))
    last = await catalog.last_failure("gitea-db")
    assert last is not None and (last.job_id, last.error_code) == ("job-2", "b")
    # Once the newest failure is retried and completes, the previous one is the last.
    await catalog.update_job("job-2", "completed", T0 + timedelta(hours=4), backup_id="bk")
    last = await catalog.last_failure("gitea-db")
    assert last is not None and last.job_id == "job-1"
    assert await catalog.last_failure("redis") is None


async def test_count_backups(catalog: Catalog) -> None:
    assert await catalog.count_backups() == 0
    for i in range(3):
        await catalog.record_backup(backup(f"bk-{i}", T0 + timedelta(minutes=i)))
    assert await catalog.count_backups() == 3


async def test_migrate_again_and_concurrently_is_harmless(
    catalog: Catalog, catalog_url: str
) -> None:
    await catalog.record_backup(backup("bk-1", T0))
    await catalog.migrate()
    await catalog.migrate()
    # Two more coordinators starting at the same moment on the same catalog.
    opened: list[Catalog] = []

    async def start() -> None:
        opened.append(await open_catalog(catalog_url))

    async with anyio.create_task_group() as tg:
        tg.start_soon(start)
        tg.start_soon(start)
    for other in opened:
        assert await other.get_backup("bk-1") == backup("bk-1", T0)
        await other.aclose()
    assert await catalog.count_backups() == 1


@pytest.mark.parametrize(
    "moment",
    [
        T0,
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # just before the epoch
        datetime(2030, 1, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 7, 1, 12, 0, 0, 999999, tzinfo=timezone(timedelta(hours=-7))),
    ],
    ids=["utc", "pre-epoch", "plus-0530", "minus-07"],
)
async def test_datetimes_round_trip_exactly(catalog: Catalog, moment: datetime) -> None:
    record = backup("bk-1", moment)
    await catalog.record_backup(record)
    await catalog.record_job(job(requested_at=moment, updated_at=moment))
    got = await catalog.get_backup("bk-1")
    got_job = await catalog.get_job("job-1")
    assert got is not None and got_job is not None
    for value in (got.started_at, got.finished_at, got_job.requested_at, got_job.updated_at):
        assert value.utcoffset() == timedelta(0)
    assert (got.finished_at, got.started_at) == (moment, record.started_at)
    assert got.finished_at.microsecond == moment.astimezone(UTC).microsecond
    assert (got_job.requested_at, got_job.updated_at) == (moment, moment)
    assert await catalog.list_backups(since=moment) == [got]
    assert await catalog.list_backups(since=moment + timedelta(microseconds=1)) == []


async def test_naive_datetimes_are_refused(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await catalog.record_job(job(requested_at=datetime(2024, 1, 1)))
    assert await catalog.get_job("job-1") is None


async def test_aclose_is_idempotent(catalog_url: str) -> None:
    opened = await open_catalog(catalog_url)
    await opened.record_backup(backup("bk-1", T0))
    await opened.aclose()
    await opened.aclose()
    with pytest.raises(CatalogError, match="closed"):
        await opened.count_backups()
    async with anyio.create_task_group() as tg:  # concurrent closes too
        tg.start_soon(opened.aclose)
        tg.start_soon(opened.aclose)


async def test_postgres_scheme_alias(fresh_postgres_url: str) -> None:
    alias = fresh_postgres_url.replace("postgresql://", "postgres://", 1)
    opened = await open_catalog(alias)
    try:
        assert await opened.count_backups() == 0
    finally:
        await opened.aclose()


async def test_postgres_unreachable_fails_fast_without_password() -> None:
    port = free_port()  # nothing listens there
    secret = "s3cr3t-Pa55"
    # A refused connection must be reported at once, not after the pool's retry timeout.
    with anyio.fail_after(10), pytest.raises(CatalogError) as caught:
        await open_catalog(f"postgresql://mosaic:{secret}@127.0.0.1:{port}/catalog")
    message = str(caught.value)
    assert secret not in message and "\n" not in message
    assert f"127.0.0.1:{port}/catalog" in message and "mosaic@" in message
    assert caught.value.retryable


# --- aggregates for status at scale (target_summaries, last_failures, get_backups) ------


async def test_target_summaries_follow_inserts_and_deletes(catalog: Catalog) -> None:
    assert await catalog.target_summaries() == []
    rows = [
        backup("b1", T0, bytes_stored=100),
        backup("b2", T0 + timedelta(hours=1), bytes_stored=20),
        backup("b3", T0 + timedelta(hours=1), bytes_stored=3),  # same time: id breaks tie
        backup("r1", T0, target="offsite", bytes_stored=7),
        backup("o1", T0 + timedelta(days=1), dataset="other", bytes_stored=1),
    ]
    for row in rows:
        await catalog.record_backup(row)
    await catalog.record_backup(rows[0])  # a replayed event changes nothing
    got = {(s.dataset, s.target): s for s in await catalog.target_summaries()}
    assert list(got) == [("gitea-db", "local"), ("gitea-db", "offsite"), ("other", "local")]
    local = got["gitea-db", "local"]
    assert (local.backup_id, local.finished_at) == ("b3", T0 + timedelta(hours=1))
    assert (local.backups, local.bytes_stored) == (3, 123)
    assert (got["gitea-db", "offsite"].backups, got["gitea-db", "offsite"].bytes_stored) == (1, 7)
    assert await catalog.count_backups() == 5


async def test_last_failures_is_the_newest_failed_job_per_dataset(catalog: Catalog) -> None:
    for i, (dataset, kind) in enumerate(
        [("a", "backup"), ("a", "backup"), ("a", "restore"), ("b", "backup"), ("c", "backup")]
    ):
        await catalog.record_job(job(f"j{i}", dataset=dataset, job_kind=kind))
        if dataset != "c":
            await catalog.update_job(
                f"j{i}", "failed", T0 + timedelta(minutes=i), error_code="x", error_message="y"
            )
    newest = await catalog.last_failures()
    assert {d: j.job_id for d, j in newest.items()} == {"a": "j2", "b": "j3"}
    backups_only = await catalog.last_failures(job_kind="backup")
    assert {d: j.job_id for d, j in backups_only.items()} == {"a": "j1", "b": "j3"}
    assert backups_only["a"] == await catalog.get_job("j1")


async def test_get_backups_returns_those_that_exist(catalog: Catalog) -> None:
    assert await catalog.get_backups([]) == []
    rows = [backup(f"b{i}", T0 + timedelta(minutes=i)) for i in range(3)]
    for row in rows:
        await catalog.record_backup(row)
    got = await catalog.get_backups(["b2", "nope", "b0"])
    assert sorted(got, key=lambda b: b.backup_id) == [rows[0], rows[2]]


# --- maintenance results and drills (coordinator/maintenance.py) -----------------------


def maint(job_id: str, kind: str, finished_at: datetime, **changes: Any) -> MaintenanceRecord:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "kind": kind,
        "agent": "host-a",
        "target": "local",
        "dataset": "gitea-db" if kind == "drill" else "",
        "backup_id": "b1" if kind == "drill" else None,
        "outcome": "passed",
        "started_at": finished_at - timedelta(seconds=42),
        "finished_at": finished_at,
        "rto_s": 41.5 if kind == "drill" else None,
        "rpo_s": 3600.25 if kind == "drill" else None,
        "summary": "restore: ok (3 files)",
        "detail": '{"kind": "x"}',
    }
    return MaintenanceRecord(**(fields | changes))


async def test_maintenance_results_round_trip_newest_first_and_filtered(catalog: Catalog) -> None:
    rows = [
        maint("v1", "verify", T0),
        maint("d1", "drill", T0 + timedelta(hours=1), outcome="failed"),
        maint("d2", "drill", T0 + timedelta(hours=2), dataset="other"),
        maint("p1", "prune", T0 + timedelta(hours=3), target="offsite"),
    ]
    for r in rows:
        await catalog.record_maintenance(r)
    await catalog.record_maintenance(maint("d1", "drill", T0, outcome="passed"))  # replay
    assert await catalog.list_maintenance() == rows[::-1]
    assert await catalog.list_maintenance(kind="drill") == [rows[2], rows[1]]
    assert await catalog.list_maintenance(kind="drill", dataset="gitea-db") == [rows[1]]
    assert await catalog.list_maintenance(target="offsite") == [rows[3]]
    assert await catalog.list_maintenance(kind="drill", limit=1) == [rows[2]]


async def test_forget_backups_removes_only_that_targets_rows(catalog: Catalog) -> None:
    await catalog.record_backup(backup("b1", T0))
    await catalog.record_backup(backup("b2", T0 + timedelta(hours=1)))
    await catalog.record_backup(backup("b3", T0 + timedelta(hours=2), target="offsite"))
    assert await catalog.forget_backups(["b1", "b3", "nope"], target="local") == 1
    assert [b.backup_id for b in await catalog.list_backups()] == ["b3", "b2"]
    assert await catalog.forget_backups([], target="local") == 0
    assert await catalog.count_backups() == 2


async def test_summaries_and_marker_follow_forget_and_failures(catalog: Catalog) -> None:
    markers = {await catalog.summary_marker()}
    for i in range(3):
        await catalog.record_backup(backup(f"b{i}", T0 + timedelta(hours=i), bytes_stored=10))
    markers.add(await catalog.summary_marker())
    assert await catalog.forget_backups(["b2"], target="local") == 1  # the newest goes
    [s] = await catalog.target_summaries()
    assert (s.backup_id, s.finished_at, s.backups, s.bytes_stored) == (
        "b1",
        T0 + timedelta(hours=1),
        2,
        20,
    )
    markers.add(await catalog.summary_marker())
    await catalog.record_job(job("j1"))
    await catalog.update_job("j1", "failed", T0, error_code="x", error_message="y")
    markers.add(await catalog.summary_marker())
    assert len(markers) == 4  # every change changed it
    assert await catalog.summary_marker() in markers  # and nothing else did
    await catalog.forget_backups(["b0", "b1"], target="local")
    assert await catalog.target_summaries() == [] and await catalog.count_backups() == 0


async def test_unresolved_failures_and_failures_of_some_datasets(catalog: Catalog) -> None:
    for i, dataset in enumerate(["a", "b", "c"]):
        await catalog.record_job(job(f"j{i}", dataset=dataset))
        await catalog.update_job(f"j{i}", "failed", T0, error_code="x", error_message="y")
    await catalog.record_backup(backup("later", T0 + timedelta(hours=1), dataset="a"))
    await catalog.record_backup(backup("earlier", T0 - timedelta(hours=1), dataset="b"))
    failing = await catalog.last_failures(unresolved=True)
    assert sorted(failing) == ["b", "c"]  # a backed up after its failure
    some = await catalog.last_failures(datasets=["a", "c", "zz"])
    assert {d: j.job_id for d, j in some.items()} == {"a": "j0", "c": "j2"}
    assert await catalog.last_failures(datasets=[]) == {}


async def test_tier_round_trips_and_old_rows_have_none(catalog: Catalog) -> None:
    await catalog.record_backup(backup("b-monthly", T0, tier="monthly"))
    await catalog.record_backup(backup("b-old", T0 + timedelta(hours=1)))
    assert (await catalog.get_backup("b-monthly")) == backup("b-monthly", T0, tier="monthly")
    assert [(b.backup_id, b.tier) for b in await catalog.list_backups()] == [
        ("b-old", None),
        ("b-monthly", "monthly"),
    ]
    assert {b.backup_id: b.tier for b in await catalog.get_backups(["b-monthly", "b-old"])} == {
        "b-monthly": "monthly",
        "b-old": None,
    }


async def test_copies_are_recorded_once_summarised_and_forgotten(catalog: Catalog) -> None:
    await catalog.record_backup(backup("b1", T0, tier="daily"))
    await catalog.record_backup(backup("b2", T0 + timedelta(days=1), bytes_stored=7))
    at = T0 + timedelta(days=2)
    # unknown ids and the backup's own target are not copies
    assert await catalog.record_copies(["b1", "b2", "nope"], target="offsite", at=at) == 2
    assert await catalog.record_copies(["b1", "b2"], target="offsite", at=at) == 0
    assert await catalog.record_copies(["b1"], target="local", at=at) == 0
    assert await catalog.record_copies(["b1"], target="cold", at=at) == 1
    assert await catalog.copies_of(["b1", "b2", "nope"]) == {
        "b1": ["cold", "offsite"],
        "b2": ["offsite"],
    }
    [cold, offsite] = await catalog.copy_summaries()
    assert (offsite.target, offsite.backup_id, offsite.backups, offsite.bytes_stored) == (
        "offsite",
        "b2",
        2,
        1_500_007,
    )
    assert (cold.target, cold.backups) == ("cold", 1)
    assert await catalog.count_backups() == 2  # copies are not more backups
    before = await catalog.summary_marker()
    # a prune on the replica forgets its copy only; the primary row stays
    assert await catalog.forget_backups(["b2"], target="offsite") == 1
    assert await catalog.summary_marker() != before
    assert await catalog.copies_of(["b2"]) == {}
    assert await catalog.get_backup("b2") is not None
    [_, offsite] = await catalog.copy_summaries()
    assert (offsite.backup_id, offsite.backups, offsite.bytes_stored) == ("b1", 1, 1_500_000)


async def test_copies_on_a_target_carry_what_retention_needs(catalog: Catalog) -> None:
    await catalog.record_backup(backup("b1", T0, tier="daily"))
    await catalog.record_backup(backup("b2", T0 + timedelta(days=1), dataset="other"))
    at = T0 + timedelta(days=2)
    await catalog.record_copies(["b1", "b2"], target="offsite", at=at)
    await catalog.record_copies(["b1"], target="cold", at=at)
    got = await catalog.copies_on("offsite")
    assert [(c.backup_id, c.dataset, c.tier, c.finished_at, c.copied_at) for c in got] == [
        ("b2", "other", None, T0 + timedelta(days=1), at),
        ("b1", "gitea-db", "daily", T0, at),
    ]
    # the copy outlives a prune of the primary row: the replica still holds it
    await catalog.forget_backups(["b1"], target="local")
    assert [c.backup_id for c in await catalog.copies_on("cold")] == ["b1"]
    assert await catalog.copies_on("local") == []


async def test_duration_history_is_the_newest_type_per_dataset(catalog: Catalog) -> None:
    for i in range(10):
        kind = "full" if i % 3 == 0 else "incremental"
        await catalog.record_backup(
            backup(f"a{i}", T0 + timedelta(days=i), backup_type=kind, duration_s=float(i))
        )
    await catalog.record_backup(backup("c0", T0, dataset="other", backup_type="incremental"))
    got = await catalog.duration_history(["gitea-db", "other", "none"], limit=3)
    # newest of gitea-db is a9 (full): a9, a6, a3 — the incrementals between are skipped
    assert {d: [b.backup_id for b in rows] for d, rows in got.items()} == {
        "gitea-db": ["a9", "a6", "a3"],
        "other": ["c0"],
    }
