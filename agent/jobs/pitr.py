"""Restore of a database source to its latest archived state or to a point in time.

A restore goes through here (instead of a plain tree restore) when a point in time is
asked for, or when the chosen backup is a log backup (see :mod:`engine.logchain`). Then:

1. the chain is resolved: the base (full) backup at the root of the chosen backup's
   parents, and the log backups of the dataset taken since that base started; with a
   point in time, every such log backup (recovery stops at the instant itself) after
   :func:`~engine.logchain.check_point_in_time` accepted it; without one, the log
   backups up to the chosen one (the state as of that backup);
2. the base is restored into ``DEST`` as usual (the source's ``after_restore`` runs, so
   ``DEST`` holds e.g. ``pgdata/``);
3. every file of every log backup is gathered into ``DEST/<LOG_DIR>``, flat: a file
   stored as ``wal/000000010000000000000003`` lands as ``LOG_DIR/000000010000000000000003``;
   a name stored by several log backups (archived logs are immutable) is written once
   per backup, last one wins;
4. the source's ``recover`` prepares the restored server to replay them.

Contract of a source module (``agent.sources.<kind>``) that supports this:

- ``LOG_DIR: str`` — the folder under the destination for the gathered logs (default
  ``"logs"``);
- ``recover(src, destination: Path, log_dir: Path, pitr: datetime | None) -> None`` —
  runs in a worker thread after steps 1–3. With ``pitr`` None, make the restored server
  replay everything in ``log_dir`` (the latest archived state); otherwise stop at
  ``pitr`` (aware, UTC) and leave the server ready to open. Raise a one-line
  :class:`~shared.errors.SourceError` when that is impossible.

PostgreSQL (:func:`agent.sources.postgres.recover`) only configures recovery: the
restored server replays the logs at its first start. MariaDB has no such mode, so
:func:`agent.sources.mariadb_binlogs.recover` replays the binary logs into a throwaway server
on the prepared data directory (private socket, no TCP) and stops it before returning.
Dispatch is by source kind in :func:`_recovery_module`.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import anyio.to_thread

from agent.sources import archives_logs, restore_backup
from engine.format.manifest import Manifest
from engine.logchain import ChainError, base_of, check_point_in_time, log_backups
from engine.progress import ProgressFn, no_progress
from engine.repository import Repository
from engine.restore.tree import restore_tree
from shared.wire.sources import MariaDBSource, PostgresSource, Source


def _recovery_module(source: Source) -> ModuleType | None:
    if isinstance(source, PostgresSource) and source.mode == "basebackup":
        from agent.sources import postgres

        return postgres
    if isinstance(source, MariaDBSource) and source.mode == "mariabackup":
        from agent.sources import mariadb_binlogs

        return mariadb_binlogs
    return None


def needs_logs(manifest: Manifest, pitr: datetime | None, paths: list[str]) -> bool:
    """Whether restoring ``manifest`` goes through the log chain (refuses what cannot)."""
    is_log = manifest.backup_type == "incremental" and archives_logs(manifest.source)
    if pitr is None and not is_log:
        return False
    what = f"backup {manifest.backup_id} of dataset '{manifest.dataset}'"
    if _recovery_module(manifest.source) is None:
        kind = type(manifest.source).__name__.removesuffix("Source").lower()
        raise ChainError(
            f"{what} is a {kind} backup: point-in-time restore needs a PostgreSQL "
            "basebackup or MariaDB mariabackup dataset; drop --pitr"
        )
    if paths:
        raise ChainError(
            f"{what}: a point-in-time or log restore brings back the whole server; drop --path"
        )
    return True


def _gather(scratch: Path, log_dir: Path) -> None:
    """Move every file restored into ``scratch`` into ``log_dir`` (flat), then drop it."""
    for dirpath, _, names in os.walk(scratch):
        for name in names:
            os.replace(os.path.join(dirpath, name), log_dir / name)
    shutil.rmtree(scratch)


async def restore_with_logs(
    repo: Repository,
    manifest: Manifest,
    destination: Path,
    pitr: datetime | None,
    report: ProgressFn = no_progress,
) -> tuple[int, int]:
    """Base, then logs, then the source's ``recover``; returns (files, bytes written)."""
    module = _recovery_module(manifest.source)
    assert module is not None  # needs_logs checked it
    if pitr is not None and pitr.tzinfo is None:
        pitr = pitr.replace(tzinfo=UTC)
    base = await base_of(repo, manifest)
    logs = await log_backups(repo, base)
    if pitr is None:
        upto = (manifest.started_at, manifest.backup_id)
        logs = [m for m in logs if (m.started_at, m.backup_id) <= upto]
    else:
        check_point_in_time(base, logs, pitr)
    files, nbytes = await restore_backup(repo, base, destination, report=report)
    log_dir = destination / str(getattr(module, "LOG_DIR", "logs"))
    await anyio.to_thread.run_sync(lambda: log_dir.mkdir(mode=0o700))
    for i, m in enumerate(logs):
        scratch = destination / f".mosaic-log-{i}"
        f, n = await restore_tree(repo, m, scratch, report=report)
        await anyio.to_thread.run_sync(_gather, scratch, log_dir)
        files, nbytes = files + f, nbytes + n
    await anyio.to_thread.run_sync(module.recover, manifest.source, destination, log_dir, pitr)
    return files, nbytes
