"""Sources: one module per kind. ``streams_of`` maps a stream source to its streams."""

from __future__ import annotations

from agent.sources.base import Stream
from shared.messages import FilesSource, Source


def streams_of(source: Source) -> list[Stream]:
    if isinstance(source, FilesSource):
        raise TypeError("a files source is walked, not streamed")
    from agent.sources import redis

    return redis.streams(source)
