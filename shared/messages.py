"""Wire messages of mosaic-backup: msgspec Structs, JSON on the wire.

Every message carries ``schema`` (the wire schema version). Evolution rule (msgspec's
schema-evolution guide): a new field always has a default, fields are never renamed or
retyped, and a breaking change bumps :data:`SCHEMA_VERSION`. One tagged union per
subject family; decoders are built once at import.

Families:
- jobs (``mosaic.job.<agent>``): :data:`Job` = BackupJob | RestoreJob | the maintenance
  jobs (verify, prune, replicate, drill); what a backup reads is a
  :data:`shared.sources.Source`
- events (``mosaic.event.<agent>.<job>.<kind>``): :data:`Event`
- operator API (``mosaic.api.<verb>``): requests and :data:`ApiReply`
- alerts (``mosaic.alert.…``) and heartbeats (``mosaic.heartbeat.<agent>``): shared/monitoring.py
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

from shared.sources import Source

SCHEMA_VERSION = 1

BackupType = Literal["full", "incremental"]
# The retention tier of a backup (the same values as shared.config.Tier, which config
# cannot lend here: config imports this module).
BackupTier = Literal["daily", "weekly", "monthly", "yearly", "config", "translog"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    schema: int = SCHEMA_VERSION


# --- sources: shared/sources.py (re-exported here) ------------------------------------

# --- jobs ----------------------------------------------------------------------------


class BackupJob(_Msg, frozen=True, kw_only=True, tag="backup"):
    job_id: str
    backup_id: str
    dataset: str
    agent: str
    target: str
    source: Source
    backup_type: BackupType = "full"
    parent_backup_id: str | None = None
    requested_at: datetime
    requested_by: str = "operator"
    # the retention tier of the backup (the schedule's, or the operator's ``--tier``);
    # None from an older coordinator: retention then reads it from the backup id
    tier: BackupTier | None = None


class RestoreJob(_Msg, frozen=True, kw_only=True, tag="restore"):
    job_id: str
    backup_id: str
    dataset: str
    agent: str
    target: str
    destination: str
    requested_at: datetime
    requested_by: str = "operator"
    paths: list[str] = []  # empty: everything
    # point-in-time restore (database sources with archived transaction logs): replay
    # the logs up to this instant; None restores the backup as it is
    pitr: datetime | None = None


# Maintenance jobs (issue 5): ordered by the coordinator on its maintenance schedule,
# run by an agent that holds the target. ``dataset`` names the dataset for drills and
# is empty for jobs about a whole target (a repository holds many datasets).


class VerifyJob(_Msg, frozen=True, kw_only=True, tag="verify"):
    """Check the repository on ``target``: structure, and with ``read_data`` a seeded
    random ``subset`` (percent of packs) downloaded and every blob authenticated."""

    job_id: str
    dataset: str = ""
    agent: str
    target: str
    read_data: bool = True
    subset: float = 5.0
    seed: int = 0
    requested_at: datetime
    requested_by: str = "scheduler"


class PruneJob(_Msg, frozen=True, kw_only=True, tag="prune"):
    """Forget ``forget`` (the coordinator's retention decision for this target's tier),
    then run the lease-safe garbage collection; ``gc_margin_s`` is its wait (prune.py)."""

    job_id: str
    dataset: str = ""
    agent: str
    target: str
    forget: list[str] = []
    dry_run: bool = False
    gc_margin_s: float = 300.0
    requested_at: datetime
    requested_by: str = "scheduler"


class ReplicateJob(_Msg, frozen=True, kw_only=True, tag="replicate"):
    """Copy the repository on ``target`` to ``to_target`` as ciphertext; report the lag
    of ``datasets`` (empty: every dataset found)."""

    job_id: str
    dataset: str = ""
    agent: str
    target: str
    to_target: str = ""
    datasets: list[str] = []
    requested_at: datetime
    requested_by: str = "scheduler"


class DrillJob(_Msg, frozen=True, kw_only=True, tag="drill"):
    """Restore ``backup_id`` into a fresh folder under ``scratch`` (empty: the agent's
    temporary folder), check it is usable, remove it. ``newest_at`` is when the newest
    restorable backup of the dataset finished (the catalog's view): the RPO is its age
    when the drill starts."""

    job_id: str
    dataset: str
    agent: str
    target: str
    backup_id: str
    scratch: str = ""
    newest_at: datetime | None = None
    requested_at: datetime
    requested_by: str = "scheduler"


MaintenanceJob = VerifyJob | PruneJob | ReplicateJob | DrillJob


Job = BackupJob | RestoreJob | VerifyJob | PruneJob | ReplicateJob | DrillJob


# --- events --------------------------------------------------------------------------


FileWarningKind = Literal["skipped", "unreadable", "changed"]


class FileWarning(msgspec.Struct, frozen=True, kw_only=True):
    """One file a files backup did not store as it found it, by name (a secret file's
    name withheld): ``skipped`` a socket, FIFO or device (no data to store);
    ``unreadable`` left out (permission denied, vanished, I/O error); ``changed`` while
    it was read, stored as read (its content may be a mix of before and after)."""

    path: str
    kind: FileWarningKind
    detail: str = ""


# How many FileWarnings a summary names; the agent's log names every one.
WARNINGS_SHOWN = 20


class BackupSummary(msgspec.Struct, frozen=True, kw_only=True):
    files: int
    dirs: int
    symlinks: int
    bytes_read: int
    bytes_new: int
    bytes_stored: int
    chunks_total: int
    chunks_new: int
    packs_written: int
    duration_s: float
    # files backups: how many entries were skipped / left out / changed while read, and
    # the first WARNINGS_SHOWN of them by name (all of them are in the agent's log)
    files_skipped: int = 0
    files_unreadable: int = 0
    files_changed: int = 0
    warnings: list[FileWarning] = []

    def warning_lines(self) -> list[str]:
        """The file warnings as lines for people: a count, then each named one."""
        total = self.files_skipped + self.files_unreadable + self.files_changed
        if not total:
            return []
        kinds = [
            f"{n} {what}"
            for n, what in (
                (self.files_unreadable, "unreadable (left out)"),
                (self.files_changed, "changed while read (stored as read)"),
                (self.files_skipped, "skipped (socket, FIFO or device)"),
            )
            if n
        ]
        lines = [f"warning: {total} files not stored as found: {', '.join(kinds)}"]
        lines += [f"  {w.kind} {w.path}: {w.detail}" for w in self.warnings]
        if total > len(self.warnings):
            lines.append(f"  … and {total - len(self.warnings)} more (the log names every one)")
        return lines


class JobStarted(_Msg, frozen=True, kw_only=True, tag="started"):
    job_id: str
    agent: str
    job_kind: str
    delivery: int = 1
    at: datetime


class JobProgress(_Msg, frozen=True, kw_only=True, tag="progress"):
    job_id: str
    agent: str
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    at: datetime


class BackupCompleted(_Msg, frozen=True, kw_only=True, tag="backup_completed"):
    job_id: str
    agent: str
    backup_id: str
    dataset: str
    target: str
    backup_type: BackupType
    repository_id: str
    started_at: datetime
    finished_at: datetime
    summary: BackupSummary
    # log backups: age in seconds of the oldest archived log file not yet in the
    # repository when this backup shipped it (how far the repository trailed the server)
    log_lag_s: float | None = None
    tier: BackupTier | None = None  # BackupJob.tier, carried back for the catalog


class RestoreCompleted(_Msg, frozen=True, kw_only=True, tag="restore_completed"):
    job_id: str
    agent: str
    backup_id: str
    destination: str
    files: int
    bytes_written: int
    duration_s: float
    at: datetime


class JobFailed(_Msg, frozen=True, kw_only=True, tag="failed"):
    job_id: str
    agent: str
    job_kind: str
    code: str
    message: str
    retryable: bool = False
    at: datetime


class VerifyCompleted(_Msg, frozen=True, kw_only=True, tag="verify_completed"):
    """``damaged`` objects (packs, manifests, index segments) by name, and the backups
    they break; zero damaged means the verify passed."""

    job_id: str
    agent: str
    target: str
    backups: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    damaged: int = 0
    damaged_objects: list[str] = []
    damaged_backups: list[str] = []
    started_at: datetime | None = None
    at: datetime


class PruneCompleted(_Msg, frozen=True, kw_only=True, tag="prune_completed"):
    job_id: str
    agent: str
    target: str
    forgotten: list[str] = []  # backup ids whose manifests were deleted
    packs_removed: int = 0
    bytes_freed: int = 0
    locked: int = 0  # Object-Locked packs left until their retention ends
    locked_objects: list[str] = []
    deferred: str | None = None  # why garbage collection did not sweep (a live writer)
    dry_run: bool = False
    started_at: datetime | None = None
    at: datetime


class ReplicateCompleted(_Msg, frozen=True, kw_only=True, tag="replicate_completed"):
    job_id: str
    agent: str
    target: str
    to_target: str
    copied: int = 0
    copied_bytes: int = 0
    lag_s: dict[str, float | None] = {}  # dataset → seconds behind (0: in sync)
    started_at: datetime | None = None
    at: datetime
    # ids of the backups whose manifests ``to_target`` holds after this run (at most
    # agent.maintenance.MAX_COPY_IDS); the coordinator records them as catalog copies
    backup_ids: list[str] = []


class DrillCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One check of a drill: ``name`` (restore, rehash, pg_amcheck, rows, …), whether it
    passed, and what it found (counts, or the tool's error)."""

    name: str
    ok: bool
    detail: str = ""


class DrillCompleted(_Msg, frozen=True, kw_only=True, tag="drill_completed"):
    """A restore drill: ``rto_s`` from the drill's start until the data was restored
    and checked; ``rpo_s`` the age of the dataset's newest restorable backup then."""

    job_id: str
    agent: str
    dataset: str
    target: str
    backup_id: str
    outcome: Literal["passed", "failed"]
    rto_s: float
    rpo_s: float | None = None
    checks: list[DrillCheck] = []
    started_at: datetime
    at: datetime


MaintenanceEvent = VerifyCompleted | PruneCompleted | ReplicateCompleted | DrillCompleted


LocalActionKind = Literal[
    "keys_rotated",
    "keys_rewrapped",
    "key_exported",
    "write_only_key_exported",
    "pruned",
    "repaired",
]


class LocalAction(_Msg, frozen=True, kw_only=True, tag="local_action"):
    """A repository tool (``repo keys …``, ``repo prune``) run with an agent's config
    changed keys or deleted backups without the coordinator: reported on that agent's
    own event subject, for the audit trail. ``job_id`` is the tool run's own id
    (``local-<action>-<random>``); ``actor`` is who ran it (user@host, a claim)."""

    job_id: str
    agent: str
    action: LocalActionKind
    actor: str
    target: str = ""
    repository_id: str = ""
    detail: str = ""
    at: datetime


Event = (
    JobStarted
    | JobProgress
    | BackupCompleted
    | RestoreCompleted
    | JobFailed
    | VerifyCompleted
    | PruneCompleted
    | ReplicateCompleted
    | DrillCompleted
    | LocalAction
)


def job_kind(job: Job) -> str:
    """The kind of a job (its tag): backup, restore, verify, prune, replicate, drill."""
    return str(type(job).__struct_config__.tag)


def event_kind(ev: Event) -> str:
    """The subject token of an event (its tag)."""
    return str(type(ev).__struct_config__.tag)


# --- operator API (request/reply) ----------------------------------------------------


class BackupRequest(_Msg, frozen=True, kw_only=True, tag="backup_request"):
    dataset: str
    backup_type: BackupType = "full"
    requested_by: str = "operator"
    tier: BackupTier | None = None  # None: weekly for a full backup, daily otherwise


class RestoreRequest(_Msg, frozen=True, kw_only=True, tag="restore_request"):
    backup_id: str
    destination: str
    requested_by: str = "operator"
    paths: list[str] = []  # empty: everything
    pitr: datetime | None = None  # see RestoreJob.pitr


class ListRequest(_Msg, frozen=True, kw_only=True, tag="list_request"):
    days: int | None = None
    dataset: str | None = None
    limit: int = 1000


class StatusRequest(_Msg, frozen=True, kw_only=True, tag="status_request"):
    # one page of per-dataset detail (problems first); the totals cover every dataset
    limit: int = 1000
    offset: int = 0


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
    tier: BackupTier | None = None  # None: recorded before the catalog had tiers
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


class JobAccepted(_Msg, frozen=True, kw_only=True, tag="job_accepted"):
    job_id: str
    agent: str
    duplicate: bool = False


class BackupList(_Msg, frozen=True, kw_only=True, tag="backup_list"):
    backups: list[BackupRecord]


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


class DrillRequest(_Msg, frozen=True, kw_only=True, tag="drill_request"):
    """Run a restore drill of ``dataset`` now (a random backup of the past week, or
    ``backup_id``)."""

    dataset: str
    backup_id: str | None = None
    requested_by: str = "operator"


class MaintenanceListRequest(_Msg, frozen=True, kw_only=True, tag="maintenance_list_request"):
    """Past maintenance results, newest first (``job_kind``: verify, prune, replicate,
    drill; None: all)."""

    job_kind: str | None = None
    dataset: str | None = None
    limit: int = 100


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


class MaintenanceList(_Msg, frozen=True, kw_only=True, tag="maintenance_list"):
    results: list[MaintenanceRecord]


class ApiError(_Msg, frozen=True, kw_only=True, tag="error"):
    code: str
    message: str


ApiRequest = (
    BackupRequest
    | RestoreRequest
    | ListRequest
    | StatusRequest
    | DrillRequest
    | MaintenanceListRequest
)
ApiReply = JobAccepted | BackupList | StatusReply | ApiError | MaintenanceList

_enc = msgspec.json.Encoder()
job_decoder = msgspec.json.Decoder(Job)
event_decoder = msgspec.json.Decoder(Event)
request_decoder = msgspec.json.Decoder(ApiRequest)
reply_decoder = msgspec.json.Decoder(ApiReply)


def encode(msg: msgspec.Struct) -> bytes:
    return _enc.encode(msg)


def json_schemas() -> dict[str, object]:
    """JSON Schema of every wire family, for other systems that consume the events."""
    return {
        "job": msgspec.json.schema(Job),
        "event": msgspec.json.schema(Event),
        "api_request": msgspec.json.schema(ApiRequest),
        "api_reply": msgspec.json.schema(ApiReply),
    }
