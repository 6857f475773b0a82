"""Sources: one module per kind. ``streams_of`` maps a stream source to its streams;
``after_restore`` lets a source turn restored streams into something usable (a data
directory from a base-backup tar)."""

from __future__ import annotations

from pathlib import Path

from agent.sources.base import Stream
from shared.messages import MariaDBSource, PostgresSource, RedisSource, Source, SystemSource


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
    raise TypeError(f"a {type(source).__name__} is walked, not streamed")


def after_restore(source: Source, destination: Path, *, partial: bool) -> None:
    if isinstance(source, PostgresSource) and not partial:
        from agent.sources import postgres

        postgres.after_restore(source, destination)
    if isinstance(source, MariaDBSource) and not partial:
        from agent.sources import mariadb

        mariadb.after_restore(source, destination)
