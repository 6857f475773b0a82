"""Wire messages of mosaic-backup: msgspec Structs, JSON on the wire.

Every message carries ``schema`` (the wire schema version). Evolution rule (msgspec's
schema-evolution guide): a new field always has a default, fields are never renamed or
retyped, and a breaking change bumps :data:`SCHEMA_VERSION`. One tagged union per
subject family; decoders are built once at import.

Families:
- jobs (``mosaic.job.<agent>``): :data:`Job` = BackupJob | RestoreJob
- events (``mosaic.event.<agent>.<job>.<kind>``): :data:`Event`
- operator API (``mosaic.api.<verb>``): requests and :data:`ApiReply`
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

SCHEMA_VERSION = 1

BackupType = Literal["full", "incremental"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    schema: int = SCHEMA_VERSION


# --- sources -------------------------------------------------------------------------


class FilesSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="files"):
    """A directory tree on the agent's host."""

    path: str
    exclude: list[str] = []


class RedisSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="redis"):
    """A Redis server's RDB snapshot (the password comes from REDISCLI_AUTH on the agent)."""

    host: str = "127.0.0.1"
    port: int = 6379
    user: str | None = None


class PostgresSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="postgres"):
    """A PostgreSQL cluster: a hot physical base backup (``basebackup``, streamed from
    pg_basebackup as one tar with the WAL needed to make it consistent) or a logical
    ``pg_dump`` of ``database`` (``dump``). Passwords come from the agent's environment
    (PGPASSWORD or ~/.pgpass), never from jobs."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    mode: Literal["basebackup", "dump"] = "basebackup"
    database: str | None = None


class MariaDBSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="mariadb"):
    """A MariaDB server: a hot physical backup streamed from ``mariabackup`` as xbstream
    (``mariabackup``) or a logical ``mariadb-dump`` of ``databases`` (``dump``; empty
    means all). ``socket`` wins over ``host``/``port``. Passwords come from the agent's
    environment (MYSQL_PWD), never from jobs; option files are not read, since every
    tool runs with ``--no-defaults`` so a host's my.cnf cannot change what is backed up."""

    socket: str | None = None
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    mode: Literal["mariabackup", "dump"] = "mariabackup"
    databases: list[str] = []


class SystemSource(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="system"):
    """The host's state as files: package lists, crontabs and timers, firewall rules,
    network settings, container configurations. ``include`` names items or groups
    (``packages``, ``cron/crontab-root.txt``); empty means every known item. With
    ``optional_missing`` an item whose tool is absent or fails is listed in MISSING.txt;
    without it the job fails, naming the tool and the package that provides it."""

    include: list[str] = []
    optional_missing: bool = True


Source = FilesSource | RedisSource | PostgresSource | MariaDBSource | SystemSource


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


Job = BackupJob | RestoreJob


# --- events --------------------------------------------------------------------------


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


Event = JobStarted | JobProgress | BackupCompleted | RestoreCompleted | JobFailed


def event_kind(ev: Event) -> str:
    """The subject token of an event (its tag)."""
    return str(type(ev).__struct_config__.tag)


# --- operator API (request/reply) ----------------------------------------------------


class BackupRequest(_Msg, frozen=True, kw_only=True, tag="backup_request"):
    dataset: str
    backup_type: BackupType = "full"
    requested_by: str = "operator"


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
    pass


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


class DatasetStatus(msgspec.Struct, frozen=True, kw_only=True):
    dataset: str
    agent: str
    target: str
    last_backup: BackupRecord | None = None
    last_failure: JobRecord | None = None


class StatusReply(_Msg, frozen=True, kw_only=True, tag="status"):
    status: Literal["healthy", "degraded", "failing"]
    coordinator: str
    datasets: list[DatasetStatus]
    recent_failures: list[JobRecord]
    backups_total: int
    # whether the answering coordinator holds the lease (runs the scheduler and alerts);
    # None from coordinators that predate the lease
    active: bool | None = None


class ApiError(_Msg, frozen=True, kw_only=True, tag="error"):
    code: str
    message: str


ApiRequest = BackupRequest | RestoreRequest | ListRequest | StatusRequest
ApiReply = JobAccepted | BackupList | StatusReply | ApiError

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


# --- alerts (``mosaic.alert.<rule>.<dataset>``, stream MOSAIC_ALERTS) -------------------


class Alert(_Msg, frozen=True, kw_only=True, tag="alert"):
    """One alert as it starts firing or resolves (and as ``GET /api/v1/alerts`` lists it).

    Not part of :data:`Event`: alerts are about datasets, not jobs, and live on their own
    subjects. ``fingerprint`` is ``rule/dataset/target`` (target empty when the rule is
    not about one target): the identity under which the alert is deduplicated.
    ``ends_at`` is set only when ``status`` is ``resolved``.
    """

    status: Literal["firing", "resolved"]
    rule: str
    dataset: str
    target: str | None = None
    severity: Literal["critical", "warning"] = "critical"
    fingerprint: str
    summary: str
    description: str = ""
    starts_at: datetime
    ends_at: datetime | None = None
    coordinator: str = ""


alert_decoder = msgspec.json.Decoder(Alert)
