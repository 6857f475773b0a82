"""SFTP target: one file per key under a folder on an SSH server.

For offsite copies to a plain server or NAS whose only way in is SSH. One connection and
SFTP session per target, opened on first use; when the server drops it (reboot, idle NAT
timeout) the call reconnects once and repeats, safe because every operation is retry-safe.
Any other failure of the session itself (a timeout, a channel error) closes it, so that
the next call (the read retries of engine/storage/retry.py) dials a fresh one instead of
waiting on a dead one.

A value is written to ``.tmp-<random>`` beside its final name, fsynced if the server has
``fsync@openssh.com``, then moved over the final name with ``posix-rename@openssh.com``
(rename(2) on the server). Plain SFTP rename will not replace a file, so a server
without that extension fails the put rather than writing non-atomically.

Append-only (``append_only = true``, for a user that sshd restricts with ``ForceCommand
internal-sftp -u 0222 -P remove,rmdir,posix-rename,setstat,…``): nothing is ever deleted
or replaced. A put checks that the name is free, uploads ``.tmp-<random>`` and moves it
with plain SFTP rename, which refuses an existing name; a name that turns out taken holds
either the same bytes (a retried upload: success) or is refused. A temporary file that
cannot be moved stays behind (the server refuses its removal) for the full-rights user
to clear; listings skip ``.tmp-`` names.

Only public-key login with the configured key is tried and the host key is always
checked against a known_hosts file; ~/.ssh/config and ssh-agent are ignored, so the
target config alone decides. Messages name user, host and port; there are no secrets.
"""

from __future__ import annotations

import os
import posixpath
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import anyio.to_thread
import asyncssh
from asyncssh import FILEXFER_TYPE_DIRECTORY, FILEXFER_TYPE_REGULAR

from engine.storage.base import Capabilities, ObjectInfo, SpaceInfo, TemporaryInfo, check_key
from shared.config.targets import SftpTargetConfig
from shared.errors import ObjectNotFound, TargetError, TargetUnavailable

T = TypeVar("T")

_DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
# What a call sees when the connection went away under it: reconnect and repeat once.
_DROPPED = (
    asyncssh.ConnectionLost,
    asyncssh.SFTPConnectionLost,
    BrokenPipeError,
    ConnectionResetError,
)
_PERMANENT_DISCONNECT = (asyncssh.KeyExchangeFailed, asyncssh.ProtocolNotSupported)
_Entry = tuple[str, str, bool, int]  # sort key, name, is a folder, size


def _answered(exc: BaseException) -> bool:
    """The server answered the request (no such file, permission denied, failure): the
    session is fine. Anything else may have left it unusable."""
    return isinstance(exc, asyncssh.SFTPError) and not isinstance(exc, _DROPPED)


def _reason(exc: BaseException) -> str:
    text = exc.reason if isinstance(exc, asyncssh.Error) else str(exc) or type(exc).__name__
    return " ".join(text.split())


async def _readdir(sftp: asyncssh.SFTPClient, folder: str) -> list[_Entry]:
    """Objects and sub-folders of ``folder`` sorted so that a depth-first walk yields keys
    in ascending order: a folder sorts as ``name/`` because all its keys start so."""
    try:
        names = await sftp.readdir(folder)
    except asyncssh.SFTPNoSuchFile:
        return []  # the root before the first put, or a folder deleted meanwhile
    out: list[_Entry] = []
    for entry in names:
        name = str(entry.filename)
        if name in (".", "..") or name.startswith(".tmp-"):
            continue
        if entry.attrs.type == FILEXFER_TYPE_DIRECTORY:
            out.append((name + "/", name, True, 0))
        elif entry.attrs.type == FILEXFER_TYPE_REGULAR:
            out.append((name, name, False, entry.attrs.size or 0))
    out.sort()
    return out


