"""pyfuse3 over engine.restore.mountfs: the kernel's requests answered from a
BackupTree, and one mount served until it is unmounted (``fusermount3 -u``, ``umount``)
or the process gets SIGINT or SIGTERM, which unmount it.

Imported only when ``repo mount`` runs: pyfuse3 is the optional ``mount`` extra (it
builds against libfuse3), so every other command works without it. pyfuse3 runs in its
asyncio mode, inside the command's event loop, so reads use the repository like the
other repo tools. A handler may only raise FUSEError (anything else would stop the
whole mount): repository errors become EIO with one log line naming the file (a secret
by its shown name), a bug EIO with its traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import anyio
import pyfuse3
import pyfuse3.asyncio
from anyio.abc import TaskStatus

from engine.restore.mountfs import BackupTree, Entry
from shared.errors import ConfigError, MosaicError

log = logging.getLogger(__name__)

TIMEOUT = 3600.0  # s the kernel may cache names and attributes: nothing ever changes
BLOCK = 4096


def attributes(entry: Entry) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    a.st_ino = entry.inode
    a.generation = 0
    a.entry_timeout = TIMEOUT
    a.attr_timeout = TIMEOUT
    a.st_mode = entry.mode
    a.st_nlink = entry.nlink
    a.st_uid = entry.uid
    a.st_gid = entry.gid
    a.st_size = entry.size
    a.st_blksize = BLOCK
    a.st_blocks = (entry.size + 511) // 512
    a.st_atime_ns = entry.mtime_ns
    a.st_mtime_ns = entry.mtime_ns
    a.st_ctime_ns = entry.mtime_ns
    return a


@contextmanager
def answering(what: str) -> Iterator[None]:
    """Turn what a handler raises into the errno the caller gets."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except OSError as exc:
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from exc
    except MosaicError as exc:
        log.error("%s: %s", what, exc)
        raise pyfuse3.FUSEError(errno.EIO) from exc
    except Exception as exc:
        log.exception("%s failed", what)  # a bug: the traceback, and EIO for this call
        raise pyfuse3.FUSEError(errno.EIO) from exc


class BackupOperations(pyfuse3.Operations):
    """Read-only operations; every write is refused by the kernel (the mount is ``ro``)."""

    supports_dot_lookup = False  # lookups of "." and ".." (only NFS exports ask)

    def __init__(self, tree: BackupTree) -> None:
        super().__init__()
        self.tree = tree
        self._files: dict[int, Entry] = {}
        self._dirs: dict[int, list[tuple[bytes, Entry]]] = {}
        self._next = 1

    def _handle(self) -> int:
        self._next += 1
        return self._next

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with answering("stat"):
            return attributes(self.tree.get(inode))

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        with answering("lookup"):  # not the name: it may be a secret's
            return attributes(await self.tree.lookup(parent_inode, name))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        with answering("readlink"):
            entry = self.tree.get(inode)
            if not entry.target:
                raise pyfuse3.FUSEError(errno.EINVAL)
            return entry.target

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        with answering("listing a folder"):
            listing = await self.tree.listing(inode)
        fh = self._handle()
        self._dirs[fh] = listing
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._dirs.get(fh)
        if listing is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for i in range(start_id, len(listing)):
            name, entry = listing[i]
            if not pyfuse3.readdir_reply(token, name, attributes(entry), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        with answering("open"):
            entry = await self.tree.open(inode)
        fh = self._handle()
        self._files[fh] = entry
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)  # content never changes

    async def read(self, fh: int, off: int, size: int) -> bytes:
        entry = self._files.get(fh)
        if entry is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        with answering(f"reading {entry.shown} at byte {off:,}"):
            return await self.tree.read(entry, off, size)

    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        with answering("listxattr"):
            return [os.fsencode(n) for n in self.tree.get(inode).xattrs]

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        with answering("getxattr"):
            value = self.tree.get(inode).xattrs.get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.tree.entries)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s


async def _unmount_on_signal(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            stop()
            return


def stop() -> None:
    """Make pyfuse3.main() return (serve() then unmounts)."""
    try:
        pyfuse3.terminate()
    except asyncio.InvalidStateError:
        # pyfuse3's asyncio shim wakes the waiting worker by failing its "fd readable"
        # future; when a request had just arrived that future is already done. The exit
        # flag is set by then, so that worker answers the request and then stops.
        log.debug("FUSE worker already awake when terminating")


async def serve(tree: BackupTree, mountpoint: str, fsname: str, ready: Callable[[], None]) -> None:
    """Mount ``tree`` read-only at ``mountpoint``, call ``ready``, serve until
    unmounted or signalled; always unmount on the way out."""
    pyfuse3.asyncio.enable()
    options = set(pyfuse3.default_options) | {"ro", f"fsname={fsname}", "subtype=mosaic-backup"}
    async with anyio.create_task_group() as tg:
        await tg.start(_unmount_on_signal)  # before the mount: no signal goes unheard
        try:
            pyfuse3.init(BackupOperations(tree), mountpoint, options)
        except RuntimeError as exc:
            raise ConfigError(
                f"MOUNTPOINT: cannot mount at {mountpoint} ({exc}); FUSE needs /dev/fuse and "
                "fusermount3 (Debian: apt-get install fuse3)"
            ) from exc
        try:
            ready()
            await pyfuse3.main()
        finally:
            pyfuse3.close(unmount=True)
            tg.cancel_scope.cancel()
