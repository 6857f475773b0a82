"""The catalog interface: the coordinator's index of jobs and backups.

The catalog is an index, not the source of truth: every backup is self-described in its
repository. Two backends implement this Protocol (SQLite for one node and quickstart,
PostgreSQL for production); tests/test_catalog_contract.py runs one suite on both.
Its row types are in ``records.py`` (named here too, for the callers that import them
with the Protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from coordinator.catalog.auth_base import AuthCatalog
from coordinator.catalog.records import AuditEntry as AuditEntry
from coordinator.catalog.records import CopyRecord as CopyRecord
from coordinator.catalog.records import TargetSummary as TargetSummary
from shared.wire.records import BackupRecord, JobRecord, MaintenanceRecord


class Catalog(AuthCatalog, Protocol):
    """Contract:

    - All writes are idempotent: events can be redelivered, so recording the same job or
      backup twice leaves one row (the later status wins, except that a job that is
      ``completed`` never goes back to ``running`` or ``dispatched``).
    - ``list_backups`` returns newest first (by ``finished_at``), limited to ``limit``.
    - Time values are timezone-aware UTC datetimes, in and out.
    - ``aclose`` is idempotent.
    """

    async def migrate(self) -> None:
        """Create or upgrade the schema (versioned; safe to run on every start)."""

    async def record_job(self, job: JobRecord) -> None:
        """Insert a dispatched job, or do nothing if ``job_id`` exists already."""

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
        """Move a job to ``running``, ``completed`` or ``failed``; unknown ids are ignored."""

    async def get_job(self, job_id: str) -> JobRecord | None: ...

    async def record_backup(self, backup: BackupRecord) -> None:
        """Insert a completed backup; a second call with the same id replaces nothing."""

    async def get_backup(self, backup_id: str) -> BackupRecord | None: ...

    async def list_backups(
        self, *, since: datetime | None = None, dataset: str | None = None, limit: int = 1000
    ) -> list[BackupRecord]: ...

    async def last_backup(self, dataset: str) -> BackupRecord | None: ...

    async def recent_failures(self, *, limit: int = 20) -> list[JobRecord]:
        """Failed jobs, newest first (by ``updated_at``)."""

    async def last_failure(self, dataset: str) -> JobRecord | None: ...

    async def count_backups(self) -> int: ...

    async def target_summaries(self) -> list[TargetSummary]:
        """One row per (dataset, target) holding backups, in that order; one query."""

    async def summary_marker(self) -> str:
        """A value that changes whenever ``target_summaries`` or any failed job changes;
        cheap (a few aggregates over small tables and a partial index), so a reader
        can keep what it computed from them until it changes."""

    async def last_failures(
        self,
        *,
        job_kind: str | None = None,
        datasets: Sequence[str] | None = None,
        unresolved: bool = False,
    ) -> dict[str, JobRecord]:
        """The newest failed job (of ``job_kind``, if given) of every dataset (of
        ``datasets``, if given); one query. ``unresolved``: only where it failed after the
        dataset's newest backup on any target (the datasets failing right now)."""

    async def get_backups(self, backup_ids: Sequence[str]) -> list[BackupRecord]:
        """The backups with these ids that exist, in no particular order."""

    async def append_audit(self, entry: AuditEntry) -> None:
        """Append one audit entry; an ``entry_id`` already there is left as it was.
        The table refuses UPDATE and DELETE (triggers): the trail is append-only."""

    async def list_audit(self, *, limit: int = 100, action: str | None = None) -> list[AuditEntry]:
        """Audit entries newest first (in the order they were appended)."""

    async def record_maintenance(self, rec: MaintenanceRecord) -> None:
        """Insert a maintenance result (verify, prune, replicate, drill); idempotent by
        ``job_id`` (the first result recorded for a job stays)."""

    async def list_maintenance(
        self,
        *,
        kind: str | None = None,
        dataset: str | None = None,
        target: str | None = None,
        limit: int = 100,
    ) -> list[MaintenanceRecord]:
        """Maintenance results newest first (by ``finished_at``), filtered when given."""

    async def forget_backups(self, backup_ids: Sequence[str], *, target: str) -> int:
        """Remove the rows of backups a prune forgot on ``target``; returns how many.
        Unknown ids and rows of other targets are left alone."""

    async def record_copies(self, backup_ids: Sequence[str], *, target: str, at: datetime) -> int:
        """Record that replica ``target`` holds a copy of these backups (copied by
        ``at``); returns how many were new. Ids the catalog does not know, copies already
        recorded, and the backup's own target are left alone. A prune's
        ``forget_backups`` on ``target`` removes the copies too."""

    async def copies_on(self, target: str) -> list[CopyRecord]:
        """The copies replica ``target`` holds, newest first (by ``finished_at``, then
        ``backup_id``); one query."""

    async def copy_summaries(self) -> list[TargetSummary]:
        """Like ``target_summaries``, for replicated copies (kept by triggers; one query)."""

    async def copies_of(self, backup_ids: Sequence[str]) -> dict[str, list[str]]:
        """Backup id → the replica targets holding a copy, sorted (ids without copies are
        absent); one query."""

    async def duration_history(
        self, datasets: Sequence[str], *, limit: int
    ) -> dict[str, list[BackupRecord]]:
        """Per dataset (of those that have backups): its newest backup and the ones
        before it of the same type, newest first, at most ``limit`` — what the duration
        alert rule compares. One query (SQLite: one per 400 datasets)."""

    async def datasets_seen(self, datasets: Sequence[str], at: datetime) -> dict[str, datetime]:
        """Record ``at`` as the first appearance of the ``datasets`` not seen before, and
        return every one's first appearance (an earlier ``at`` never moves it back)."""

    async def aclose(self) -> None: ...
