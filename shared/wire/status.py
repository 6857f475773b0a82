"""The status view (``mosaic.api.status``): datasets, 3-2-1 state, agents, targets."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.wire.base import Msg as _Msg
from shared.wire.monitoring import KeyCheck
from shared.wire.records import BackupRecord, JobRecord


class TargetCopy(msgspec.Struct, frozen=True, kw_only=True):
    """A dataset's backups on one target, from the catalog. ``lag_s`` (replicas only):
    how long the primary target's newest backup has waited for a copy here (0: caught
    up; None on the primary)."""

    target: str
    primary: bool = False
    last_backup_at: datetime | None = None
    backups: int = 0
    bytes_stored: int = 0
    lag_s: float | None = None


class Compliance321(msgspec.Struct, frozen=True, kw_only=True):
    """3-2-1 of one dataset (coordinator/compliance.py). ``compliant`` is None when a
    target's tags are unknown (its agent has sent no heartbeat yet)."""

    compliant: bool | None = None
    copies: int = 0
    media: list[str] = []
    offsite: int = 0
    reasons: list[str] = []


class SkippedRuns(msgspec.Struct, frozen=True, kw_only=True):
    """Scheduled runs of one schedule that the scheduler did not run in one pass, and why
    (``reason``): ``missed`` (older than the schedule's ``grace_s``, the coordinator was
    down) or ``superseded`` (a newer run of the same schedule was due: only that one
    ran). Also the ``detail`` of the ``schedule_skipped`` audit entry."""

    reason: str
    tier: str = ""
    backup_type: str = ""
    count: int = 0
    first: datetime | None = None  # the oldest skipped fire time
    last: datetime | None = None  # the newest skipped fire time
    at: datetime | None = None  # when the scheduler skipped them


class WindowStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The maintenance window of a dataset's newest scheduled run (``window = "02:00-04:00"``
    on its schedule, in the schedule's time zone): whether that run stayed inside it.
    ``exceeded_s``: how far past the window's end it finished (or, still running, has
    run so far); 0 when inside. Filled by coordinator/windows.py."""

    schedule: str = ""  # the schedule's tier (daily, weekly, monthly) or cron text
    window: str = ""  # as configured, e.g. "02:00-04:00"
    window_end: datetime | None = None  # the end of the window the run belonged to
    job_id: str | None = None
    running: bool = False
    exceeded: bool = False
    exceeded_s: float = 0.0


class DatasetStatus(msgspec.Struct, frozen=True, kw_only=True):
    dataset: str
    agent: str
    target: str
    last_backup: BackupRecord | None = None
    last_failure: JobRecord | None = None
    next_backup: datetime | None = None  # from the schedules; None: not scheduled
    storage_used: int = 0  # bytes its backups added to their repositories (catalog)
    storage_free: int | None = None  # free bytes on its primary target (heartbeat)
    targets: list[TargetCopy] = []
    compliance: Compliance321 | None = None
    # no backup yet, and its first scheduled time plus the grace period has not passed
    # (not a problem yet); None from coordinators that predate it
    pending: bool | None = None
    first_seen: datetime | None = None  # when the dataset first appeared in the config
    skipped_runs: list[SkippedRuns] = []  # the scheduler's newest skip per schedule
    window: WindowStatus | None = None  # None: no schedule of it has a window


class TargetSpaceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One agent's target as its last heartbeat described it, plus the catalog's sum."""

    agent: str
    target: str
    kind: str = ""
    media: str = ""
    location: str = ""
    tier: str = ""
    total: int | None = None
    free: int | None = None
    used_percent: float | None = None
    catalog_bytes: int = 0  # bytes_stored of the catalogued backups on this target
    # the agent's last proof that its key works there (None: not reported yet)
    key_check: KeyCheck | None = None


class UnprotectedItem(msgspec.Struct, frozen=True, kw_only=True):
    """Something an agent's inventory found on its host that no configured dataset covers
    (coordinator/coverage.py). ``ignored``: matched by the coordinator's ignore list
    (listed, never dropped). ``kind`` is an inventory item kind (shared/wire/inventory.py)."""

    agent: str
    kind: str
    key: str  # the item's identity on its host, e.g. a data directory or volume name
    detail: str = ""  # one line for people (port, databases, compose project …)
    ignored: bool = False
    ignored_by: str = ""  # the ignore-list entry that matched


class CertificateStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A TLS certificate an agent's inventory found, with its expiry."""

    agent: str
    path: str
    subject: str = ""
    not_after: datetime | None = None
    days_left: float | None = None
    expiring: bool = False  # within the alert's horizon (14 days)


class HostDrillStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The newest whole-host drill of one host (``drill host``, coordinator/jobs/host_drill.py)."""

    host: str
    job_id: str
    outcome: str  # passed / failed
    finished_at: datetime
    rto_s: float | None = None  # every dataset restored and checked
    rpo_s: float | None = None  # the largest of the datasets' RPOs
    summary: str = ""


class AgentStatus(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    hostname: str = ""
    version: str = ""
    last_heartbeat: datetime | None = None  # None: never heard from (since start)
    running_job: str | None = None
    uptime_s: float = 0.0
    lost: bool = False  # no heartbeat for 3 of its intervals


class StatusReply(_Msg, frozen=True, kw_only=True, tag="status"):
    status: Literal["healthy", "degraded", "failing"]
    coordinator: str
    datasets: list[DatasetStatus]
    recent_failures: list[JobRecord]
    backups_total: int
    # whether the answering coordinator holds the lease (runs the scheduler and alerts);
    # None from coordinators that predate the lease
    active: bool | None = None
    # ``datasets`` is one page (problems first, then by name) of ``datasets_total``
    datasets_total: int = 0
    datasets_failing: int = 0
    datasets_without_backup: int = 0
    datasets_not_compliant: int = 0
    next_backup: datetime | None = None
    last_backup_at: datetime | None = None  # the newest backup of any dataset
    agents: list[AgentStatus] = []
    targets: list[TargetSpaceStatus] = []
    # never backed up and not due yet (first due time plus grace still ahead); counted
    # apart from datasets_without_backup, and not a reason for "degraded"
    datasets_pending: int = 0
    # the coordinator holding the lease (``name/instance``) and since when; None: unknown
    # (no lease holder right now, or a coordinator that predates it)
    active_coordinator: str | None = None
    active_since: datetime | None = None
    # coverage (coordinator/coverage.py): what agents' inventories found that no dataset
    # covers, ignored items included and marked; None: no agent has sent an inventory
    unprotected: list[UnprotectedItem] = []
    unprotected_total: int = 0  # not ignored
    inventories: int | None = None  # agents whose inventory the coordinator holds
    certificates: list[CertificateStatus] = []  # expiring first
    # [coverage] ignore entries that match no item of any inventory held (fix or remove)
    ignore_unmatched: list[str] = []
    windows_exceeded: int = 0  # datasets whose newest scheduled run exceeded its window
    host_drills: list[HostDrillStatus] = []  # the newest per host, hosts by name
