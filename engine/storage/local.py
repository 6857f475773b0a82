"""Local-disk target: one file per key under a root folder.

Writes go to a temporary file in the destination folder, are fsynced, then renamed over
the final name and the folder is fsynced, so a crash leaves the old object or the new
one, never a torn file. Blocking file I/O runs in worker threads.

Append-only (``append_only = true``): the agent never deletes or replaces an object. A
write is an unnamed ``O_TMPFILE`` linked into place (``linkat``), which refuses an
existing name and leaves no temporary name to remove, so it also works inside folders
with the ``chattr +a`` attribute (names can be added, never removed or renamed over),
which :func:`prepare_append_only` sets on the repository's folders. A full-rights target
on such folders (the maintenance agent, which needs CAP_LINUX_IMMUTABLE) lifts the
attribute of one folder around each delete.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import fcntl
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from engine.format import spec as fmt
from engine.storage.base import Capabilities, ObjectInfo, SpaceInfo, TemporaryInfo, check_key
from shared.errors import ObjectNotFound, TargetError, TargetUnavailable

_LIMIT = anyio.CapacityLimiter(8)
T = TypeVar("T")

_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_APPEND_FL = 0x20
_libc = ctypes.CDLL(None, use_errno=True)
# Lifting chattr +a for one delete or replace must not interleave with another thread's
# restore of it (deletes run in parallel worker threads).
_ATTR_LOCK = threading.Lock()


def repository_folders() -> list[str]:
    """Every folder a repository uses (relative), so they can exist before an
    append-only writer that may not create or change folders arrives."""
    out = [p.rstrip("/") for p in (fmt.KEYS_PREFIX, fmt.INDEX_PREFIX, fmt.MANIFESTS_PREFIX)]
    out += [fmt.LOCKS_PREFIX.rstrip("/"), fmt.DATA_PREFIX.rstrip("/")]
    out += [f"{fmt.DATA_PREFIX}{i:02x}" for i in range(256)]
    return out


def _flags(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        raw = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("i", 0))
        return int(struct.unpack("i", raw)[0])
    finally:
        os.close(fd)


def _set_flags(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags))
    finally:
        os.close(fd)


def set_append_attribute(path: Path, on: bool = True) -> None:
    """``chattr +a`` (or ``-a``) on a folder; needs CAP_LINUX_IMMUTABLE."""
    flags = _flags(path)
    _set_flags(path, flags | _FS_APPEND_FL if on else flags & ~_FS_APPEND_FL)


def has_append_attribute(path: Path) -> bool:
    try:
        return bool(_flags(path) & _FS_APPEND_FL)
    except OSError:
        return False  # a file system without attributes


def prepare_append_only(root: Path, *, chattr: bool = True) -> list[Path]:
    """Create the repository's folders under ``root`` and, with ``chattr``, give each
    (root included) the append-only attribute. Run by the full-rights side, once; the
    agent then adds objects and can remove none. Returns the folders made append-only."""
    folders = [root, *(root / f for f in repository_folders())]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    if not chattr:
        return []
    for folder in folders:
        try:
            set_append_attribute(folder)
        except OSError as exc:
            why = "needs root with CAP_LINUX_IMMUTABLE and ext4, xfs or btrfs"
            raise TargetError(
                f"local:{root}: cannot set the append-only attribute on {folder}: "
                f"{exc.strerror} ({why})",
                retryable=False,
            ) from exc
    return folders


def _link_new(data: bytes, folder: Path, path: Path) -> bool:
    """Write ``data`` into an unnamed file in ``folder`` and link it as ``path``;
    False when ``path`` exists. No temporary name ever exists."""
    fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
        os.fsync(fd)
        src = f"/proc/self/fd/{fd}".encode()
        if _libc.linkat(_AT_FDCWD, src, _AT_FDCWD, os.fsencode(path), _AT_SYMLINK_FOLLOW) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def _size(n: int) -> str:
    """Bytes for messages, in binary units (``64 MiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}".replace(".0 ", " ")
        value /= 1024
    raise AssertionError("unreachable")


def _writing(data: bytes) -> str:
    return f"writing {_size(len(data))} to"


