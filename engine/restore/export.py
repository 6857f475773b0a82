"""Export a backup as a plain tar stream: the way out that needs no mosaic-backup.

A backup locked in a private format is a risk of its own; a POSIX (PAX) tar is readable
by every system's ``tar`` for decades. Export writes one, optionally zstd-compressed,
straight to a file or stdout: directories, regular files, symlinks, modes, owners and
nanosecond mtimes (as PAX ``mtime`` records, which GNU and BSD tar apply).

Memory stays at about one chunk: ``tarfile`` runs in a worker thread and reads each file
through :class:`ChunkReader`, which fetches one blob at a time from the event loop
(every blob authenticated and re-hashed, as in a restore). The tree passes the restore's
path checks first, so an archive never holds a path a restore would refuse. On an error
that stops it the archive is left without its end-of-archive blocks, so it never looks
complete. Damaged content does not stop it: a chunk that fails is written as zeros (the
tar header already promised its size), every range is listed in a last member
``MOSAIC-DAMAGED.txt`` and the export ends with PartialRestoreError (nonzero exit).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from typing import IO

import anyio.from_thread
import anyio.to_thread
import zstandard

from engine.backup.walk import shown_names
from engine.format.manifest import Manifest, Node
from engine.progress import Progress, ProgressFn, no_progress
from engine.repository import Repository
from engine.restore.tree import check_paths
from shared.errors import IntegrityError, PartialRestoreError, TargetError

Fetch = Callable[[bytes], bytes]
DAMAGE_MEMBER = "MOSAIC-DAMAGED.txt"


class ChunkReader:
    """A read-only file over a node's chunks, for ``TarFile.addfile`` (blocking side).

    Returns exactly the bytes asked for until the file ends, and raises
    :class:`IntegrityError` when the chunks hold fewer or more bytes than the manifest says.
    """

    def __init__(
        self,
        node: Node,
        fetch: Fetch,
        where: str,
        length: Callable[[bytes], int | None] | None = None,
        damage: list[str] | None = None,
    ) -> None:
        self._chunks = iter(node.chunks)
        self._fetch = fetch
        self._buf = memoryview(b"")
        self._size = node.size
        self._done = 0
        self._where = where
        # With ``damage``, a chunk that fails is replaced by zeros of its length (from
        # ``length``; unknown → zeros to the end) and recorded, so the archive goes on.
        self._length = length
        self._damage = damage
        self._pos = 0  # offset in the file of the next chunk

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
                except (IntegrityError, TargetError) as exc:  # say whose data it was
                    if self._damage is None:
                        raise IntegrityError(f"{exc} (part of {self._where})") from None
                    self._buf = memoryview(self._zeros(chunk_id, exc))
                self._pos += len(self._buf)
                continue
            take = self._buf[: want - len(out)]
            out += take
            self._buf = self._buf[len(take) :]
        self._done += len(out)
        if self._done > self._size or (len(out) < want and self._done < self._size):
            raise self._mismatch()
        return bytes(out)

    def _zeros(self, chunk_id: bytes, exc: Exception) -> bytes:
        assert self._damage is not None
        n = self._length(chunk_id) if self._length is not None else None
        if n is None:  # its length is unknown: nothing after it can be placed
            n = max(self._size - self._pos, 0)
            self._chunks = iter(())
            self._damage.append(f"{self._where}: from byte {self._pos:,} zeros ({exc})")
        else:
            self._damage.append(
                f"{self._where}: bytes {self._pos:,}–{self._pos + n - 1:,} zeros ({exc})"
            )
        return bytes(n)

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
    length: Callable[[bytes], int | None] | None = None,
    damage: list[str] | None = None,
) -> None:
    """Write the whole archive (blocking; run in a worker thread); ``name`` shows a
    stored path in an error (secret files as ``<secret>``). With ``damage`` a damaged
    chunk becomes zeros and a line there (and in a last member, DAMAGE_MEMBER)."""
    sink: IO[bytes] = out
    compressor = None
    if zstd:
        compressor = zstandard.ZstdCompressor().stream_writer(out, closefd=False)
        sink = compressor
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for node in nodes:
            if node.type == "file":
                reader = ChunkReader(node, fetch, f"{where}: {name(node.path)}", length, damage)
                tar.addfile(tar_info(node), reader)
                reader.finish()
            else:
                tar.addfile(tar_info(node))
            # tarfile keeps every member written (undocumented list); a stream needs none.
            tar.members.clear()  # type: ignore[attr-defined]
        if damage:
            # the archive says it too, at its end: those members hold zeros where lost
            text = ("\n".join(["mosaic-backup export: damaged content", *damage]) + "\n").encode()
            info = tarfile.TarInfo(DAMAGE_MEMBER)
            info.size, info.mode = len(text), 0o644
            tar.addfile(info, io.BytesIO(text))
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

    def length(chunk_id: bytes) -> int | None:
        e = repo.index.get(chunk_id)
        return None if e is None else e.raw_length

    where = f"backup {manifest.backup_id}"
    damage: list[str] = []
    await repo.find_missing([c for n in files for c in n.chunks])
    await anyio.to_thread.run_sync(write_tar, out, nodes, fetch, where, zstd, name, length, damage)
    if damage:
        raise PartialRestoreError(
            f"export of backup {manifest.backup_id}: {len(damage)} damaged range(s) written "
            f"as zeros (listed in the archive's {DAMAGE_MEMBER}): {damage[0]}",
            damage,
            f"export of backup {manifest.backup_id}: {len(damage)} damaged range(s) written "
            f"as zeros, listed above and in the archive's {DAMAGE_MEMBER}",
        )
    return len(files), progress.bytes_done
