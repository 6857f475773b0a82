"""Leases: how a running backup tells garbage collection "these packs are mine".

Scheme (and why it cannot block backups for days, restic's stale-lock complaint):

- A writer stores ``locks/<id>`` (a sealed LEASE object: holder, started, expires) when
  it starts and renews it every ``ttl/3`` while it runs; it deletes it when it ends, on
  success or failure.
- Writers never wait for or check anyone's lease: backups, restores and verifies take no
  lock at all, so no lease, stale or live, can ever stop them.
- Garbage collection (``engine/maintenance/prune.py``) takes a lease of its own and deletes nothing
  while any other live lease exists; it hides its garbage from the index first, and a
  backup re-reads the index right after taking its lease, so a backup can never
  deduplicate against a pack that is about to be deleted. Leases whose ``expires`` has
  passed are ignored and removed: a crashed writer delays GC by at most ``ttl`` and
  never needs a manual unlock.
- On an append-only target (``capabilities.append_only``: SFTP or local targets whose agent may
  not delete or replace) a lease is a series of objects: ``locks/<id>`` first, each
  renewal a new ``locks/<id>.<seq>`` with a later ``expires``, and the release one more
  with ``expires`` in 1970 (over, as a deleted one). The record with the highest ``seq``
  speaks for the lease; the full-rights prune removes all records of a lease once over.

Liveness (``repo locks``, and GC's shortcut past a crashed writer): a lease names the
process that holds it (host name, machine id, boot id, pid namespace, pid and the
pid's start time in clock ticks since boot). A lease is *dead* only when that is
provably gone: the same host (all of host name, machine id, boot id and pid namespace
equal ours) and the pid is not running or runs a different process (its start time
differs). Anything else — another host, another container, a reboot, a lease written
before these fields existed — is *unknown*, and only its ``expires`` can end it. A
rebooted host is not called dead: a cloned container may share the machine id and host
name with a different boot id, and a false "dead" could let GC delete a running
backup's packs, while waiting ``ttl`` only costs time.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Literal

import anyio
import msgspec

from engine.format import spec as fmt
from engine.format.crypto import Keyring, open_sealed, seal
from engine.storage.base import Target
from shared.errors import MosaicError
from shared.tasks import task_group

DEFAULT_TTL = timedelta(minutes=15)
# ``expires`` of a released lease's last record (append-only targets): over for any clock
# and any GC margin, exactly like a deleted lease.
_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)


class LeaseInfo(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: str
    holder: str
    purpose: str
    started: datetime
    expires: datetime
    seq: int = 0  # append-only targets: the record's number; the highest one counts
    # The holding process (see "Liveness"); empty/0 in leases written before they existed.
    host: str = ""
    machine_id: str = ""
    boot_id: str = ""
    pid_ns: str = ""
    pid: int = 0
    pid_start: int = 0  # clock ticks since boot (/proc/<pid>/stat field 22)


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(LeaseInfo)


Liveness = Literal["alive", "dead", "unknown"]


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> int | None:
    """The start time of ``pid`` (ticks since boot), None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return -1  # exists but unreadable: never call it dead
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19])  # field 22 overall


@cache
def _host_identity() -> tuple[str, str, str, str]:
    """(host name, machine id, boot id, pid namespace) of this process."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    return (
        socket.gethostname(),
        _read("/etc/machine-id"),
        _read("/proc/sys/kernel/random/boot_id"),
        pid_ns,
    )


def liveness(info: LeaseInfo) -> tuple[Liveness, str]:
    """Whether the lease's holder still runs, and why we think so (one phrase)."""
    mine = _host_identity()
    theirs = (info.host, info.machine_id, info.boot_id, info.pid_ns)
    if not info.pid or not all(theirs):
        return "unknown", "the lease does not name its process"
    if theirs != mine:
        other = "another host" if info.host != mine[0] else "another boot or container"
        return "unknown", f"held on {other}; only its expiry ends it"
    start = _pid_start(info.pid)
    if start is None:
        return "dead", f"pid {info.pid} is not running on this host"
    if start not in (-1, info.pid_start):
        return "dead", f"pid {info.pid} is now another process (different start time)"
    return "alive", f"pid {info.pid} is running"


def _key(info: LeaseInfo) -> str:
    tail = f".{info.seq:06d}" if info.seq else ""
    return f"{fmt.LOCKS_PREFIX}{info.lease_id}{tail}"


