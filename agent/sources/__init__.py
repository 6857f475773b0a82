"""Sources: one module per kind. ``streams_of`` maps a stream source to its streams;
``after_restore`` lets a source turn restored streams into something usable (a data
directory from a base-backup tar)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from agent.sources.base import Stream
from shared.sources import (
    DockerExecSource,
    DockerVolumeSource,
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


def after_restore(source: Source, destination: Path, *, partial: bool) -> None:
    if isinstance(source, PostgresSource) and not partial:
        from agent.sources import postgres

        postgres.after_restore(source, destination)
    if isinstance(source, MariaDBSource) and not partial:
        from agent.sources import mariadb

        mariadb.after_restore(source, destination)


class LogShipment(Protocol):
    """The archived log files one log backup stores (see agent.logchain)."""

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
        from agent.sources import mariadb

        return mariadb.ship_binlogs(source)
    raise TypeError(f"a {type(source).__name__} has no archived logs")
