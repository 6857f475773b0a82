"""SQLite catalog: the embedded default for a single coordinator and for ``quickstart``.

sqlite3 blocks, so every call runs in a worker thread. One connection behind a lock is
enough for one coordinator, and WAL mode lets other processes (the CLI, a backup of the
file) read while the coordinator writes. Times are stored as integer microseconds since
the Unix epoch (UTC): they sort numerically, keep indexes small, and round-trip exactly.
ISO text with mixed offsets would not sort correctly.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import msgspec

from coordinator.catalog.records import (
    AUDIT_COLUMNS,
    BACKUP_COLUMNS,
    JOB_COLUMNS,
    JOB_STATUSES,
    MAINTENANCE_COLUMNS,
    AuditEntry,
    CopyRecord,
    TargetSummary,
)
from coordinator.catalog.sqlite_auth import SqliteAuthMixin
from coordinator.catalog.sqlite_schema import MIGRATIONS
from shared.errors import CatalogError
from shared.wire.records import BackupRecord, JobRecord, MaintenanceRecord

_T = TypeVar("_T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TIME_COLUMNS = ("requested_at", "updated_at", "started_at", "finished_at")

_JOBS = ", ".join(JOB_COLUMNS)
_BACKUPS = ", ".join(BACKUP_COLUMNS)


def _to_us(value: datetime) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"catalog times must be timezone-aware, got naive {value.isoformat()}")
    return (value - _EPOCH) // _MICROSECOND


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _decode(row: sqlite3.Row, kind: type[_T]) -> _T:
    fields: dict[str, Any] = dict(zip(row.keys(), row, strict=True))
    for name in _TIME_COLUMNS:
        if name in fields:
            fields[name] = _from_us(fields[name])
    return msgspec.convert(fields, kind)


class SqliteCatalog(SqliteAuthMixin):
    """The catalog in one SQLite file (see :class:`coordinator.catalog.base.Catalog`)."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def __aenter__(self) -> SqliteCatalog:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- plumbing --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit; the few multi-statement writes BEGIN explicitly.
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._closed:
                raise CatalogError(f"sqlite catalog {self._path}: already closed", retryable=False)
            try:
                if self._conn is None:
                    self._conn = self._connect()
                return fn(self._conn)
            except sqlite3.OperationalError as exc:  # locked, disk full, I/O: may pass
                raise CatalogError(f"sqlite catalog {self._path}: {exc}") from exc
            except (sqlite3.Error, OSError) as exc:
                raise CatalogError(f"sqlite catalog {self._path}: {exc}", retryable=False) from exc

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await anyio.to_thread.run_sync(self._call, fn)

    async def _execute(self, sql: str, params: Sequence[object]) -> None:
        await self._run(lambda conn: conn.execute(sql, params).close())

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[sqlite3.Row]:
        return await self._run(lambda conn: conn.execute(sql, params).fetchall())

    async def _insert(
        self,
        table: str,
        columns: tuple[str, ...],
        record: JobRecord | BackupRecord | MaintenanceRecord,
    ) -> None:
        """Insert ``record`` unless its primary key (the first column) exists: idempotent."""
        values = [getattr(record, name) for name in columns]
        params = [_to_us(v) if isinstance(v, datetime) else v for v in values]
        await self._execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            f" ON CONFLICT ({columns[0]}) DO NOTHING",
            params,
        )

    # --- the contract ----------------------------------------------------------------

    async def migrate(self) -> None:
        await self._run(self._migrate)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock first, so two processes cannot both see
        # version N and both apply N+1.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
            )
            (current,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version"
            ).fetchone()
            if current > len(MIGRATIONS):
                raise CatalogError(
                    f"sqlite catalog {self._path}: schema version {current} is newer than this "
                    f"program knows ({len(MIGRATIONS)}); upgrade mosaic-backup",
                    retryable=False,
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, _to_us(datetime.now(UTC))),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back by itself (disk full, I/O)
                conn.execute("ROLLBACK")
            raise

    async def record_job(self, job: JobRecord) -> None:
        await self._insert("jobs", JOB_COLUMNS, job)

    async def update_job(
        self,
        job_id: str,
        status: str,
        at: datetime,
        *,
        backup_id: str | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        if status not in JOB_STATUSES:
            raise ValueError(f"job status must be one of {sorted(JOB_STATUSES)}, got {status!r}")
        # A completed job may not fall back to running/dispatched (late redelivery).
        may_leave_completed = status not in ("running", "dispatched")
        await self._execute(
            "UPDATE jobs SET status = ?, updated_at = ?, backup_id = COALESCE(?, backup_id),"
            " error_code = ?, error_message = ?"
            " WHERE job_id = ? AND (status <> 'completed' OR ?)",
            (status, _to_us(at), backup_id, error_code, error_message, job_id, may_leave_completed),
        )

    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._fetch(f"SELECT {_JOBS} FROM jobs WHERE job_id = ?", (job_id,))
        return _decode(rows[0], JobRecord) if rows else None

    async def record_backup(self, backup: BackupRecord) -> None:
        await self._insert("backups", BACKUP_COLUMNS, backup)

    async def get_backup(self, backup_id: str) -> BackupRecord | None:
        rows = await self._fetch(
            f"SELECT {_BACKUPS} FROM backups WHERE backup_id = ?", (backup_id,)
        )
        return _decode(rows[0], BackupRecord) if rows else None

    async def list_backups(
        self, *, since: datetime | None = None, dataset: str | None = None, limit: int = 1000
    ) -> list[BackupRecord]:
        clauses: list[str] = []
        params: list[object] = []
        if since is not None:
            clauses.append("finished_at >= ?")
            params.append(_to_us(since))
        if dataset is not None:
            clauses.append("dataset = ?")
            params.append(dataset)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(
            f"SELECT {_BACKUPS} FROM backups {where}"
            " ORDER BY finished_at DESC, backup_id DESC LIMIT ?",
            (*params, max(limit, 0)),
        )
        return [_decode(row, BackupRecord) for row in rows]

    async def last_backup(self, dataset: str) -> BackupRecord | None:
        found = await self.list_backups(dataset=dataset, limit=1)
        return found[0] if found else None

    async def recent_failures(self, *, limit: int = 20) -> list[JobRecord]:
        return await self._failures(None, limit)

    async def last_failure(self, dataset: str) -> JobRecord | None:
        found = await self._failures(dataset, 1)
        return found[0] if found else None

    async def _failures(self, dataset: str | None, limit: int) -> list[JobRecord]:
        where, params = ("AND dataset = ?", [dataset]) if dataset is not None else ("", [])
        rows = await self._fetch(
            f"SELECT {_JOBS} FROM jobs WHERE status = 'failed' {where}"
            " ORDER BY updated_at DESC, job_id DESC LIMIT ?",
            (*params, max(limit, 0)),
        )
        return [_decode(row, JobRecord) for row in rows]

    async def count_backups(self) -> int:
        rows = await self._fetch("SELECT COALESCE(SUM(backups), 0) FROM target_summary", ())
        return int(rows[0][0])

    async def target_summaries(self) -> list[TargetSummary]:
        rows = await self._fetch(
            "SELECT dataset, target, backup_id, finished_at, backups, bytes_stored"
            " FROM target_summary ORDER BY dataset, target",
            (),
        )
        return [_decode(row, TargetSummary) for row in rows]

    async def summary_marker(self) -> str:
        rows = await self._fetch(
            "SELECT (SELECT count(*) FROM target_summary),"
            " (SELECT sum(backups) FROM target_summary),"
            " (SELECT sum(bytes_stored) FROM target_summary),"
            " (SELECT max(finished_at) FROM target_summary),"
            " (SELECT count(*) FROM jobs WHERE status = 'failed'),"
            " (SELECT max(updated_at) FROM jobs WHERE status = 'failed'),"
            " (SELECT count(*) FROM copy_summary), (SELECT sum(backups) FROM copy_summary)",
            (),
        )
        return repr(tuple(rows[0]))

    async def last_failures(
        self,
        *,
        job_kind: str | None = None,
        datasets: Sequence[str] | None = None,
        unresolved: bool = False,
    ) -> dict[str, JobRecord]:
        kind, params = ("AND job_kind = ?", [job_kind]) if job_kind is not None else ("", [])
        sql = (
            f"SELECT {_JOBS} FROM jobs j WHERE status = 'failed' {kind} AND job_id = ("
            "  SELECT job_id FROM jobs f WHERE f.status = 'failed' AND f.dataset = j.dataset"
            f" {kind.replace('job_kind', 'f.job_kind')}"
            "  ORDER BY f.updated_at DESC, f.job_id DESC LIMIT 1)"
        )
        if unresolved:
            sql += (
                " AND NOT EXISTS (SELECT 1 FROM target_summary s"
                " WHERE s.dataset = j.dataset AND s.finished_at >= j.updated_at)"
            )
        out: dict[str, JobRecord] = {}
        names = list(dict.fromkeys(datasets)) if datasets is not None else None
        parts = [names[i : i + 400] for i in range(0, len(names), 400)] if names else []
        if names is None:
            parts = [[]]
        for part in parts:
            only = f" AND dataset IN ({', '.join('?' * len(part))})" if names is not None else ""
            rows = await self._fetch(sql + only, [*params, *params, *part])
            out.update((row["dataset"], _decode(row, JobRecord)) for row in rows)
        return out

    async def get_backups(self, backup_ids: Sequence[str]) -> list[BackupRecord]:
        out: list[BackupRecord] = []
        ids = list(dict.fromkeys(backup_ids))
        for i in range(0, len(ids), 500):  # below SQLite's bound-parameter limit
            part = ids[i : i + 500]
            rows = await self._fetch(
                f"SELECT {_BACKUPS} FROM backups WHERE backup_id IN ({', '.join('?' * len(part))})",
                part,
            )
            out.extend(_decode(row, BackupRecord) for row in rows)
        return out

    async def append_audit(self, entry: AuditEntry) -> None:
        values = [getattr(entry, name) for name in AUDIT_COLUMNS]
        await self._execute(
            f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)})"
            f" VALUES ({', '.join('?' * len(AUDIT_COLUMNS))}) ON CONFLICT (entry_id) DO NOTHING",
            [_to_us(v) if isinstance(v, datetime) else v for v in values],
        )

    async def list_audit(self, *, limit: int = 100, action: str | None = None) -> list[AuditEntry]:
        where, params = ("WHERE action = ?", [action]) if action is not None else ("", [])
        rows = await self._fetch(
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit {where} ORDER BY seq DESC LIMIT ?",
            (*params, max(limit, 0)),
        )
        return [
            msgspec.convert({**dict(row), "at": _from_us(row["at"])}, AuditEntry) for row in rows
        ]

    async def record_maintenance(self, rec: MaintenanceRecord) -> None:
        await self._insert("maintenance", MAINTENANCE_COLUMNS, rec)

    async def list_maintenance(
        self,
        *,
        kind: str | None = None,
        dataset: str | None = None,
        target: str | None = None,
        limit: int = 100,
    ) -> list[MaintenanceRecord]:
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (("kind", kind), ("dataset", dataset), ("target", target)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(
            f"SELECT {', '.join(MAINTENANCE_COLUMNS)} FROM maintenance {where}"
            " ORDER BY finished_at DESC, job_id DESC LIMIT ?",
            (*params, max(limit, 0)),
        )
        return [_decode(row, MaintenanceRecord) for row in rows]

    async def forget_backups(self, backup_ids: Sequence[str], *, target: str) -> int:
        gone = 0
        ids = list(dict.fromkeys(backup_ids))
        for i in range(0, len(ids), 500):  # below SQLite's bound-parameter limit
            part = ids[i : i + 500]

            def delete(conn: sqlite3.Connection, part: list[str] = part) -> int:
                marks = ", ".join("?" * len(part))
                gone = 0
                for table in ("backups", "backup_copies"):
                    cur = conn.execute(
                        f"DELETE FROM {table} WHERE target = ? AND backup_id IN ({marks})",
                        (target, *part),
                    )
                    gone += int(cur.rowcount)
                return gone

            gone += await self._run(delete)
        return gone

    async def record_copies(self, backup_ids: Sequence[str], *, target: str, at: datetime) -> int:
        added = 0
        ids = list(dict.fromkeys(backup_ids))
        for i in range(0, len(ids), 500):  # below SQLite's bound-parameter limit
            part = ids[i : i + 500]

            def insert(conn: sqlite3.Connection, part: list[str] = part) -> int:
                cur = conn.execute(
                    "INSERT INTO backup_copies SELECT backup_id, ?, dataset, tier, finished_at,"
                    " bytes_stored, ? FROM backups WHERE target <> ? AND backup_id IN"
                    f" ({', '.join('?' * len(part))}) ON CONFLICT DO NOTHING",
                    (target, _to_us(at), target, *part),
                )
                return int(cur.rowcount)

            added += await self._run(insert)
        return added

    async def copies_on(self, target: str) -> list[CopyRecord]:
        rows = await self._fetch(
            "SELECT backup_id, target, dataset, tier, finished_at, bytes_stored, copied_at"
            " FROM backup_copies WHERE target = ? ORDER BY finished_at DESC, backup_id DESC",
            (target,),
        )
        out: list[CopyRecord] = []
        for row in rows:
            fields = dict(zip(row.keys(), row, strict=True))
            fields["copied_at"] = _from_us(fields["copied_at"])
            fields["finished_at"] = _from_us(fields["finished_at"])
            out.append(msgspec.convert(fields, CopyRecord))
        return out

    async def copy_summaries(self) -> list[TargetSummary]:
        rows = await self._fetch(
            "SELECT dataset, target, backup_id, finished_at, backups, bytes_stored"
            " FROM copy_summary ORDER BY dataset, target",
            (),
        )
        return [_decode(row, TargetSummary) for row in rows]

    async def copies_of(self, backup_ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        ids = list(dict.fromkeys(backup_ids))
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            rows = await self._fetch(
                "SELECT backup_id, target FROM backup_copies WHERE backup_id IN"
                f" ({', '.join('?' * len(part))}) ORDER BY backup_id, target",
                part,
            )
            for row in rows:
                out.setdefault(row["backup_id"], []).append(row["target"])
        return out

    async def duration_history(
        self, datasets: Sequence[str], *, limit: int
    ) -> dict[str, list[BackupRecord]]:
        out: dict[str, list[BackupRecord]] = {}
        names = list(dict.fromkeys(datasets))
        for i in range(0, len(names), 400):
            part = names[i : i + 400]
            rows = await self._fetch(
                f"SELECT {_BACKUPS} FROM (SELECT *, row_number() OVER ("
                "  PARTITION BY dataset ORDER BY finished_at DESC, backup_id DESC) AS n"
                "  FROM backups b WHERE dataset IN"
                f" ({', '.join('?' * len(part))}) AND backup_type = ("
                "   SELECT backup_type FROM backups l WHERE l.dataset = b.dataset"
                "   ORDER BY finished_at DESC, backup_id DESC LIMIT 1))"
                " WHERE n <= ? ORDER BY dataset, n",
                (*part, max(limit, 0)),
            )
            for row in rows:
                out.setdefault(row["dataset"], []).append(_decode(row, BackupRecord))
        return out

    async def datasets_seen(self, datasets: Sequence[str], at: datetime) -> dict[str, datetime]:
        names = list(dict.fromkeys(datasets))

        def upsert(conn: sqlite3.Connection) -> dict[str, datetime]:
            conn.execute("BEGIN IMMEDIATE")  # one transaction for all of them
            try:
                conn.executemany(
                    "INSERT INTO datasets_seen (dataset, first_seen) VALUES (?, ?)"
                    " ON CONFLICT (dataset) DO NOTHING",
                    [(n, _to_us(at)) for n in names],
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            rows = conn.execute("SELECT dataset, first_seen FROM datasets_seen").fetchall()
            return {r[0]: _from_us(r[1]) for r in rows if r[0] in wanted}

        wanted = set(names)
        return await self._run(upsert)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await anyio.to_thread.run_sync(self._close_connection)

    def _close_connection(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
