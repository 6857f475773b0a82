"""The coordinators' lease: which one of several schedules jobs and sends alerts.

Several coordinators may share one NATS and one catalog; exactly one of them must run
the scheduler and the alerter, or alerts go out twice and every tick is done twice.
The lease is the key ``leader`` of a JetStream key-value bucket whose entries expire
after ``ttl`` (the bucket's max age), holding ``<name>/<instance id>``:

- a standby polls and takes the lease with ``create`` (succeeds only while the key is
  absent: never written, expired, or deleted by a holder that stopped cleanly);
- the holder renews every ``ttl/3`` with ``update(last=revision)``, a compare-and-swap
  on its own last revision, so a holder that lost the key can never write it back;
- the holder considers the lease lost at ``sent + ttl - margin``, where ``sent`` is
  when its last successful renewal was *sent* (the server stored it later, so the key
  lives at least until ``sent + ttl``). At that moment, or as soon as a renewal is
  refused, the work run under the lease is cancelled, before anyone else can create
  the key. Renewal errors (NATS unreachable) are retried until then.

The holder also keeps the key ``leader-since`` (``<owner> <ISO time it took the
lease>``), rewritten with each renewal so it expires with the lease: status on any
coordinator shows who is active and since when (:meth:`Leader.holder`).

Fail-over therefore takes at most ``ttl`` (expiry) plus one poll, about 8 s with the
default 6 s ttl. The lease is an optimisation of who does the work, not the only guard
against doing it twice: scheduled jobs have deterministic ids, JetStream drops a
re-published id inside its duplicate window, and catalog writes are idempotent, so a
short overlap (a paused process, clock rates that differ) cannot run a job twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import anyio
from anyio.abc import TaskStatus
from nats.errors import Error as NatsError
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError

from shared import replicas, subjects
from shared.errors import BusError
from shared.vocab import utcnow

log = logging.getLogger(__name__)

KEY = "leader"
SINCE_KEY = "leader-since"  # "<owner> <ISO time>": when the holder took the lease
RETRY_S = 0.5  # pause between renewal attempts after an error

# Long-running work started under the lease: signals readiness like any anyio service.
Body = Callable[..., Coroutine[Any, Any, None]]


class Leader:
    """Holds or waits for the lease in ``bucket`` on the JetStream context ``js``.

    ``owner`` (``name/instance``) is the value written; it must differ per process.
    ``ttl_s`` is used when creating the bucket; if the bucket exists with another
    ttl, the bucket's own ttl is what expires the key, so that one is used instead.
    """

    def __init__(
        self, js: Any, owner: str, *, ttl_s: float, bucket: str = subjects.LEADER_BUCKET
    ) -> None:
        self.js = js
        self.owner = owner
        self.bucket = bucket
        self.ttl_s = ttl_s
        self._revision: int | None = None
        self._valid_until = 0.0  # anyio.current_time() at which the lease counts as lost
        self.since: datetime | None = None  # when this process last took the lease
        self._kv: Any = None

    @property
    def renew_s(self) -> float:
        return self.ttl_s / 3

    @property
    def _margin_s(self) -> float:
        # step down this long before the key can expire on the server
        return self.ttl_s / 6

    @property
    def is_leader(self) -> bool:
        """True while this process holds the lease (and its work may run)."""
        return self._revision is not None and anyio.current_time() < self._valid_until

    async def open(self) -> Any:
        """The bucket, created with ``history=1`` and ``ttl`` if it does not exist."""
        try:
            try:
                kv = await self.js.create_key_value(
                    bucket=self.bucket,
                    history=1,
                    ttl=self.ttl_s,
                    replicas=replicas.replicas(self.js),  # shared/replicas.py
                )
            except BadRequestError:
                # exists with another config (another coordinator's ttl): use it as it is,
                # with the copies the coordinators' stream_replicas says (an R1 → R3)
                kv = await self.js.key_value(self.bucket)
                await replicas.ensure_bucket_replicas(self.js, self.bucket)
            ttl = (await kv.status()).ttl
        except (NatsError, TimeoutError) as exc:
            raise BusError(f"lease bucket {self.bucket}: {exc!r}", retryable=True) from exc
        if not ttl:
            raise BusError(
                f"lease bucket {self.bucket} never expires keys, so a dead coordinator would "
                "hold the lease forever; delete the bucket (nats kv del) to recreate it",
                retryable=False,
            )
        if abs(ttl - self.ttl_s) > 1e-6:
            log.warning(
                "lease bucket %s expires keys after %.1fs, not the configured %.1fs; using %.1fs",
                self.bucket,
                ttl,
                self.ttl_s,
                ttl,
            )
            self.ttl_s = ttl
        self._kv = kv
        return kv

    async def holder(self) -> tuple[str, datetime | None] | None:
        """Who holds the lease (``name/instance``) and since when (None: not known, e.g.
        a holder that predates ``leader-since``); None if nobody does or NATS cannot
        tell. Needs :meth:`open` (``run_when_leader``) to have run."""
        if self.is_leader:
            return self.owner, self.since
        if self._kv is None:
            return None
        try:
            owner = bytes((await self._kv.get(KEY)).value or b"").decode()
        except (NatsError, TimeoutError):  # KeyNotFoundError: nobody holds it now
            return None
        since: datetime | None = None
        try:
            raw = bytes((await self._kv.get(SINCE_KEY)).value or b"").decode()
            who, _, at = raw.rpartition(" ")
            since = datetime.fromisoformat(at) if who == owner else None
        except (NatsError, TimeoutError, ValueError):
            pass  # the holder did not say (an older coordinator): who, but not since when
        return owner, since

    async def _announce(self, kv: Any) -> None:
        """Write ``leader-since``; best effort (status only), a failure is retried with
        the next renewal."""
        assert self.since is not None
        with anyio.move_on_after(self.renew_s / 2):
            try:
                await kv.put(SINCE_KEY, f"{self.owner} {self.since.isoformat()}".encode())
            except (NatsError, TimeoutError) as exc:
                log.debug("lease %s: %s not written: %r", self.bucket, SINCE_KEY, exc)

    async def run_when_leader(
        self, body: Body, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Forever: wait for the lease; while holding it, run ``body`` (started with
        ``task_status``, like ``TaskGroup.start``) and cancel it when the lease is lost.

        Ready once the first attempt is decided: as leader, after ``body`` started; as
        standby, at once. On cancellation a held lease is released (the key deleted if
        still ours), so a standby takes over at its next poll instead of after the ttl.
        """
        kv = await self.open()
        first = True
        try:
            while True:
                ready = task_status if first else anyio.TASK_STATUS_IGNORED
                signalled = False
                if await self._acquire(kv):
                    log.info("%s is now the active coordinator", self.owner)
                    signalled = await self._lead(kv, body, ready)
                    log.warning("%s is no longer the active coordinator", self.owner)
                if first and not signalled:  # standby, or lost before body was ready
                    task_status.started()
                first = False
                await anyio.sleep(self.renew_s / 2)
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(kv)

    async def _acquire(self, kv: Any) -> bool:
        sent = anyio.current_time()
        with anyio.move_on_after(self.renew_s):
            try:
                revision = await kv.create(KEY, self.owner.encode())
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                return False  # held by someone else (or expiring right now)
            except (NatsError, TimeoutError) as exc:
                log.warning("lease %s: cannot reach NATS to take it: %r", self.bucket, exc)
                return False
            self._revision = revision
            self._valid_until = sent + self.ttl_s - self._margin_s
            self.since = utcnow()
        if self._revision is None:
            return False
        await self._announce(kv)
        return True

    async def _lead(self, kv: Any, body: Body, ready: TaskStatus[None]) -> bool:
        """Run ``body`` until the lease is lost; return whether ``ready`` was signalled.
        Cancelled from outside (shutdown), the revision is kept so that
        ``run_when_leader`` can release the key."""
        signalled = False
        async with anyio.create_task_group() as tg:

            async def guard() -> None:
                await self._keep(kv)
                self._valid_until = 0.0
                tg.cancel_scope.cancel()  # lost: stop the work now

            tg.start_soon(guard)
            await tg.start(body)
            ready.started()
            signalled = True
        self._revision = None
        return signalled

    async def _keep(self, kv: Any) -> None:
        """Renew until the lease is lost; return at the moment it must count as lost."""
        next_at = anyio.current_time() + self.renew_s
        while True:
            await anyio.sleep_until(next_at)
            left = self._valid_until - anyio.current_time()
            if left <= 0:
                log.error("lease %s: not renewed for %.1fs, stepping down", KEY, self.ttl_s)
                return
            with anyio.move_on_after(left):
                sent = anyio.current_time()
                try:
                    self._revision = await kv.update(KEY, self.owner.encode(), last=self._revision)
                except KeyWrongLastSequenceError:
                    log.error("lease %s: taken over or expired, stepping down", KEY)
                    return
                except (NatsError, TimeoutError) as exc:
                    log.warning("lease %s: renewal failed, retrying: %r", KEY, exc)
                else:
                    self._valid_until = sent + self.ttl_s - self._margin_s
                    next_at = sent + self.renew_s
                    await self._announce(kv)
                    continue
            next_at = min(anyio.current_time() + RETRY_S, self._valid_until)

    async def _release(self, kv: Any) -> None:
        """Delete the key if it is still our revision (a stale one is left to expire)."""
        revision, self._revision = self._revision, None
        if revision is None:
            return
        with anyio.move_on_after(2.0):
            try:
                await kv.delete(KEY, last=revision)
                log.info("%s released the lease", self.owner)
            except (NatsError, TimeoutError) as exc:
                log.warning("lease %s not released (expires by itself): %r", KEY, exc)
