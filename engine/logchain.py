"""Base backups and the transaction-log backups that extend them.

Database sources with log archiving (PostgreSQL WAL, MariaDB binary logs) store two kinds
of backup under one dataset:

- a **base** backup (``backup_type="full"``): a hot physical copy of the server;
- **log** backups (``backup_type="incremental"``, ``parent`` = the base they extend): the
  log files archived since, each stored as one file of the backup's tree.

A restore of the latest state or to a point in time needs the base and every log backup
taken after it; recovery itself stops at the requested instant, so a log backup holding
more than needed costs only restore time, never correctness.

A write-only agent cannot read the parent chain, so it extends only a base it stored
itself, as its file cache records (:func:`recorded_base`); when in doubt it takes a new
base backup. Restores read the chain with the full key, as for any other agent.
"""

from __future__ import annotations

from datetime import datetime

import anyio.to_thread

from engine.backup import filecache
from engine.format.manifest import Manifest
from engine.repository import Repository
from shared.errors import MosaicError
from shared.wire.jobs import BackupJob


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


async def base_for_log_backup(repo: Repository, job: BackupJob, state_dir: str) -> str | None:
    """The id of the base a new log backup extends, or None when there is no usable
    base (no parent, a chain broken by prune, nothing this agent can vouch for): then
    the backup must be a new base backup instead.

    With the full key, the base is the root of the coordinator's ``parent`` chain, read
    from the repository. A write-only agent can read no manifest, so it trusts only its
    own record (:func:`recorded_base`), checked against the coordinator's parent and
    the repository's objects."""
    parent_id = job.parent_backup_id
    if parent_id is None or not await repo.has_manifest(parent_id):
        return None
    if repo.write_only is None:
        try:
            return (await base_of(repo, await repo.load_manifest(parent_id))).backup_id
        except ChainError:
            return None
    cached = await anyio.to_thread.run_sync(filecache.load, state_dir, job.dataset)
    base_id = recorded_base(cached[0] if cached else None, job)
    if base_id is None or not await repo.has_manifest(base_id):
        return None  # pruned since (or stored on another target)
    return base_id


def recorded_base(last: Manifest | None, job: BackupJob) -> str | None:
    """The base a write-only agent may extend, from ``last``, the manifest of its own
    last stored backup of the dataset (engine/backup/filecache.py): that backup if it is a full,
    else its parent; and only when the coordinator's parent for ``job`` is one of the
    two and the source is configured as it was.

    Anything else — no record (a new or lost state_dir), a parent this agent did not
    write (another host of the same dataset, or a backup after a fail-over), a source
    that changed (another server, another mode) — is a chain the agent cannot check,
    so a new base backup is taken: it costs one full copy, never a restore that fails."""
    if last is None or last.dataset != job.dataset or last.source != job.source:
        return None
    base_id = last.backup_id if last.backup_type == "full" else last.parent
    if base_id is None or job.parent_backup_id not in (last.backup_id, base_id):
        return None
    return base_id
