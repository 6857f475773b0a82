"""PostgreSQL catalog: the production backend, shared by active and standby coordinators.

psycopg 3 async with a connection pool, so the event loop never blocks on the database.
Migrations run under ``pg_advisory_xact_lock``: coordinators that start together apply
each version once. A failed connection becomes a :class:`CatalogError` whose one-line
message names user, host, port and database, never the password (it goes to logs, alerts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from coordinator.catalog.pg_schema import DATASETS_SEEN, MIGRATIONS, PostgresAuthMixin
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
from shared.errors import CatalogError
from shared.wire.records import BackupRecord, JobRecord, MaintenanceRecord

_T = TypeVar("_T")

# Any constant works; it only has to be the same in every coordinator ("mosaic" in ASCII).
_MIGRATION_LOCK = 0x6D6F73616963

_JOBS = ", ".join(JOB_COLUMNS)
_BACKUPS = ", ".join(BACKUP_COLUMNS)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"catalog times must be timezone-aware, got naive {value.isoformat()}")
    return value


def _decode(row: dict[str, Any], kind: type[_T]) -> _T:
    for name, value in row.items():
        if isinstance(value, datetime):
            row[name] = value.astimezone(UTC)
    return msgspec.convert(row, kind)


# What summary_marker() reads: it changes with any summary row or failed job.
_MARKER = """ROW((SELECT count(*) FROM target_summary), (SELECT sum(backups) FROM target_summary),
    (SELECT sum(bytes_stored) FROM target_summary), (SELECT max(finished_at) FROM target_summary),
    (SELECT count(*) FROM jobs WHERE status = 'failed'),
    (SELECT max(updated_at) FROM jobs WHERE status = 'failed'),
    (SELECT count(*) FROM copy_summary), (SELECT sum(backups) FROM copy_summary))::text"""


async def _use_utc(conn: psycopg.AsyncConnection[Any]) -> None:
    # Loading timestamptz in UTC keeps datetime.max-like values from overflowing on load.
    await conn.execute("SET TIME ZONE 'UTC'")


class PostgresCatalog(PostgresAuthMixin):
    """The catalog in a PostgreSQL database (see :class:`coordinator.catalog.base.Catalog`).

    ``conninfo`` is a libpq URL or key/value string. The pool opens on first use.
    ``open_timeout`` limits how long the first connection may take.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        open_timeout: float = 10.0,
    ) -> None:
        self._conninfo = conninfo
        self._min_size = min_size
        self._max_size = max_size
        self._open_timeout = open_timeout
        self._where, self._password = self._describe(conninfo)
        self._pool: AsyncConnectionPool | None = None
        self._open_lock = anyio.Lock()
        self._closed = False

    async def __aenter__(self) -> PostgresCatalog:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- plumbing --------------------------------------------------------------------

    @staticmethod
    def _describe(conninfo: str) -> tuple[str, str | None]:
        """``user@host:port/db`` for messages, and the password to scrub from them."""
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.Error:
            # The parser's message may quote the conninfo, password included, so the cause
            # is deliberately dropped here (the only place that does so).
            raise CatalogError(
                "invalid PostgreSQL conninfo for the catalog (expected postgresql://user@host:port/db)",
                retryable=False,
            ) from None
        user, db = params.get("user") or "(default user)", params.get("dbname") or "(default db)"
        host = params.get("host") or params.get("hostaddr") or "(default socket)"
        password = params.get("password")
        where = f"{user}@{host}:{params.get('port') or 5432}/{db}"
        return where, str(password) if password else None

    def _error(self, what: str, exc: BaseException, *, retryable: bool = True) -> CatalogError:
        reason = " ".join((str(exc) or type(exc).__name__).split())  # one line
        if self._password:
            reason = reason.replace(self._password, "***")
        return CatalogError(
            f"postgres catalog {self._where}: {what}: {reason}", retryable=retryable
        )

    async def _ready(self) -> AsyncConnectionPool:
        async with self._open_lock:
            if self._closed:
                raise CatalogError(
                    f"postgres catalog {self._where}: already closed", retryable=False
                )
            if self._pool is None:
                self._pool = await self._open_pool()
            return self._pool

    async def _open_pool(self) -> AsyncConnectionPool:
        # One direct connection first: the pool only retries until its timeout and
        # reports no reason, while libpq says "connection refused" at once.
        try:
            with anyio.fail_after(self._open_timeout):
                probe = await psycopg.AsyncConnection.connect(
                    self._conninfo, connect_timeout=max(1, int(self._open_timeout))
                )
                await probe.close()
        except TimeoutError as exc:
            raise CatalogError(
                f"postgres catalog {self._where}: cannot connect: "
                f"no answer within {self._open_timeout:g} s"
            ) from exc
        except psycopg.Error as exc:
            raise self._error("cannot connect", exc) from exc
        pool: AsyncConnectionPool = AsyncConnectionPool(
            self._conninfo,
            open=False,
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs={"autocommit": True},
            configure=_use_utc,
            check=AsyncConnectionPool.check_connection,
            name="mosaic-catalog",
            timeout=self._open_timeout,
        )
        try:
            await pool.open(wait=True, timeout=self._open_timeout)
        except psycopg.Error as exc:
            await pool.close()
            raise self._error("cannot open connection pool", exc) from exc
        return pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        pool = await self._ready()
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            retryable = isinstance(exc, psycopg.OperationalError)
            raise self._error("query failed", exc, retryable=retryable) from exc

    async def _execute(self, sql: str, params: Sequence[object]) -> None:
        async with self._connection() as conn:
            await conn.execute(sql, params)

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[dict[str, Any]]:
        async with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            return await cur.fetchall()

    async def _insert(
        self,
        table: str,
        columns: tuple[str, ...],
        record: JobRecord | BackupRecord | MaintenanceRecord,
    ) -> None:
        """Insert ``record`` unless its primary key (the first column) exists: idempotent."""
        values = [getattr(record, name) for name in columns]
        params = [_aware(v) if isinstance(v, datetime) else v for v in values]
        await self._execute(
            f"INSERT INTO {table} ({', '.join(columns)})"
            f" VALUES ({', '.join(['%s'] * len(columns))}) ON CONFLICT ({columns[0]}) DO NOTHING",
            params,
        )

    # --- the contract ----------------------------------------------------------------

    async def migrate(self) -> None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            row = await cur.fetchone()
            current = int(row[0]) if row else 0
            if current > len(MIGRATIONS):
                raise CatalogError(
                    f"postgres catalog {self._where}: schema version {current} is newer than "
                    f"this program knows ({len(MIGRATIONS)}); upgrade mosaic-backup",
                    retryable=False,
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

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
            "UPDATE jobs SET status = %s, updated_at = %s, backup_id = COALESCE(%s, backup_id),"
            " error_code = %s, error_message = %s"
            " WHERE job_id = %s AND (status <> 'completed' OR %s)",
            (status, _aware(at), backup_id, error_code, error_message, job_id, may_leave_completed),
        )

    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._fetch(f"SELECT {_JOBS} FROM jobs WHERE job_id = %s", (job_id,))
        return _decode(rows[0], JobRecord) if rows else None

    async def record_backup(self, backup: BackupRecord) -> None:
        await self._insert("backups", BACKUP_COLUMNS, backup)

    async def get_backup(self, backup_id: str) -> BackupRecord | None:
        rows = await self._fetch(
            f"SELECT {_BACKUPS} FROM backups WHERE backup_id = %s", (backup_id,)
        )
        return _decode(rows[0], BackupRecord) if rows else None

    async def list_backups(
        self, *, since: datetime | None = None, dataset: str | None = None, limit: int = 1000
    ) -> list[BackupRecord]:
        clauses: list[str] = []
        params: list[object] = []
        if since is not None:
            clauses.append("finished_at >= %s")
            params.append(_aware(since))
        if dataset is not None:
            clauses.append("dataset = %s")
            params.append(dataset)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(
            f"SELECT {_BACKUPS} FROM backups {where}"
            " ORDER BY finished_at DESC, backup_id DESC LIMIT %s",
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
        where, params = ("AND dataset = %s", [dataset]) if dataset is not None else ("", [])
        rows = await self._fetch(
            f"SELECT {_JOBS} FROM jobs WHERE status = 'failed' {where}"
            " ORDER BY updated_at DESC, job_id DESC LIMIT %s",
            (*params, max(limit, 0)),
        )
        return [_decode(row, JobRecord) for row in rows]

    async def count_backups(self) -> int:
        # From the summary: count(*) over millions of rows is a full scan in PostgreSQL.
        rows = await self._fetch("SELECT COALESCE(sum(backups), 0) AS n FROM target_summary", ())
        return int(rows[0]["n"])

    async def target_summaries(self) -> list[TargetSummary]:
        # Plain tuples: this reads one row per dataset × target on every status after a
        # change, and dict rows plus conversion cost more than the query (10,000s of rows).
        async with self._connection() as conn, conn.cursor(binary=True) as cur:
            await cur.execute(
                "SELECT dataset, target, backup_id, finished_at, backups, bytes_stored"
                " FROM target_summary ORDER BY dataset, target"
            )
            rows = await cur.fetchall()
        return [
            TargetSummary(
                dataset=d,
                target=t,
                backup_id=b,
                finished_at=f.astimezone(UTC),
                backups=n,
                bytes_stored=size,
            )
            for d, t, b, f, n, size in rows
        ]

    async def summary_marker(self) -> str:
        rows = await self._fetch(f"SELECT {_MARKER} AS m", ())
        return str(rows[0]["m"])

    async def last_failures(
        self,
        *,
        job_kind: str | None = None,
        datasets: Sequence[str] | None = None,
        unresolved: bool = False,
    ) -> dict[str, JobRecord]:
        where, params = "", list[object]()
        if job_kind is not None:
            where, params = "AND job_kind = %s", [job_kind]
        if datasets is not None:
            where += " AND dataset = ANY(%s)"
            params.append(list(datasets))
        newest = (
            f"SELECT DISTINCT ON (dataset) {_JOBS} FROM jobs WHERE status = 'failed' {where}"
            " ORDER BY dataset, updated_at DESC, job_id DESC"
        )
        if unresolved:  # few rows: most datasets' newest failure was followed by a backup
            newest = (
                f"SELECT * FROM ({newest}) f WHERE NOT EXISTS (SELECT 1 FROM target_summary s"
                " WHERE s.dataset = f.dataset AND s.finished_at >= f.updated_at)"
            )
        rows = await self._fetch(newest, params)
        return {row["dataset"]: _decode(row, JobRecord) for row in rows}

    async def get_backups(self, backup_ids: Sequence[str]) -> list[BackupRecord]:
        if not backup_ids:
            return []
        rows = await self._fetch(
            f"SELECT {_BACKUPS} FROM backups WHERE backup_id = ANY(%s)", (list(backup_ids),)
        )
        return [_decode(row, BackupRecord) for row in rows]

    async def append_audit(self, entry: AuditEntry) -> None:
        values = [getattr(entry, name) for name in AUDIT_COLUMNS]
        await self._execute(
            f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)})"
            f" VALUES ({', '.join(['%s'] * len(AUDIT_COLUMNS))})"
            " ON CONFLICT (entry_id) DO NOTHING",
            [_aware(v) if isinstance(v, datetime) else v for v in values],
        )

    async def list_audit(self, *, limit: int = 100, action: str | None = None) -> list[AuditEntry]:
        where, params = ("WHERE action = %s", [action]) if action is not None else ("", [])
        rows = await self._fetch(
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit {where} ORDER BY seq DESC LIMIT %s",
            (*params, max(limit, 0)),
        )
        return [_decode(row, AuditEntry) for row in rows]

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
                clauses.append(f"{column} = %s")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(
            f"SELECT {', '.join(MAINTENANCE_COLUMNS)} FROM maintenance {where}"
            " ORDER BY finished_at DESC, job_id DESC LIMIT %s",
            (*params, max(limit, 0)),
        )
        return [_decode(row, MaintenanceRecord) for row in rows]

    async def forget_backups(self, backup_ids: Sequence[str], *, target: str) -> int:
        if not backup_ids:
            return 0
        gone = 0
        async with self._connection() as conn:
            for table in ("backups", "backup_copies"):
                cur = await conn.execute(
                    f"DELETE FROM {table} WHERE target = %s AND backup_id = ANY(%s)",
                    (target, list(backup_ids)),
                )
                gone += int(cur.rowcount)
        return gone

    async def record_copies(self, backup_ids: Sequence[str], *, target: str, at: datetime) -> int:
        if not backup_ids:
            return 0
        async with self._connection() as conn:
            cur = await conn.execute(
                "INSERT INTO backup_copies SELECT backup_id, %s, dataset, tier, finished_at,"
                " bytes_stored, %s FROM backups WHERE target <> %s AND backup_id = ANY(%s)"
                " ON CONFLICT DO NOTHING",
                (target, _aware(at), target, list(backup_ids)),
            )
            return int(cur.rowcount)

    async def copies_on(self, target: str) -> list[CopyRecord]:
        rows = await self._fetch(
            "SELECT backup_id, target, dataset, tier, finished_at, bytes_stored, copied_at"
            " FROM backup_copies WHERE target = %s ORDER BY finished_at DESC, backup_id DESC",
            (target,),
        )
        return [_decode(row, CopyRecord) for row in rows]

    async def copy_summaries(self) -> list[TargetSummary]:
        rows = await self._fetch(
            "SELECT dataset, target, backup_id, finished_at, backups, bytes_stored"
            " FROM copy_summary ORDER BY dataset, target",
            (),
        )
        return [_decode(row, TargetSummary) for row in rows]

    async def copies_of(self, backup_ids: Sequence[str]) -> dict[str, list[str]]:
        if not backup_ids:
            return {}
        rows = await self._fetch(
            "SELECT backup_id, target FROM backup_copies WHERE backup_id = ANY(%s)"
            " ORDER BY backup_id, target",
            (list(backup_ids),),
        )
        out: dict[str, list[str]] = {}
        for row in rows:
            out.setdefault(row["backup_id"], []).append(row["target"])
        return out

    async def duration_history(
        self, datasets: Sequence[str], *, limit: int
    ) -> dict[str, list[BackupRecord]]:
        if not datasets:
            return {}
        # Per dataset, the index (dataset, finished_at DESC) walks back from the newest
        # backup until ``limit`` of its type are found: a few rows each, not a scan.
        rows = await self._fetch(
            f"SELECT {', '.join('h.' + c for c in BACKUP_COLUMNS)}"
            " FROM unnest(%s::text[]) AS d(name)"
            " CROSS JOIN LATERAL (SELECT backup_type FROM backups WHERE dataset = d.name"
            "   ORDER BY finished_at DESC, backup_id DESC LIMIT 1) AS newest"
            f" CROSS JOIN LATERAL (SELECT {_BACKUPS} FROM backups"
            "   WHERE dataset = d.name AND backup_type = newest.backup_type"
            "   ORDER BY finished_at DESC, backup_id DESC LIMIT %s) AS h"
            " ORDER BY h.dataset, h.finished_at DESC, h.backup_id DESC",
            (list(dict.fromkeys(datasets)), max(limit, 0)),
        )
        out: dict[str, list[BackupRecord]] = {}
        for row in rows:
            out.setdefault(row["dataset"], []).append(_decode(row, BackupRecord))
        return out

    async def datasets_seen(self, datasets: Sequence[str], at: datetime) -> dict[str, datetime]:
        rows = await self._fetch(DATASETS_SEEN, (list(datasets), _aware(at), list(datasets)))
        return {r["dataset"]: _aware(r["first_seen"]) for r in rows}

    async def aclose(self) -> None:
        async with self._open_lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
