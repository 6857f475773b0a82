"""Base backups and the transaction-log backups that extend them.

Database sources with log archiving (PostgreSQL WAL, MariaDB binary logs) store two kinds
of backup under one dataset:

- a **base** backup (``backup_type="full"``): a hot physical copy of the server;
- **log** backups (``backup_type="incremental"``, ``parent`` = the base they extend): the
  log files archived since, each stored as one file of the backup's tree.

A restore of the latest state or to a point in time needs the base and every log backup
taken after it; recovery itself stops at the requested instant, so a log backup holding
more than needed costs only restore time, never correctness.
"""

from __future__ import annotations

from datetime import datetime

from shared.errors import MosaicError
from shared.repository.manifest import Manifest
from shared.repository.repository import Repository


class ChainError(MosaicError):
    code = "no_restore_point"


async def base_of(repo: Repository, manifest: Manifest) -> Manifest:
    """The full backup at the root of ``manifest``'s parent chain."""
    seen = {manifest.backup_id}
    while manifest.backup_type != "full":
        if manifest.parent is None or manifest.parent in seen:
            raise ChainError(
                f"backup {manifest.backup_id} of dataset '{manifest.dataset}' has no base "
                "backup to start from; restore a full backup instead"
            )
        seen.add(manifest.parent)
        manifest = await repo.load_manifest(manifest.parent)
    return manifest


async def log_backups(repo: Repository, base: Manifest) -> list[Manifest]:
    """Every log backup of ``base.dataset`` that finished after ``base`` started, oldest
    first (they may overlap the base: archived logs are idempotent to replay)."""
    out = []
    for backup_id in await repo.list_manifests():
        if backup_id == base.backup_id:
            continue
        m = await repo.load_manifest(backup_id)
        if (
            m.dataset == base.dataset
            and m.backup_type == "incremental"
            and m.finished_at >= base.started_at
        ):
            out.append(m)
    out.sort(key=lambda m: (m.started_at, m.backup_id))
    return out


def check_point_in_time(base: Manifest, logs: list[Manifest], pitr: datetime) -> None:
    """Refuse a target the chain cannot reach: before the base finished (the copy is only
    consistent from its end), or after the newest archived log."""
    if pitr < base.finished_at:
        raise ChainError(
            f"cannot restore dataset '{base.dataset}' to {pitr.isoformat()}: base backup "
            f"{base.backup_id} is consistent only from {base.finished_at.isoformat()}; "
            "pick an older base backup or a later time"
        )
    newest = max([base.finished_at, *(m.finished_at for m in logs)])
    if pitr > newest:
        raise ChainError(
            f"cannot restore dataset '{base.dataset}' to {pitr.isoformat()}: the newest "
            f"archived log was stored at {newest.isoformat()}; pick an earlier time or "
            "run an incremental backup first"
        )


async def base_for_log_backup(repo: Repository, parent_id: str | None) -> Manifest | None:
    """The base a new log backup extends: the root of ``parent_id``'s chain, or None when
    there is no usable base (no parent, or a chain broken by prune): then the backup
    must be a new base backup instead."""
    if parent_id is None or not await repo.has_manifest(parent_id):
        return None
    try:
        return await base_of(repo, await repo.load_manifest(parent_id))
    except ChainError:
        return None
