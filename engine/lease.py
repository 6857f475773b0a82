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

Takeover from another host (issue 14): a holder renews its lease every ``renew_every``
seconds (``ttl/3``, at most 60 s on full-rights targets; append-only targets keep
``ttl/3`` so a lease does not grow a record a minute) and records when (``renewed``).
A lease whose holder is not provably dead (another host, container or boot) is
**stale** when its last renewal is more than ``STALE_RENEWALS`` renewal intervals before
GC's cutoff (``now - margin``, the same margin that covers clock skew for expiry): four
renewals in a row missed, plus the margin, is what a dead holder looks like from
anywhere. A lease written before these fields existed (``renew_every == 0``) is never
stale; only its expiry ends it. The holder's side of the bargain: its renewal loop
measures, on its own monotonic clock, the time since its last *successful* renewal, and
when that exceeds the stale window (a suspended process, a storage outage) it fails the
lease with :class:`LeaseLost`, which cancels the body, so a writer GC may have taken
over from stops instead of committing. A failed renewal fails the body too.
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
from shared.errors import MosaicError, RepositoryError
from shared.tasks import task_group

DEFAULT_TTL = timedelta(minutes=15)
MAX_RENEW_EVERY = timedelta(seconds=60)  # full-rights targets renew at least this often
STALE_RENEWALS = 4  # renewals missed in a row (beyond GC's margin) that make a lease stale
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
    # Renewals (see "Takeover from another host"); absent in older leases: never stale.
    renewed: datetime | None = None  # the holder's clock at this record's write
    renew_every: float = 0.0  # seconds between renewals


class LeaseLost(RepositoryError):
    """The holder could not renew its lease within the stale window: GC may have taken
    it over, so the work under it must not be committed."""

    code = "repository.lease_lost"


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
        return "unknown", f"held on {other}; it ends when its renewals stop or it expires"
    start = _pid_start(info.pid)
    if start is None:
        return "dead", f"pid {info.pid} is not running on this host"
    if start not in (-1, info.pid_start):
        return "dead", f"pid {info.pid} is now another process (different start time)"
    return "alive", f"pid {info.pid} is running"


def renew_interval(ttl: timedelta, append_only: bool) -> timedelta:
    """How often a lease with this ``ttl`` is renewed on this kind of target."""
    every = ttl / 3
    return every if append_only else min(every, MAX_RENEW_EVERY)


def stale(info: LeaseInfo, cutoff: datetime) -> str | None:
    """Why the lease's renewals have stopped (GC's ``cutoff`` is ``now - margin``), or
    None: renewed recently enough, or a lease that does not say how often it renews."""
    if info.renew_every <= 0 or info.renewed is None:
        return None
    window = timedelta(seconds=info.renew_every * STALE_RENEWALS)
    if info.renewed + window >= cutoff:
        return None
    return (
        f"not renewed since {info.renewed:%Y-%m-%d %H:%M:%S} UTC "
        f"(it renews every {info.renew_every:g} s; {STALE_RENEWALS} renewals missed)"
    )


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
    append_only = _append_only(target)
    every = renew_interval(ttl, append_only).total_seconds()
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
        renewed=now,
        renew_every=every,
    )
    await _store(target, keys, info)
    current = info
    last_ok = anyio.current_time()

    async def renew() -> None:
        nonlocal current, last_ok
        while True:
            await anyio.sleep(every)
            _check_held(anyio.current_time() - last_ok, every, info)
            # seq is taken before the write, so a release never reuses a record's name
            at = datetime.now(UTC)
            current = msgspec.structs.replace(
                current, expires=at + ttl, renewed=at, seq=current.seq + 1 if append_only else 0
            )
            # a store that hangs past the stale window fails the lease as well
            left = every * STALE_RENEWALS - (anyio.current_time() - last_ok)
            with anyio.move_on_after(max(left, 0.0)) as scope:
                await _store(target, keys, current)
            if scope.cancelled_caught:
                _check_held(float("inf"), every, info)
            last_ok = anyio.current_time()

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


def _check_held(since_ok: float, every: float, info: LeaseInfo) -> None:
    """Raise LeaseLost when the last successful renewal is a stale window ago."""
    if since_ok > every * STALE_RENEWALS:
        took = "longer than that" if since_ok == float("inf") else f"{since_ok:.0f} s"
        raise LeaseLost(
            f"lease {info.lease_id} ({info.purpose}): not renewed for {took} "
            f"(more than {STALE_RENEWALS} renewals of {every:g} s); garbage collection may "
            "have taken it over, so this run stops without committing; run it again"
        )


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