class SftpTarget:
    def __init__(
        self,
        name: str,
        cfg: SftpTargetConfig,
        *,
        connect_timeout: float = 15.0,
        keepalive_interval: float = 30.0,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self._root = cfg.path.rstrip("/") or "/"
        self._connect_timeout = connect_timeout
        self._keepalive_interval = keepalive_interval
        self._lock = anyio.Lock()
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._closed = False
        self.append_only = cfg.append_only
        self.capabilities = Capabilities(append_only=cfg.append_only)

    def describe(self) -> str:
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        path = self._root if self._root.startswith("/") else f"/~/{self._root}"
        return f"sftp:{self.cfg.user}@{host}:{self.cfg.port}{path}"

    def _path(self, key: str) -> str:
        return posixpath.join(self._root, check_key(key))

    def _fail(self, what: str, *, retryable: bool) -> TargetUnavailable:
        return TargetUnavailable(f"{self.describe()}: {what}", retryable=retryable)

    def _translate(self, exc: BaseException, op: str, key: str | None) -> TargetError:
        """Map an asyncssh or socket error to the shared tree; the caller chains it."""
        what, why, cfg = f"{op} {key!r}" if key is not None else op, _reason(exc), self.cfg
        at = f"{cfg.host} port {cfg.port}"
        if isinstance(exc, asyncssh.SFTPNoSuchFile):
            if key is not None:
                return ObjectNotFound(f"{self.describe()}: object {key!r} not found")
            return self._fail(f"{what}: folder {self._root} not found", retryable=False)
        if isinstance(exc, asyncssh.SFTPPermissionDenied):
            hint = f"let user {cfg.user!r} read and write {self._root}"
            if self.append_only:
                hint = (
                    f"append-only user {cfg.user!r} can neither delete nor create folders: "
                    "create the repository's folders with the full-rights user first "
                    "(docs/security.md: append-only targets)"
                )
            return self._fail(f"{what}: permission denied on the server: {hint}", retryable=False)
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            hint = f"check the server, then fix targets.{self.name}.known_hosts"
            return self._fail(f"host key of {at} does not match ({why}): {hint}", retryable=False)
        if isinstance(exc, asyncssh.PermissionDenied):
            hint = "add its public key to that user's authorized_keys"
            who = f"{cfg.user!r} with key {cfg.key_file}"
            return self._fail(f"{at} refused login as {who}: {hint}", retryable=False)
        if isinstance(exc, _PERMANENT_DISCONNECT):
            return self._fail(f"{what}: {at} refused the SSH session: {why}", retryable=False)
        if isinstance(exc, asyncssh.SFTPError) and not isinstance(exc, _DROPPED):
            # A generic failure (OpenSSH's answer to a full disk) may pass on a later try;
            # an unsupported operation (no posix-rename@openssh.com) will not.
            retry = not isinstance(exc, asyncssh.SFTPOpUnsupported)
            return TargetError(f"{self.describe()}: {what} failed: {why}", retryable=retry)
        # Refused, reset or lost connections, timeouts, DNS failures, channel errors.
        return self._fail(f"{what}: cannot reach {at}: {why}", retryable=True)

    def _credentials(self) -> tuple[asyncssh.SSHKey, asyncssh.SSHKnownHosts]:
        """Read the key and known_hosts before dialling, to blame the right file."""
        cfg = self.cfg
        try:
            key = asyncssh.read_private_key(cfg.key_file)
        except (OSError, ValueError) as exc:
            hint = f"fix targets.{self.name}.key_file"
            why = f"cannot use private key {cfg.key_file}: {_reason(exc)}"
            raise self._fail(f"{why} ({hint})", retryable=False) from exc
        defaults = [os.path.expanduser(p) for p in _DEFAULT_KNOWN_HOSTS]
        files = [cfg.known_hosts] if cfg.known_hosts else [p for p in defaults if os.path.isfile(p)]
        if not files:
            hint = f"set targets.{self.name}.known_hosts"
            raise self._fail(f"no known_hosts file to verify the server: {hint}", retryable=False)
        try:
            return key, asyncssh.read_known_hosts(files)
        except (OSError, ValueError) as exc:
            why = f"cannot read known_hosts {', '.join(files)}: {_reason(exc)}"
            raise self._fail(why, retryable=False) from exc

    async def _client(self) -> asyncssh.SFTPClient:
        async with self._lock:
            if self._closed:
                raise self._fail("target is closed", retryable=False)
            if self._sftp is not None and self._conn is not None and not self._conn.is_closed():
                return self._sftp
            await self._disconnect()
            key, known_hosts = await anyio.to_thread.run_sync(self._credentials)
            self._conn = await asyncssh.connect(
                self.cfg.host,
                self.cfg.port,
                username=self.cfg.user,
                client_keys=[key],
                known_hosts=known_hosts,
                config=[],
                agent_path=None,
                preferred_auth="publickey",
                connect_timeout=self._connect_timeout,
                keepalive_interval=self._keepalive_interval,
                keepalive_count_max=3,
            )
            try:
                self._sftp = await self._conn.start_sftp_client()
            except BaseException:
                await self._disconnect()
                raise
            return self._sftp

    async def _disconnect(self) -> None:
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            conn.close()
            with anyio.move_on_after(5, shield=True):
                await conn.wait_closed()

    async def _forget(self, sftp: asyncssh.SFTPClient) -> None:
        async with self._lock:
            if self._sftp is sftp:  # not yet replaced by a concurrent call
                await self._disconnect()

    async def _call(
        self, op: str, key: str | None, fn: Callable[[asyncssh.SFTPClient], Awaitable[T]]
    ) -> T:
        retried = False
        while True:
            try:
                sftp = await self._client()
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                raise self._translate(exc, op, key) from exc
            try:
                return await fn(sftp)
            except _DROPPED as exc:
                await self._forget(sftp)
                if retried:
                    raise self._translate(exc, op, key) from exc
                retried = True
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                if not _answered(exc):
                    # The session itself failed (timeout, channel error, disconnect): a
                    # later call, such as the retry wrapper's, must dial a new one.
                    await self._forget(sftp)
                raise self._translate(exc, op, key) from exc

    async def check(self) -> None:
        """Fail fast (at agent start) on login, host key or permission problems.

        A missing root folder is created, as the first put would do, so that a path the
        user may not write is reported now rather than at the first backup."""

        async def probe(sftp: asyncssh.SFTPClient) -> None:
            if not await sftp.isdir(self._root):
                await sftp.makedirs(self._root, exist_ok=True)
            await sftp.readdir(self._root)

        await self._call("check", None, probe)

    async def put(self, key: str, data: bytes) -> None:
        await self._store(key, data, exclusive=False)

    async def create(self, key: str, data: bytes) -> bool:
        """Plain SFTP rename (not posix-rename) refuses to replace an existing file."""
        return await self._store(key, data, exclusive=True)

    def _refuse(self, what: str, key: str) -> TargetError:
        return TargetError(
            f"{self.describe()}: append-only target {self.name!r} refuses to {what} {key!r} "
            f"(targets.{self.name}.append_only = true: only the maintenance agent's prune, "
            "with a full-rights user, deletes)",
            retryable=False,
        )

    async def _taken(
        self, sftp: asyncssh.SFTPClient, key: str, path: str, data: bytes, exclusive: bool
    ) -> bool:
        """Append-only: ``path`` exists. Same bytes: a retried put, done; else refuse."""
        if exclusive:
            return False
        f = await sftp.open(path, "rb")
        try:
            there: bytes = await f.read(len(data) + 1, 0)
        finally:
            await f.close()
        if there == data:
            return True
        raise self._refuse("replace", key)

    async def _store(self, key: str, data: bytes, *, exclusive: bool) -> bool:
        path = self._path(key)
        folder = posixpath.dirname(path)
        tmp = posixpath.join(folder, f".tmp-{secrets.token_hex(8)}")
        if self.append_only:
            exclusive_rename = True

            async def taken(sftp: asyncssh.SFTPClient) -> bool:
                return await sftp.exists(path)

            if await self._call("put", key, taken):
                return await self._call(
                    "put", key, lambda sftp: self._taken(sftp, key, path, data, exclusive)
                )
        else:
            exclusive_rename = exclusive

        async def write(sftp: asyncssh.SFTPClient) -> bool:
            try:
                f = await sftp.open(tmp, "wb")
            except asyncssh.SFTPNoSuchFile:
                await sftp.makedirs(folder, exist_ok=True)
                f = await sftp.open(tmp, "wb")
            try:
                try:
                    await f.write(data)
                    try:
                        await f.fsync()
                    except asyncssh.SFTPOpUnsupported:
                        pass  # the server has no fsync@openssh.com: its page cache decides
                finally:
                    await f.close()
                if not exclusive_rename:
                    await sftp.posix_rename(tmp, path)
                    return True
                try:
                    await sftp.rename(tmp, path)
                    return True
                except asyncssh.SFTPError:
                    if not await sftp.exists(path):
                        raise
                    if self.append_only:  # lost a race; the server keeps the tmp file
                        return await self._taken(sftp, key, path, data, exclusive)
                    await sftp.remove(tmp)
                    return False
            except BaseException as exc:
                if self.append_only:
                    exc.add_note(f"{tmp} may be left behind: an append-only user cannot remove")
                    raise
                # Also on cancellation; bounded, since the connection may be the problem.
                with anyio.move_on_after(10, shield=True):
                    try:
                        if await sftp.exists(tmp):
                            await sftp.remove(tmp)
                    except (asyncssh.Error, OSError) as cleanup:
                        exc.add_note(f"removing {tmp} failed: {_reason(cleanup)}")
                raise

        return await self._call("put", key, write)

    async def get(self, key: str) -> bytes:
        return await self._read(key, 0, -1)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length} for {key!r}")
        return await self._read(key, offset, length)

    async def _read(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(key)

        async def read(sftp: asyncssh.SFTPClient) -> bytes:
            f = await sftp.open(path, "rb")  # also for length 0: a missing key must raise
            try:
                return b"" if length == 0 else await f.read(length, offset)  # -1: to the end
            finally:
                await f.close()

        return await self._call("get", key, read)

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)

        async def size(sftp: asyncssh.SFTPClient) -> int | None:
            try:
                attrs = await sftp.stat(path)
            except asyncssh.SFTPNoSuchFile:
                return None
            return (attrs.size or 0) if attrs.type == FILEXFER_TYPE_REGULAR else None

        found = await self._call("stat", key, size)
        return None if found is None else ObjectInfo(key, found)

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self.list_after(prefix, "")

    async def list_after(self, prefix: str, start_after: str) -> AsyncIterator[ObjectInfo]:
        """``list``, from the first key after ``start_after``, so the retry wrapper
        resumes a broken listing without reading the folders it has walked again."""
        async for info in self._walk("", prefix, start_after):
            yield info

    async def _walk(self, base: str, prefix: str, after: str) -> AsyncIterator[ObjectInfo]:
        """Depth-first over the folders that can hold keys starting with ``prefix`` and
        sorting after ``after``."""
        folder = posixpath.join(self._root, base) if base else self._root
        entries = await self._call("list", prefix, lambda sftp: _readdir(sftp, folder))
        for _, name, is_folder, size in entries:
            key = base + name
            if not is_folder:
                if key.startswith(prefix) and key > after:
                    yield ObjectInfo(key, size)
                continue
            sub = key + "/"
            # Every key under ``sub`` sorts before a larger string that does not start so.
            if after > sub and not after.startswith(sub):
                continue
            if sub.startswith(prefix) or prefix.startswith(sub):
                async for info in self._walk(sub, prefix, after):
                    yield info

    async def list_temporary(self, base: str = "") -> AsyncIterator[TemporaryInfo]:
        """The ``.tmp-*`` files of puts that never finished (``list`` skips them)."""
        folder = posixpath.join(self._root, base) if base else self._root

        async def readdir(sftp: asyncssh.SFTPClient) -> list[asyncssh.SFTPName]:
            try:
                return list(await sftp.readdir(folder))
            except asyncssh.SFTPNoSuchFile:
                return []

        entries = await self._call("list", base, readdir)
        for entry in sorted(entries, key=lambda e: str(e.filename)):
            name = str(entry.filename)
            if name in (".", ".."):
                continue
            if entry.attrs.type == FILEXFER_TYPE_DIRECTORY:
                async for item in self.list_temporary(f"{base}{name}/"):
                    yield item
            elif name.startswith(".tmp-") and entry.attrs.type == FILEXFER_TYPE_REGULAR:
                when = datetime.fromtimestamp(entry.attrs.mtime or 0, UTC)
                yield TemporaryInfo(base + name, entry.attrs.size or 0, when)

    async def delete_temporary(self, item: TemporaryInfo) -> None:
        await self.delete(item.key)

    async def delete(self, key: str) -> None:
        if self.append_only:
            raise self._refuse("delete", check_key(key))
        path = self._path(key)

        async def remove(sftp: asyncssh.SFTPClient) -> None:
            try:
                await sftp.remove(path)
            except asyncssh.SFTPNoSuchFile:
                pass  # deleting a missing key is not an error (contract)

        await self._call("delete", key, remove)

    async def space(self) -> SpaceInfo | None:
        async def statvfs(sftp: asyncssh.SFTPClient) -> SpaceInfo | None:
            probe = self._root  # before the first put, ask the nearest existing parent
            while True:
                try:
                    vfs = await sftp.statvfs(probe)
                except asyncssh.SFTPOpUnsupported:
                    return None
                except asyncssh.SFTPNoSuchFile:
                    if (parent := posixpath.dirname(probe) or ".") == probe:
                        raise
                    probe = parent
                    continue
                return SpaceInfo.from_statvfs(
                    frsize=vfs.frsize or vfs.bsize,
                    blocks=vfs.blocks,
                    bfree=vfs.bfree,
                    bavail=vfs.bavail,
                )

        return await self._call("space", None, statvfs)

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            await self._disconnect()