def _append_only(target: Target) -> bool:
    return target.capabilities.append_only


async def _store(target: Target, keys: Keyring, info: LeaseInfo) -> None:
    key = _key(info)
    await target.put(key, seal(keys, fmt.OT_LEASE, key.encode(), _enc.encode(info)))


@asynccontextmanager
async def lease(
    target: Target, keys: Keyring, *, holder: str, purpose: str, ttl: timedelta = DEFAULT_TTL
) -> AsyncIterator[LeaseInfo]:
    """Hold a lease while the body runs; renewed in the background, always released."""
    now = datetime.now(UTC)
    host, machine_id, boot_id, pid_ns = _host_identity()
    pid = os.getpid()
    info = LeaseInfo(
        lease_id=f"{now:%Y%m%dT%H%M%SZ}-{os.urandom(6).hex()}",
        holder=holder,
        purpose=purpose,
        started=now,
        expires=now + ttl,
        host=host,
        machine_id=machine_id,
        boot_id=boot_id,
        pid_ns=pid_ns,
        pid=pid,
        pid_start=max(_pid_start(pid) or 0, 0),
    )
    await _store(target, keys, info)
    append_only = _append_only(target)
    current = info

    async def renew() -> None:
        nonlocal current
        while True:
            await anyio.sleep(ttl.total_seconds() / 3)
            # seq is taken before the write, so a release never reuses a record's name
            current = msgspec.structs.replace(
                current, expires=datetime.now(UTC) + ttl, seq=current.seq + 1 if append_only else 0
            )
            await _store(target, keys, current)

    try:
        async with task_group() as tg:
            tg.start_soon(renew)
            yield info
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            try:
                if append_only:  # a last record that says "over", as a delete would
                    last = msgspec.structs.replace(current, expires=_RELEASED, seq=current.seq + 1)
                    await _store(target, keys, last)
                else:
                    await target.delete(_key(info))
            except MosaicError:
                pass  # it expires by itself; GC ignores it after ``ttl``


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One lease as ``repo locks`` and GC see it: its newest record and all its keys."""

    info: LeaseInfo
    keys: tuple[str, ...]  # every stored record of the lease (append-only: several)

    def expired(self, now: datetime) -> bool:
        return self.info.expires <= now


async def read_leases(target: Target, keys: Keyring) -> tuple[list[LeaseRecord], list[str]]:
    """(every readable lease, keys of unreadable ``locks/`` objects), oldest first."""
    newest: dict[str, LeaseInfo] = {}
    records: dict[str, list[str]] = {}
    unreadable: list[str] = []
    async for obj in target.list(fmt.LOCKS_PREFIX):
        try:
            raw = await target.get(obj.key)
            _, payload = open_sealed(keys, obj.key.encode(), raw, obj.key)
            info = _dec.decode(payload)
        except (MosaicError, msgspec.DecodeError):
            unreadable.append(obj.key)
            continue
        records.setdefault(info.lease_id, []).append(obj.key)
        if info.lease_id not in newest or info.seq > newest[info.lease_id].seq:
            newest[info.lease_id] = info
    out = [LeaseRecord(i, tuple(sorted(records[lid]))) for lid, i in newest.items()]
    out.sort(key=lambda r: (r.info.started, r.info.lease_id))
    return out, sorted(unreadable)


async def live_leases(
    target: Target, keys: Keyring, *, now: datetime | None = None
) -> tuple[list[LeaseInfo], list[str]]:
    """(leases still live, keys of expired or unreadable ones) — for garbage collection.

    A lease with several records (append-only targets) is live when its newest record
    (highest ``seq``) is; when it is not, every record of it is returned as dead."""
    now = now or datetime.now(UTC)
    found, dead = await read_leases(target, keys)
    live = [r.info for r in found if not r.expired(now)]
    dead += [k for r in found if r.expired(now) for k in r.keys]
    return live, sorted(dead)


async def clear_dead(target: Target, keys: Keyring) -> list[LeaseRecord]:
    """Delete every lease whose holder is provably gone (``repo locks --clear-dead``);
    returns them. Needs a full-rights target: an append-only one refuses the delete."""
    found, _ = await read_leases(target, keys)
    gone = [r for r in found if liveness(r.info)[0] == "dead"]
    for r in gone:
        for key in r.keys:
            await target.delete(key)
    return gone
