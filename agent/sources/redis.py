"""Redis: an RDB snapshot fetched over the replication protocol (``redis-cli --rdb -``),
plus the AOF files when the server has ``appendonly yes`` (and the source's ``aof``).

The server writes a consistent point-in-time snapshot for a replica and streams it; we
chunk it as it arrives. The password is never in a job or a config file: redis-cli reads
``REDISCLI_AUTH`` from the agent's environment. Restore puts ``dump.rdb`` into the
destination folder, ready for ``redis-server --dir DEST --dbfilename dump.rdb`` (and
``redis-check-rdb``).

AOF (Redis 7 multi-part: a manifest naming a base file and incr files in
``appenddirname``) is read from the server's own folder (``CONFIG GET dir``, or the
source's ``aof_dir`` where the agent sees it under another path), so the agent must run
on the Redis host. It is stored as ``appendonlydir/<files>`` beside ``dump.rdb``, so
``redis-server --appendonly yes --dir DEST`` loads it (with the source's
``--appendfilename`` when that is not the default ``appendonly.aof``).

Consistency without a BGREWRITEAOF: a rewrite per backup would make the server fork and
write its whole dataset again, on top of the RDB it already produces for us. Instead the
files are taken as they are: the manifest is read, every file it names is opened, then
the manifest is read again; if a rewrite replaced it meanwhile, we start over. An open
file stays readable even when a finished rewrite deletes it, and the base and all but
the last incr file never change, so the set is consistent. The last incr file is read up
to its size when opened; its final command may be cut in the middle of a write, which
``aof-load-truncated yes`` (Redis' default) drops on load, as after a crash.
"""

from __future__ import annotations

import io
import os
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

from agent.sources.command import STDERR_TAIL, CommandStream, require
from engine.backup.stream import CompleteStream, Stream, StreamHandle, bytes_stream
from shared.errors import SourceError
from shared.wire.sources import RedisSource

RDB = b"dump.rdb"
AOF_DIR = "appendonlydir"  # Redis' default appenddirname, what a restore starts with
SNAPSHOT_ATTEMPTS = 5


def _cli(src: RedisSource) -> list[str]:
    argv = ["redis-cli", "-h", src.host, "-p", str(src.port), "--no-auth-warning"]
    if src.user:
        argv += ["--user", src.user]
    return argv


def streams(src: RedisSource) -> list[Stream]:
    def open_rdb() -> StreamHandle:
        argv = [*_cli(src), "--rdb", "-"]
        return CommandStream(argv, f"redis-cli --rdb from {src.host}:{src.port}")

    out = [Stream(RDB, open_rdb)]
    if src.aof:
        out += _aof_streams(src)
    return out


def _config(src: RedisSource, *names: str) -> dict[str, str]:
    argv = [require("redis-cli"), *_cli(src)[1:], "CONFIG", "GET", *names]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    text = proc.stdout.decode(errors="replace").strip()
    lines = text.splitlines()
    # redis-cli exits 0 on a server error reply (NOAUTH, NOPERM, unknown command)
    if proc.returncode != 0 or len(lines) % 2 or text.startswith(("ERR", "NOAUTH", "NOPERM")):
        why = (proc.stderr.decode(errors="replace") + text).strip()[-STDERR_TAIL:]
        raise SourceError(
            f"redis at {src.host}:{src.port}: CONFIG GET {' '.join(names)} failed: "
            f"{why.replace(chr(10), ' | ') or 'no output'}; allow CONFIG for the backup "
            "user, or set aof = false in the source to back up the RDB only"
        )
    return dict(zip(lines[::2], lines[1::2], strict=True))


class _Limited(io.RawIOBase):
    """The first ``size`` bytes of an open file descriptor (owned: closed with us)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = os.readv(self._fd, [view[: min(len(view), self._left)]])
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _parse_manifest(text: str, path: Path) -> list[tuple[str, str]]:
    """(file name, type) of the live files: base ``b`` and incr ``i``, in order; history
    files (``h``, waiting for deletion) are left out."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        info = dict(zip(fields[::2], fields[1::2], strict=False))
        name, kind = info.get("file", ""), info.get("type", "")
        if not name or "/" in name or name.startswith(".") or kind not in "bih":
            raise SourceError(f"AOF manifest {path}: unexpected line {line!r}")
        if kind != "h":
            out.append((name, kind))
    if not out:
        raise SourceError(f"AOF manifest {path} names no base or incr file")
    return out


def _read(path: Path, where: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise SourceError(
            f"AOF manifest {path} of redis at {where} is not on this host: run the agent on "
            "the Redis host, set aof_dir to where the server's dir is mounted, or set "
            "aof = false"
        ) from None
    except OSError as exc:
        raise SourceError(f"cannot read AOF manifest {path}: {exc.strerror}") from exc


def _aof_streams(src: RedisSource) -> list[Stream]:
    where = f"{src.host}:{src.port}"
    cfg = _config(src, "appendonly", "dir", "appenddirname", "appendfilename")
    if cfg.get("appendonly") != "yes":
        return []
    if "appenddirname" not in cfg:
        raise SourceError(
            f"redis at {where} keeps a single-file AOF (Redis before 7), which this source "
            "does not read: set aof = false (the RDB snapshot is still backed up)"
        )
    folder = Path(src.aof_dir or cfg["dir"]) / cfg["appenddirname"]
    manifest_name = f"{cfg.get('appendfilename', 'appendonly.aof')}.manifest"
    manifest = folder / manifest_name
    for _ in range(SNAPSHOT_ATTEMPTS):
        text = _read(manifest, where)
        opened: list[tuple[str, int, int]] = []
        try:
            for name, _kind in _parse_manifest(text, manifest):
                fd = os.open(folder / name, os.O_RDONLY | os.O_CLOEXEC)
                opened.append((name, fd, os.fstat(fd).st_size))
        except FileNotFoundError:  # a rewrite finished between the two reads: again
            for _, fd, _ in opened:
                os.close(fd)
            continue
        except OSError as exc:
            for _, fd, _ in opened:
                os.close(fd)
            raise SourceError(f"cannot read AOF files in {folder}: {exc.strerror}") from exc
        if _read(manifest, where) == text:
            break
        for _, fd, _ in opened:
            os.close(fd)
    else:
        raise SourceError(
            f"AOF of redis at {where} in {folder} kept changing (a rewrite every moment?): "
            "run the backup again"
        )
    out = [Stream(f"{AOF_DIR}/{manifest_name}".encode(), partial(bytes_stream, text.encode()))]
    # Each stream owns its descriptor; the ones never reached when a backup fails
    # early are closed when the stream list is dropped (see _Descriptors).
    keeper = _Descriptors([fd for _, fd, _ in opened])
    for name, fd, size in opened:
        out.append(Stream(f"{AOF_DIR}/{name}".encode(), partial(keeper.handle, fd, size)))
    return out


class _Descriptors:
    """Closes the snapshot's descriptors no stream took over (a backup that failed
    before reaching them); descriptors handed to a stream are closed by it."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = set(fds)

    def handle(self, fd: int, size: int) -> StreamHandle:
        self._fds.discard(fd)
        return CompleteStream(io.BufferedReader(_Limited(fd, size)))  # opened at snapshot time

    def __del__(self) -> None:
        for fd in self._fds:
            os.close(fd)
