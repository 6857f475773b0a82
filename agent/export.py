"""Export a backup as a plain tar stream: the way out that needs no mosaic-backup.

A backup locked in a private format is a risk of its own; a POSIX (PAX) tar is readable
by every system's ``tar`` for decades. Export writes one, optionally zstd-compressed,
straight to a file or stdout: directories, regular files, symlinks, modes, owners and
nanosecond mtimes (as PAX ``mtime`` records, which GNU and BSD tar apply).

Memory stays at about one chunk: ``tarfile`` runs in a worker thread and reads each file
through :class:`ChunkReader`, which fetches one blob at a time from the event loop
(every blob authenticated and re-hashed, as in a restore). The tree passes the restore's
path checks first, so an archive never holds a path a restore would refuse. On error
the archive is left without its end-of-archive blocks, so it never looks complete.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from typing import IO

import anyio.from_thread
import anyio.to_thread
import zstandard

from agent.progress import Progress, ProgressFn, no_progress
from agent.restore import check_paths
from agent.sources.files import shown_names
from shared.errors import IntegrityError
from shared.repository.manifest import Manifest, Node
from shared.repository.repository import Repository

Fetch = Callable[[bytes], bytes]


class ChunkReader:
    """A read-only file over a node's chunks, for ``TarFile.addfile`` (blocking side).

    Returns exactly the bytes asked for until the file ends, and raises
    :class:`IntegrityError` when the chunks hold fewer or more bytes than the manifest says.
    """

    def __init__(self, node: Node, fetch: Fetch, where: str) -> None:
        self._chunks = iter(node.chunks)
        self._fetch = fetch
        self._buf = memoryview(b"")
        self._size = node.size
        self._done = 0
        self._where = where

    def read(self, n: int = -1, /) -> bytes:
        want = self._size - self._done if n < 0 else n
        out = bytearray()
        while len(out) < want:
            if not self._buf:
                chunk_id = next(self._chunks, None)
                if chunk_id is None:
                    break
                try:
                    self._buf = memoryview(self._fetch(chunk_id))
                except IntegrityError as exc:  # say whose data it was, like restore does
                    raise IntegrityError(f"{exc} (part of {self._where})") from None
                continue
            take = self._buf[: want - len(out)]
            out += take
            self._buf = self._buf[len(take) :]
        self._done += len(out)
        if self._done > self._size or (len(out) < want and self._done < self._size):
            raise self._mismatch()
        return bytes(out)

    def finish(self) -> None:
        """After the copy: no data may be left over."""
        if self._buf or next(self._chunks, None) is not None:
            raise self._mismatch()

    def _mismatch(self) -> IntegrityError:
        return IntegrityError(
            f"{self._where}: its chunks do not hold the {self._size} bytes the manifest says"
        )


def _pax_mtime(ns: int) -> str:
    sec, frac = divmod(abs(ns), 10**9)
    return f"{'-' if ns < 0 else ''}{sec}.{frac:09d}"


def tar_info(node: Node) -> tarfile.TarInfo:
    info = tarfile.TarInfo(os.fsdecode(node.path))
    info.type = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
    }[node.type]
    info.mode = node.mode & 0o7777
    info.uid, info.gid = node.uid, node.gid
    info.mtime = node.mtime_ns // 10**9
    # Exact mtime; the header field only holds whole seconds (an existing PAX record wins).
    info.pax_headers = {"mtime": _pax_mtime(node.mtime_ns)}
    if node.type == "file":
        info.size = node.size
    elif node.type in ("symlink", "hardlink"):
        info.linkname = os.fsdecode(node.target)
    return info


def write_tar(
    out: IO[bytes],
    nodes: list[Node],
    fetch: Fetch,
    where: str,
    zstd: bool,
    name: Callable[[bytes], str] = os.fsdecode,
) -> None:
    """Write the whole archive (blocking; run in a worker thread); ``name`` shows a
    stored path in an error (secret files as ``<secret>``)."""
    sink: IO[bytes] = out
    compressor = None
    if zstd:
        compressor = zstandard.ZstdCompressor().stream_writer(out, closefd=False)
        sink = compressor
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for node in nodes:
            if node.type == "file":
                reader = ChunkReader(node, fetch, f"{where}: {name(node.path)}")
                tar.addfile(tar_info(node), reader)
                reader.finish()
            else:
                tar.addfile(tar_info(node))
            # tarfile keeps every member written (undocumented list); a stream needs none.
            tar.members.clear()  # type: ignore[attr-defined]
    if compressor is not None:
        compressor.flush(zstandard.FLUSH_FRAME)  # ends the zstd frame
    out.flush()


async def export_tar(
    repo: Repository,
    manifest: Manifest,
    out: IO[bytes],
    *,
    zstd: bool = False,
    report: ProgressFn = no_progress,
) -> tuple[int, int]:
    """Write ``manifest``'s tree to ``out`` as a tar; return (files, file bytes)."""
    nodes = await repo.read_tree(manifest)
    name = shown_names(manifest.source)
    check_paths(nodes, manifest.backup_id, name)
    files = [n for n in nodes if n.type == "file"]
    progress = Progress(bytes_total=sum(n.size for n in files), files_total=len(files))

    async def read(chunk_id: bytes) -> bytes:
        data = await repo.read_blob(chunk_id)
        progress.bytes_done += len(data)
        await report(progress)
        return data

    def fetch(chunk_id: bytes) -> bytes:
        anyio.from_thread.check_cancelled()  # Ctrl-C stops the export between chunks
        return anyio.from_thread.run(read, chunk_id)

    where = f"backup {manifest.backup_id}"
    await anyio.to_thread.run_sync(write_tar, out, nodes, fetch, where, zstd, name)
    return len(files), progress.bytes_done
