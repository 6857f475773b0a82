"""Commands inside containers: an application's own backup (``gitea dump``, ``php
artisan backup:run``, ``manage.py dumpdata``) run in a running container.

Either the command's stdout is the stream (stderr is kept apart, its tail for errors), or
``output`` names the file it writes, fetched with the archive API once the command
exited 0 (a folder is stored as its tar). A non-zero exit fails the job with the tail of
the command's stderr, and partial output never becomes a backup. Errors name the
program, never its arguments (they may hold passwords).
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from agent.sources.command import STDERR_TAIL
from agent.sources.dockerapi import (
    READ_TIMEOUT_S,
    TAR_END,
    Pieces,
    archive,
    connect,
    get_container,
    reason,
)
from engine.backup.stream import Stream, StreamHandle
from shared.errors import MosaicError, SourceError
from shared.wire.sources import DockerExecSource

STREAM_NAME = re.compile(r"^[A-Za-z0-9_.@+-][A-Za-z0-9_.@+/-]*$")

STDERR = 2  # stream id in the daemon's multiplexed output (1 is stdout)


def _read_exactly(raw: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        more = raw.read(n - len(buf))
        if not more:
            break
        buf += more
    return buf


def _exec_start(
    client: Any, exec_id: str, what: str
) -> tuple[Iterator[tuple[int, bytes]], Callable[[], None]]:
    """``POST /exec/ID/start``: the command's multiplexed stdout/stderr as (stream id,
    bytes) frames, and a function that closes the connection (the SDK's streams cannot be
    closed without leaking the socket)."""
    api = client.api
    url = f"{api.base_url}/v{api.api_version}/exec/{exec_id}/start"
    try:
        res = api.post(
            url, json={"Detach": False, "Tty": False}, stream=True, timeout=READ_TIMEOUT_S
        )
    except Exception as exc:
        raise SourceError(f"{what} failed: {reason(exc)}") from exc
    if res.status_code != 200:
        res.close()
        raise SourceError(f"{what} failed: the docker daemon answered {res.status_code}")

    def frames() -> Iterator[tuple[int, bytes]]:
        while True:
            header = _read_exactly(res.raw, 8)
            if not header:
                return
            size = int.from_bytes(header[4:8], "big")
            data = _read_exactly(res.raw, size)
            if len(header) < 8 or len(data) < size:
                raise SourceError(f"{what}: the output stream broke off")
            yield header[0], data

    return frames(), res.close


class ExecStream:
    """A command in a container: its stdout, or the file it wrote, as the stream."""

    def __init__(self, src: DockerExecSource) -> None:
        if not src.command:
            raise SourceError(f"docker_exec source for {src.container!r}: command is empty")
        self.what = f"backup command {src.command[0]!r} in container {src.container}"
        self._client = connect(src.docker_url)
        self._stderr = b""
        self._stdout_tail = b""
        self._pieces: Pieces | None = None
        self._file: Any = None
        try:
            container = get_container(self._client, src.container, src.docker_url, "container")
            if container.status != "running":
                raise SourceError(
                    f"container {src.container!r} is {container.status}, not running: "
                    "start it before the backup"
                )
            api = self._client.api
            self._exec_id = api.exec_create(
                container.id, src.command, stdout=True, stderr=True, user=src.user or ""
            )["Id"]
            frames, close = _exec_start(self._client, self._exec_id, self.what)
            self._stdout_mode = src.output is None
            if src.output is None:
                self._pieces = Pieces(self._stdout_of(frames), self.what, close)
                self.reader: IO[bytes] = io.BufferedReader(self._pieces, 1 << 20)
            else:
                try:
                    for out in self._stdout_of(frames):
                        self._stdout_tail = (self._stdout_tail + out)[-STDERR_TAIL:]
                finally:
                    close()
                self._check_exit()
                self.reader = self._fetch(container, src.output)
        except BaseException as exc:
            self._close()
            if isinstance(exc, Exception) and not isinstance(exc, MosaicError):
                raise SourceError(f"{self.what} failed: {reason(exc)}") from exc
            raise

    def _stdout_of(self, frames: Iterator[tuple[int, bytes]]) -> Iterator[bytes]:
        """The stdout frames; the stderr ones are kept (their tail) for the error."""
        for stream_id, data in frames:
            if stream_id == STDERR:
                self._stderr = (self._stderr + data)[-STDERR_TAIL:]
            elif data:
                yield data

    def _check_exit(self) -> None:
        deadline = time.monotonic() + 30
        info = self._client.api.exec_inspect(self._exec_id)
        while info["Running"] and time.monotonic() < deadline:  # output ends just before
            time.sleep(0.05)
            info = self._client.api.exec_inspect(self._exec_id)
        code = info["ExitCode"]
        if info["Running"] or code != 0:
            tail = (self._stderr or self._stdout_tail).decode(errors="replace").strip()
            tail = tail[-STDERR_TAIL:].replace("\n", " | ") or "no error output"
            raise SourceError(f"{self.what} failed (exit {code}): {tail}")

    def _fetch(self, container: Any, output: str) -> IO[bytes]:
        """The file ``output`` as a stream (a folder comes as its tar)."""
        pieces = archive(self._client, container.id, output, f"{self.what}: fetching {output}")
        if pieces is None:
            raise SourceError(
                f"{self.what} succeeded but wrote no {output}: check 'output' in the source"
            )
        self._pieces = pieces
        if int(pieces.stat.get("mode", 0)) & (1 << 31):  # Go's os.ModeDir: the tar as it is
            return io.BufferedReader(pieces, 1 << 20)
        tar = tarfile.open(fileobj=self._pieces, mode="r|")
        self._file = tar
        member = tar.next()
        if member is None or not member.isfile():
            raise SourceError(f"{self.what}: {output} is not a regular file")
        handle = tar.extractfile(member)
        assert handle is not None
        return handle

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._pieces is not None:
            self._pieces.close()  # ends the HTTP stream: the daemon stops sending
        self._client.close()

    def finish(self) -> None:
        pieces = self._pieces
        assert pieces is not None
        try:
            if self.reader.read(1) or (self._file is None and not pieces.eof):
                raise SourceError(f"{self.what}: output was not read to the end")
            if self._stdout_mode:
                self._check_exit()
            elif self._file is None and pieces.tail != TAR_END:
                raise SourceError(f"{self.what}: the archive of the output ended early")
        finally:
            self._close()

    def abort(self) -> None:
        self._close()


def _stream_name(src: DockerExecSource) -> str:
    name = src.stream_name
    if name is None:
        name = posixpath.basename(src.output.rstrip("/")) if src.output else ""
        name = name or f"{src.container}.out"
    if not STREAM_NAME.match(name) or ".." in name.split("/"):
        raise SourceError(
            f"docker_exec stream_name {name!r} is not a safe file name: use letters, "
            "digits and _.-@+ (and / between folders)"
        )
    return name


def streams(src: DockerExecSource) -> list[Stream]:
    name = _stream_name(src)

    def open_exec() -> StreamHandle:
        return ExecStream(src)

    return [Stream(name.encode(), open_exec)]
