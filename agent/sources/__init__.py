"""Sources: one module per kind. ``streams_of`` maps a stream source to its streams;
``after_restore`` lets a source turn restored streams into something usable (a data
directory from a base-backup tar). The engine knows no source kinds: the agent hands it
streams (:func:`streams_for`) and runs the source's step after a restore
(:func:`restore_backup`)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import anyio.to_thread

from engine.backup.stream import Stream
from engine.format.manifest import Manifest
from engine.progress import ProgressFn, no_progress
from engine.repository import Repository
from engine.restore.tree import DamagedFiles, restore_tree
from shared.wire.sources import (
    DockerExecSource,
    DockerVolumeSource,
    FilesSource,
    MariaDBSource,
    PostgresSource,
    RedisSource,
    Source,
    SystemSource,
)


def streams_of(source: Source) -> list[Stream]:
    if isinstance(source, RedisSource):
        from agent.sources import redis

        return redis.streams(source)
    if isinstance(source, PostgresSource):
        from agent.sources import postgres

        return postgres.streams(source)
    if isinstance(source, MariaDBSource):
        from agent.sources import mariadb

        return mariadb.streams(source)
    if isinstance(source, SystemSource):
        from agent.sources import system

        return system.streams(source)
    if isinstance(source, DockerVolumeSource | DockerExecSource):
        from agent.sources import docker

        return docker.streams(source)
    raise TypeError(f"a {type(source).__name__} is walked, not streamed")


def streams_for(source: Source) -> list[Stream] | None:
    """What the engine backs up of ``source``: its streams, or None for a tree it walks."""
    return None if isinstance(source, FilesSource) else streams_of(source)


def after_restore(source: Source, destination: Path, *, partial: bool) -> None:
    if isinstance(source, PostgresSource) and not partial:
        from agent.sources import postgres

        postgres.after_restore(source, destination)
    if isinstance(source, MariaDBSource) and not partial:
        from agent.sources import mariadb

        mariadb.after_restore(source, destination)


class LogShipment(Protocol):
    """The archived log files one log backup stores (see engine.logchain)."""

    streams: list[Stream]
    lag_s: float | None  # age of the oldest log file shipped, in seconds

    def shipped(self) -> None:
        """Called once the backup's manifest is stored: drop the files from the spool."""


def archives_logs(source: Source) -> bool:
    """Whether an incremental backup of ``source`` is a log backup (archived logs)."""
    if isinstance(source, PostgresSource):
        from agent.sources import postgres

        return postgres.archives_logs(source)
    if isinstance(source, MariaDBSource):
        return source.mode == "mariabackup"
    return False


def ship_logs(source: Source) -> LogShipment:
    """Close the current log file and list what is archived (blocking: run in a thread)."""
    if isinstance(source, PostgresSource):
        from agent.sources import postgres

        return postgres.ship_wal(source)
    if isinstance(source, MariaDBSource):
        from agent.sources import mariadb_binlogs

        return mariadb_binlogs.ship_binlogs(source)
    raise TypeError(f"a {type(source).__name__} has no archived logs")


async def restore_backup(
    repo: Repository,
    manifest: Manifest,
    destination: str | Path,
    *,
    include: list[str] | None = None,
    report: ProgressFn = no_progress,
    damaged: DamagedFiles = "rename",
) -> tuple[int, int]:
    """Restore the tree, then let the source make it usable (e.g. a PostgreSQL data
    directory from the base-backup tar). Returns (files, bytes written). A restore
    with damaged files raises before the source's step: a database is never started
    from a half-restored data directory."""
    result = await restore_tree(
        repo, manifest, destination, include=include, report=report, damaged=damaged
    )
    await anyio.to_thread.run_sync(
        lambda: after_restore(manifest.source, Path(destination), partial=bool(include))
    )
    return result
