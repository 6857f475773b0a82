"""Catalog rows as the operator API carries them: a backup, a job, a maintenance result.

The coordinator's catalog stores and returns exactly these; the CLI, the HTTP API and
the status view decode the same rows, so they are wire types (shared), not catalog
internals.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.vocab import BackupType, Tier


class BackupRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One backup as the catalog knows it (also the ``list`` reply row)."""

    backup_id: str
    dataset: str
    agent: str
    target: str
    backup_type: BackupType
    repository_id: str
    started_at: datetime
    finished_at: datetime
    files: int
    bytes_read: int
    bytes_new: int
    bytes_stored: int
    duration_s: float
    tier: Tier | None = None  # None: recorded before the catalog had tiers
    copies: list[str] = []  # replica targets holding a copy (``list`` replies only)


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One job as the catalog knows it."""

    job_id: str
    job_kind: str
    dataset: str
    agent: str
    target: str
    status: Literal["dispatched", "running", "completed", "failed"]
    requested_at: datetime
    updated_at: datetime
    backup_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None


class MaintenanceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One maintenance result as the catalog keeps it. ``dataset`` is empty for jobs about
    a whole target; ``rto_s``/``rpo_s`` only for drills; ``summary`` is one line;
    ``detail`` the full result event (JSON)."""

    job_id: str
    kind: str
    agent: str
    target: str
    dataset: str = ""
    backup_id: str | None = None
    outcome: Literal["passed", "failed"]
    started_at: datetime
    finished_at: datetime
    rto_s: float | None = None
    rpo_s: float | None = None
    summary: str = ""
    detail: str = ""
