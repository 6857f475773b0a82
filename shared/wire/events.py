"""Events (``mosaic.event.<agent>.<job>.<kind>``): what agents report. :data:`Event`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.vocab import BackupSummary, BackupType, Tier
from shared.wire.base import Msg as _Msg
from shared.wire.base import tag_of


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
    tier: Tier | None = None  # BackupJob.tier, carried back for the catalog


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


class VerifyFinding(msgspec.Struct, frozen=True, kw_only=True):
    """One damaged object of a verify (``verify --detailed``): what is wrong with it,
    the backups it breaks, how many of their files, and the command that repairs it."""

    obj: str  # pack, manifest or index segment key (``index/`` for unindexed chunks)
    messages: list[str] = []
    backups: list[str] = []
    files: int = 0
    repair: str | None = None


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
    # per damaged object (at most MAX_NAMES); empty from agents that predate it
    findings: list[VerifyFinding] = []
    # the backups checked when the job named them (VerifyJob.backup_ids); else empty
    checked: list[str] = []


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
    # agent.jobs.replicate.MAX_COPY_IDS); the coordinator records them as catalog copies
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


def event_kind(ev: Event) -> str:
    """The subject token of an event (its tag)."""
    return tag_of(ev)


event_decoder = msgspec.json.Decoder(Event)
