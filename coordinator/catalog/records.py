"""The catalog's own rows, and the columns of every table both backends write.

The rows the operator CLI and the HTTP API decode too (jobs, backups, maintenance
results) are wire types, in ``shared/wire/records.py``; these are read only through
the :class:`~coordinator.catalog.base.Catalog` Protocol (summaries, copies, the audit
trail, whose entries are also the body of the ``mosaic.audit.<action>`` events).
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class TargetSummary(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A dataset's backups on one target: the newest, how many, and their stored bytes.

    Kept by the catalog itself (triggers on insert and delete) in a table of one row per
    (dataset, target), so status and metrics read a few thousand rows instead of
    scanning millions of backups. ``gc=False``: tens of thousands of them are read at
    once, and they hold no references that could form a cycle."""

    dataset: str
    target: str
    backup_id: str  # the newest (by finished_at, then backup_id)
    finished_at: datetime
    backups: int
    bytes_stored: int


class CopyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A replicated copy of a backup on a replica target (a ``backup_copies`` row): what
    a prune of that target needs to apply retention, even after the primary row is gone."""

    backup_id: str
    target: str  # the replica holding the copy
    dataset: str
    tier: str | None  # the backup's retention tier (None: rows from before tiers)
    finished_at: datetime  # when the backup itself finished, not the copy
    bytes_stored: int
    copied_at: datetime


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the audit trail: who (``actor``) did what (``action``) to what.

    Also the JSON body of the ``mosaic.audit.<action>`` events (coordinator/audit.py),
    so other systems read the same fields. ``entry_id`` is deterministic where the
    action has an id (``restore_requested:<job id>``): a replayed request or a
    re-published scheduled job never adds a second line.
    """

    entry_id: str
    at: datetime
    action: str  # backup_requested, backup_scheduled, restore_requested, config_changed, …
    actor: str  # requested_by of the request; "scheduler"; the coordinator's name
    dataset: str | None = None
    backup_id: str | None = None
    job_id: str | None = None
    detail: str = ""


# The columns both backends read and write. Explicit, not derived from the Structs: a
# field added to a record (with a default) keeps decoding until a migration adds its
# column.
JOB_STATUSES = frozenset({"dispatched", "running", "completed", "failed"})
JOB_COLUMNS = (
    *("job_id", "job_kind", "dataset", "agent", "target", "status", "requested_at"),
    *("updated_at", "backup_id", "error_code", "error_message"),
)
BACKUP_COLUMNS = (
    *("backup_id", "dataset", "agent", "target", "backup_type", "repository_id"),
    *("started_at", "finished_at", "files", "bytes_read", "bytes_new", "bytes_stored"),
    *("duration_s", "tier"),
)
MAINTENANCE_COLUMNS = (
    *("job_id", "kind", "agent", "target", "dataset", "backup_id", "outcome"),
    *("started_at", "finished_at", "rto_s", "rpo_s", "summary", "detail"),
)
AUDIT_COLUMNS = ("entry_id", "at", "action", "actor", "dataset", "backup_id", "job_id", "detail")
