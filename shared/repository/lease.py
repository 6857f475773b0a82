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


class LeaseInfo(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: str
    holder: str
    purpose: str
    started: datetime
    expires: datetime


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(LeaseInfo)


async def _store(target: Target, keys: Keyring, info: LeaseInfo) -> None:
    key = f"{fmt.LOCKS_PREFIX}{info.lease_id}"
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

    async def renew() -> None:
        current = info
        while True:
            await anyio.sleep(ttl.total_seconds() / 3)
            current = msgspec.structs.replace(current, expires=datetime.now(UTC) + ttl)
            await _store(target, keys, current)

    try:
        async with task_group() as tg:
            tg.start_soon(renew)
            yield info
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            try:
                await target.delete(f"{fmt.LOCKS_PREFIX}{info.lease_id}")
            except MosaicError:
                pass  # it expires by itself; GC ignores it after ``ttl``


async def live_leases(
    target: Target, keys: Keyring, *, now: datetime | None = None
) -> tuple[list[LeaseInfo], list[str]]:
    """(leases still live, keys of expired or unreadable ones) — for garbage collection."""
    now = now or datetime.now(UTC)
    live: list[LeaseInfo] = []
    dead: list[str] = []
    async for obj in target.list(fmt.LOCKS_PREFIX):
        try:
            raw = await target.get(obj.key)
            _, payload = open_sealed(keys, obj.key.encode(), raw, obj.key)
            info = _dec.decode(payload)
        except (MosaicError, msgspec.DecodeError):
            dead.append(obj.key)
            continue
        if info.expires > now:
            live.append(info)
        else:
            dead.append(obj.key)
    return live, dead
