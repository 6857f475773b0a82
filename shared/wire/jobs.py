"""Jobs (``mosaic.job.<agent>``): what the coordinator asks an agent to do.

:data:`Job` = BackupJob | RestoreJob | the maintenance jobs (verify, prune, replicate,
drill); what a backup reads is a :data:`shared.wire.sources.Source`.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from shared.vocab import BackupType, Tier
from shared.wire.base import Msg as _Msg
from shared.wire.base import tag_of
from shared.wire.sources import Source


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
    tier: Tier | None = None


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
    # the backups to check (``mosaic-backup verify BACKUP_ID`` / ``--dataset``); empty:
    # every backup in the repository (the scheduled verify)
    backup_ids: list[str] = []


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
    # a host drill's common point (shared/wire/drills.py): replay the archived logs of a
    # database dataset up to this instant; None restores the backup as it is
    pitr: datetime | None = None


MaintenanceJob = VerifyJob | PruneJob | ReplicateJob | DrillJob


Job = BackupJob | RestoreJob | VerifyJob | PruneJob | ReplicateJob | DrillJob


def job_kind(job: Job) -> str:
    """The kind of a job (its tag): backup, restore, verify, prune, replicate, drill."""
    return tag_of(job)


job_decoder = msgspec.json.Decoder(Job)