def _fsync_dir(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class LocalTarget:
    def __init__(
        self, name: str, root: str | Path, *, create: bool = True, append_only: bool = False
    ) -> None:
        self.name = name
        self.root = Path(root)
        self._create = create
        self.append_only = append_only
        self.capabilities = Capabilities(append_only=append_only, local_disk=True)

    def describe(self) -> str:
        return f"local:{self.root}"

    def _refuse(self, what: str, key: str) -> TargetError:
        return TargetError(
            f"{self.describe()}: append-only target {self.name!r} refuses to {what} {key!r} "
            f"(targets.{self.name}.append_only = true: only the maintenance agent's prune, "
            "with a full-rights target, deletes)",
            retryable=False,
        )

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    async def _run(self, fn: Callable[..., T], *args: object, doing: str = "", key: str = "") -> T:
        """Run ``fn`` in a worker thread; OSErrors become shared errors that say what
        was being done to which key (``doing``, ``key``) when the OS names no file."""
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=_LIMIT)
        except ObjectNotFound:
            raise
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{self.describe()}: {exc.filename} not found") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise await self._full(exc, doing, key) from exc
            retry = exc.errno in (errno.EAGAIN, errno.EINTR, errno.EBUSY)
            cls = TargetUnavailable if exc.errno in (errno.EACCES, errno.EROFS) else TargetError
            where = exc.filename or " ".join(w for w in (doing, key) if w) or None
            text = f"{exc.strerror} ({where})" if where else str(exc.strerror or exc)
            raise cls(f"{self.describe()}: {text}", retryable=retry) from exc

    async def _full(self, exc: OSError, doing: str, key: str) -> TargetError:
        """One line for a full disk or quota: the target, the key, and the free space."""
        try:
            usage = await anyio.to_thread.run_sync(shutil.disk_usage, self._existing_root())
            room = f" (free {_size(usage.free)} of {_size(usage.total)})"
        except OSError:
            room = ""
        what = "quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device"
        action = f" {doing} {key}" if doing and key else ""
        return TargetError(
            f"local target {self.name!r} at {self.root}: {what}{action}{room}", retryable=False
        )

    def _existing_root(self) -> Path:
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return probe

    def _ensure_root(self) -> None:
        if self.root.is_dir():
            return
        if not self._create:
            raise TargetUnavailable(f"{self.describe()}: folder does not exist")
        self.root.mkdir(parents=True, exist_ok=True)

    def _store(self, key: str, data: bytes, exclusive: bool) -> bool:
        self._ensure_root()
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.append_only:
            return self._store_new(key, path, data, exclusive)
        if has_append_attribute(path.parent):  # full rights on chattr +a folders
            if _link_new(data, path.parent, path):
                _fsync_dir(path.parent)
                return True
            if exclusive:
                return False
            with _ATTR_LOCK:  # replacing: lift it for this write
                set_append_attribute(path.parent, False)
                try:
                    return self._replace(path, data, exclusive)
                finally:
                    set_append_attribute(path.parent, True)
        return self._replace(path, data, exclusive)

    def _replace(self, path: Path, data: bytes, exclusive: bool) -> bool:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        stored = True
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if exclusive:
                try:
                    os.link(tmp, path)  # atomic, and refuses an existing name
                except FileExistsError:
                    stored = False
                Path(tmp).unlink()
            else:
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return stored

    def _store_new(self, key: str, path: Path, data: bytes, exclusive: bool) -> bool:
        """Append-only write: never replaces. A put onto an existing name succeeds only
        when the bytes there are the same (a retried upload); anything else is refused."""
        if _link_new(data, path.parent, path):
            _fsync_dir(path.parent)
            return True
        if exclusive:
            return False
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return True
        raise self._refuse("replace", key)

    async def put(self, key: str, data: bytes) -> None:
        await self._run(self._store, key, data, False, doing=_writing(data), key=key)

    async def create(self, key: str, data: bytes) -> bool:
        return await self._run(self._store, key, data, True, doing=_writing(data), key=key)

    def _get_range(self, key: str, offset: int, length: int | None) -> bytes:
        with open(self._path(key), "rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    async def get(self, key: str) -> bytes:
        return await self._run(self._get_range, key, 0, None, doing="reading", key=key)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        return await self._run(self._get_range, key, offset, length, doing="reading", key=key)

    def _stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size)

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self._run(self._stat, key)

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    def _list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        if not self.root.is_dir():
            return out
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            if not (base.startswith(prefix) or prefix.startswith(base)):
                dirnames.clear()
                continue
            for fn in filenames:
                key = base + fn
                if fn.startswith(".tmp-") or not key.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, fn)).st_size
                except FileNotFoundError:
                    continue
                out.append(ObjectInfo(key, size))
        out.sort(key=lambda o: o.key)
        return out

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        for item in await self._run(self._list, prefix):
            yield item

    def _list_temporary(self) -> tuple[TemporaryInfo, ...]:
        out: builtins.list[TemporaryInfo] = []
        if not self.root.is_dir():
            return ()
        for dirpath, _, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for fn in filenames:
                if fn.startswith(".tmp-"):
                    try:
                        st = os.stat(os.path.join(dirpath, fn))
                    except FileNotFoundError:
                        continue
                    when = datetime.fromtimestamp(st.st_mtime, UTC)
                    out.append(TemporaryInfo(base + fn, st.st_size, when))
        return tuple(sorted(out, key=lambda t: t.key))

    async def list_temporary(self) -> AsyncIterator[TemporaryInfo]:
        """The ``.tmp-*`` files of writes that never finished (``list`` skips them)."""
        for item in await self._run(self._list_temporary):
            yield item

    async def delete_temporary(self, item: TemporaryInfo) -> None:
        await self.delete(item.key)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except PermissionError as exc:
            if exc.errno != errno.EPERM or not has_append_attribute(path.parent):
                raise
            # Full rights on an append-only folder: lift the attribute for this unlink.
            with _ATTR_LOCK:
                set_append_attribute(path.parent, False)
                try:
                    path.unlink(missing_ok=True)
                finally:
                    set_append_attribute(path.parent, True)

    async def delete(self, key: str) -> None:
        if self.append_only:
            raise self._refuse("delete", check_key(key))
        await self._run(self._delete, key, doing="deleting", key=key)

    async def space(self) -> SpaceInfo | None:
        def _space() -> SpaceInfo | None:
            vfs = os.statvfs(self._existing_root())
            return SpaceInfo.from_statvfs(
                frsize=vfs.f_frsize or vfs.f_bsize,
                blocks=vfs.f_blocks,
                bfree=vfs.f_bfree,
                bavail=vfs.f_bavail,
            )

        return await self._run(_space)

    async def aclose(self) -> None:
        return None
