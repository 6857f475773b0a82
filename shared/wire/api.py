"""The operator API (``mosaic.api.<verb>``, request/reply): requests, replies and the
catalog rows they carry (the operator CLI and the HTTP API decode the same rows)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from shared.vocab import BackupType, Tier
from shared.wire.base import Msg as _Msg
from shared.wire.check import CheckReport, CheckRequest
from shared.wire.drills import HostDrillAccepted, HostDrillRequest
from shared.wire.records import BackupRecord, MaintenanceRecord
from shared.wire.status import StatusReply


class BackupRequest(_Msg, frozen=True, kw_only=True, tag="backup_request"):
    dataset: str
    backup_type: BackupType = "full"
    requested_by: str = "operator"
    tier: Tier | None = None  # None: weekly for a full backup, daily otherwise


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


class JobAccepted(_Msg, frozen=True, kw_only=True, tag="job_accepted"):
    job_id: str
    agent: str
    duplicate: bool = False


class BackupList(_Msg, frozen=True, kw_only=True, tag="backup_list"):
    backups: list[BackupRecord]


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


class MaintenanceList(_Msg, frozen=True, kw_only=True, tag="maintenance_list"):
    results: list[MaintenanceRecord]


class VerifyRequest(_Msg, frozen=True, kw_only=True, tag="verify_request"):
    """Verify now (``mosaic-backup verify``): one backup (``backup_id``) or every backup
    of ``dataset`` on its target, by the agent that verifies that target on schedule.
    ``read_data`` downloads packs and authenticates every blob; ``subset`` (percent of
    the packs, seeded) limits how many."""

    backup_id: str | None = None
    dataset: str | None = None
    read_data: bool = False
    subset: float = 100.0
    requested_by: str = "operator"


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
    | VerifyRequest
    | CheckRequest
    | HostDrillRequest
)
ApiReply = (
    JobAccepted
    | BackupList
    | StatusReply
    | ApiError
    | MaintenanceList
    | CheckReport
    | HostDrillAccepted
)


request_decoder = msgspec.json.Decoder(ApiRequest)
reply_decoder = msgspec.json.Decoder(ApiReply)
