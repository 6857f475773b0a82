"""Leases: how a running backup tells garbage collection "these packs are mine".

Scheme (and why it cannot block backups for days, restic's stale-lock complaint):

- A writer stores ``locks/<id>`` (a sealed LEASE object: holder, started, expires) when
  it starts and renews it every ``ttl/3`` while it runs; it deletes it when it ends, on
  success or failure.
- Writers never wait for or check anyone's lease: backups, restores and verifies take no
  lock at all, so no lease, stale or live, can ever stop them.
- Garbage collection (``agent/prune.py``) takes a lease of its own and deletes nothing
  while any other live lease exists; it hides its garbage from the index first, and a
  backup re-reads the index right after taking its lease, so a backup can never
  deduplicate against a pack that is about to be deleted. Leases whose ``expires`` has
  passed are ignored and removed: a crashed writer delays GC by at most ``ttl`` and
  never needs a manual unlock.
- On an append-only target (``target.append_only``: SFTP or local targets whose agent may
  not delete or replace) a lease is a series of objects: ``locks/<id>`` first, each
  renewal a new ``locks/<id>.<seq>`` with a later ``expires``, and the release one more
  with ``expires`` in 1970 (over, as a deleted one). The record with the highest ``seq``
  speaks for the lease; the full-rights prune removes all records of a lease once over.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import msgspec

from shared.errors import MosaicError
from shared.repository import format as fmt
from shared.repository.crypto import Keyring, open_sealed, seal
from shared.targets.base import Target
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


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(LeaseInfo)


def _key(info: LeaseInfo) -> str:
    tail = f".{info.seq:06d}" if info.seq else ""
    return f"{fmt.LOCKS_PREFIX}{info.lease_id}{tail}"


def _append_only(target: Target) -> bool:
    # Not part of the Target protocol: only local and SFTP targets have the mode.
    return bool(getattr(target, "append_only", False))


async def _store(target: Target, keys: Keyring, info: LeaseInfo) -> None:
    key = _key(info)
    await target.put(key, seal(keys, fmt.OT_LEASE, key.encode(), _enc.encode(info)))


@asynccontextmanager
async def lease(
    target: Target, keys: Keyring, *, holder: str, purpose: str, ttl: timedelta = DEFAULT_TTL
) -> AsyncIterator[LeaseInfo]:
    """Hold a lease while the body runs; renewed in the background, always released."""
    now = datetime.now(UTC)
    info = LeaseInfo(
        lease_id=f"{now:%Y%m%dT%H%M%SZ}-{os.urandom(6).hex()}",
        holder=holder,
        purpose=purpose,
        started=now,
        expires=now + ttl,
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


async def live_leases(
    target: Target, keys: Keyring, *, now: datetime | None = None
) -> tuple[list[LeaseInfo], list[str]]:
    """(leases still live, keys of expired or unreadable ones) — for garbage collection.

    A lease with several records (append-only targets) is live when its newest record
    (highest ``seq``) is; when it is not, every record of it is returned as dead."""
    now = now or datetime.now(UTC)
    newest: dict[str, LeaseInfo] = {}
    records: dict[str, list[str]] = {}
    dead: list[str] = []
    async for obj in target.list(fmt.LOCKS_PREFIX):
        try:
            raw = await target.get(obj.key)
            _, payload = open_sealed(keys, obj.key.encode(), raw, obj.key)
            info = _dec.decode(payload)
        except (MosaicError, msgspec.DecodeError):
            dead.append(obj.key)
            continue
        records.setdefault(info.lease_id, []).append(obj.key)
        if info.lease_id not in newest or info.seq > newest[info.lease_id].seq:
            newest[info.lease_id] = info
    live = [i for i in newest.values() if i.expires > now]
    dead += [k for lid, i in newest.items() if i.expires <= now for k in records[lid]]
    return live, sorted(dead)
