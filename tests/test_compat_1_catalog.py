"""SQLite catalogs frozen at every schema version (tests/data/compat-*/catalog-v<N>.sqlite)
open with today's SqliteCatalog, upgrade to the current schema, keep every row — read
back through the catalog API — and take new rows of every kind afterwards.

Each file was written ONCE by bench/make_compat_fixture.py: migrations 1..N applied by
the real migration code, then rows inserted with the SQL of version N (the current
version's rows through the catalog API); versions added later are frozen by
bench/make_compat_catalog.py into a new compat-N folder. Each expected.json holds the
rows of its catalogs.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from coordinator.catalog.base import AuditEntry
from coordinator.catalog.sqlite import SqliteCatalog
from coordinator.catalog.sqlite_schema import MIGRATIONS
from shared.wire.records import BackupRecord, JobRecord, MaintenanceRecord

DATA = Path(__file__).parent / "data"
CATALOGS: dict[str, dict[str, Any]] = {}
FOLDER: dict[int, Path] = {}  # schema version → the compat folder that froze it
for _folder in sorted(DATA.glob("compat-*")):
    for _v, _rows_of in json.loads((_folder / "expected.json").read_text())["catalogs"].items():
        CATALOGS[_v], FOLDER[int(_v)] = _rows_of, _folder
VERSIONS = sorted(FOLDER)
_R = TypeVar("_R")


def test_there_is_a_frozen_catalog_for_every_released_schema_version() -> None:
    # A new migration is a new schema version: freeze a catalog of it with
    # bench/make_compat_catalog.py (in a new compat-N folder) in the release that adds it.
    assert VERSIONS == list(range(1, len(MIGRATIONS) + 1))
    for v in VERSIONS:
        conn = sqlite3.connect(f"file:{FOLDER[v] / f'catalog-v{v}.sqlite'}?mode=ro", uri=True)
        try:
            (stored,) = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        finally:
            conn.close()
        assert stored == v


def _rows(version: int, kind: str, type_: type[_R]) -> list[_R]:
    return [msgspec.convert(row, type_) for row in CATALOGS[str(version)].get(kind, [])]


@pytest.fixture(params=VERSIONS, ids=lambda v: f"v{v}")
def old_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[int, Path]:
    version = int(request.param)
    path = tmp_path / "catalog.sqlite"
    shutil.copy(FOLDER[version] / f"catalog-v{version}.sqlite", path)
    return version, path


async def test_an_old_catalog_upgrades_with_its_rows_intact(old_catalog: tuple[int, Path]) -> None:
    version, path = old_catalog
    backups = _rows(version, "backups", BackupRecord)
    jobs = _rows(version, "jobs", JobRecord)
    audit = _rows(version, "audit", AuditEntry)
    maintenance = _rows(version, "maintenance", MaintenanceRecord)
    copies = CATALOGS[str(version)].get("copies", [])
    assert backups and jobs
    async with SqliteCatalog(path) as cat:
        await cat.migrate()
        assert await cat.count_backups() == len(backups)
        for b in backups:
            assert await cat.get_backup(b.backup_id) == b
        listed = await cat.list_backups()
        assert sorted(listed, key=lambda b: b.backup_id) == sorted(
            backups, key=lambda b: b.backup_id
        )
        for j in jobs:
            assert await cat.get_job(j.job_id) == j
        failed = [j for j in jobs if j.status == "failed"]
        assert await cat.recent_failures() == failed
        assert await cat.list_audit() == sorted(audit, key=lambda a: a.at, reverse=True)
        got = await cat.list_maintenance()
        assert sorted(got, key=lambda m: m.job_id) == sorted(maintenance, key=lambda m: m.job_id)
        # the per (dataset, target) summaries agree with the rows, however they came to be
        want: dict[tuple[str, str], tuple[int, int, tuple[datetime, str]]] = {}
        for b in backups:
            mine = (b.finished_at, b.backup_id)
            n, size, newest = want.get((b.dataset, b.target), (0, 0, mine))
            want[(b.dataset, b.target)] = (n + 1, size + b.bytes_stored, max(newest, mine))
        summaries = {
            (s.dataset, s.target): (s.backups, s.bytes_stored, (s.finished_at, s.backup_id))
            for s in await cat.target_summaries()
        }
        assert summaries == want
        for c in copies:
            on = await cat.copies_on(c["target"])
            assert sorted(r.backup_id for r in on) == sorted(c["backup_ids"])
        held = await cat.copies_of([b.backup_id for b in backups])
        assert {k: sorted(v) for k, v in held.items() if v} == {
            b.backup_id: _copies_of(b, copies) for b in backups if _copies_of(b, copies)
        }
        seen = CATALOGS[str(version)].get("datasets_seen", {})
        if seen:  # a later first appearance never moves the recorded one
            late = datetime(2030, 1, 1, tzinfo=UTC)
            got_seen = await cat.datasets_seen(list(seen), late)
            assert {k: v.isoformat() for k, v in got_seen.items()} == seen
    _schema_is_current(path)


def _copies_of(b: BackupRecord, copies: list[dict[str, Any]]) -> list[str]:
    return sorted(c["target"] for c in copies if b.backup_id in c["backup_ids"])


def _schema_is_current(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
    finally:
        conn.close()
    assert versions == list(range(1, len(MIGRATIONS) + 1))


async def test_an_upgraded_catalog_takes_new_rows_of_every_kind(
    old_catalog: tuple[int, Path],
) -> None:
    version, path = old_catalog
    at = datetime(2027, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    new = BackupRecord(
        backup_id=f"new-after-v{version}", dataset="files", agent="host-a", target="local",
        backup_type="full", repository_id="5f1c0de0", started_at=at, finished_at=at,
        files=1, bytes_read=2, bytes_new=3, bytes_stored=4, duration_s=0.5, tier="weekly",
    )  # fmt: skip
    drill = MaintenanceRecord(
        job_id=f"drill-after-v{version}", kind="drill", agent="host-b", target="local",
        dataset="files", backup_id=new.backup_id, outcome="passed", started_at=at,
        finished_at=at, rto_s=1.0, rpo_s=2.0, summary="ok",
    )  # fmt: skip
    entry = AuditEntry(entry_id=f"audit-after-v{version}", at=at, action="backup_requested",
                       actor="bob", dataset="files")  # fmt: skip
    async with SqliteCatalog(path) as cat:
        await cat.migrate()
        before = await cat.count_backups()
        await cat.record_backup(new)
        await cat.record_maintenance(drill)
        await cat.append_audit(entry)
        assert await cat.record_copies([new.backup_id], target="offsite", at=at) == 1
        assert await cat.get_backup(new.backup_id) == new
        assert await cat.count_backups() == before + 1
        assert (await cat.list_audit(limit=1)) == [entry]
        assert drill in await cat.list_maintenance(kind="drill")
        assert new.backup_id in [c.backup_id for c in await cat.copies_on("offsite")]
        assert (await cat.last_backup("files")) == new
