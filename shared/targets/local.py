"""Local-disk target: one file per key under a root folder.

Writes go to a temporary file in the destination folder, are fsynced, then renamed over
the final name and the folder is fsynced, so a crash leaves the old object or the new
one, never a torn file. Blocking file I/O runs in worker threads.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from shared.errors import ObjectNotFound, TargetError, TargetUnavailable
from shared.targets.base import ObjectInfo, SpaceInfo, check_key

_LIMIT = anyio.CapacityLimiter(8)
T = TypeVar("T")


class LocalTarget:
    def __init__(self, name: str, root: str | Path, *, create: bool = True) -> None:
        self.name = name
        self.root = Path(root)
        self._create = create

    def describe(self) -> str:
        return f"local:{self.root}"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=_LIMIT)
        except ObjectNotFound:
            raise
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{self.describe()}: {exc.filename} not found") from exc
        except OSError as exc:
            retry = exc.errno in (errno.EAGAIN, errno.EINTR, errno.EBUSY)
            cls = TargetUnavailable if exc.errno in (errno.EACCES, errno.EROFS) else TargetError
            raise cls(
                f"{self.describe()}: {exc.strerror} ({exc.filename})", retryable=retry
            ) from exc

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
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return stored

    async def put(self, key: str, data: bytes) -> None:
        await self._run(self._store, key, data, False)

    async def create(self, key: str, data: bytes) -> bool:
        return await self._run(self._store, key, data, True)

    def _get_range(self, key: str, offset: int, length: int | None) -> bytes:
        with open(self._path(key), "rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    async def get(self, key: str) -> bytes:
        return await self._run(self._get_range, key, 0, None)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        return await self._run(self._get_range, key, offset, length)

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

    def _delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        await self._run(self._delete, key)

    async def space(self) -> SpaceInfo | None:
        def _space() -> SpaceInfo | None:
            probe = self.root
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            usage = shutil.disk_usage(probe)
            return SpaceInfo(usage.total, usage.free)

        return await self._run(_space)

    async def aclose(self) -> None:
        return None
