"""What a source gives the backup pipeline.

Two shapes: a directory source is walked (``engine.backup.walk``); every other source
(database dumps, RDB snapshots, volume exports) yields named byte **streams**, each stored
as one file of the backup's tree, so restore, verify and export treat them like files.
A stream is read once, chunked as it arrives (never staged on disk), and only counts as
good when its producer finished cleanly: :meth:`StreamHandle.finish` raises otherwise, so
a partial dump can never become a backup.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol


class StreamHandle(Protocol):
    reader: IO[bytes]

    def finish(self) -> None:
        """Wait for the producer; raise SourceError if it failed (the data is partial)."""

    def abort(self) -> None:
        """Stop the producer after an error elsewhere; never raises."""


class CompleteStream:
    """A StreamHandle over data that is whole before the first byte is read (a closed
    binlog, a spooled WAL file, bytes captured in full): nothing can fail after it was
    opened, so finishing and aborting both just close it."""

    def __init__(self, reader: IO[bytes]) -> None:
        self.reader = reader

    def finish(self) -> None:
        self.reader.close()

    abort = finish


def bytes_stream(data: bytes) -> CompleteStream:
    return CompleteStream(io.BytesIO(data))


@dataclass(frozen=True, slots=True)
class Stream:
    name: bytes  # path of the stream in the backup's tree, e.g. b"dump.rdb"
    open: Callable[[], StreamHandle]
