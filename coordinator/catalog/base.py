"""The catalog interface: the coordinator's index of jobs and backups.

The catalog is an index, not the source of truth: every backup is self-described in its
repository. Two backends implement this Protocol (SQLite for one node and quickstart,
PostgreSQL for production); tests/test_catalog_contract.py runs one suite on both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from shared.messages import BackupRecord, JobRecord


class Catalog(Protocol):
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

    async def aclose(self) -> None: ...
