"""Upload and download rate limits around any target (``upload_limit``,
``download_limit`` and ``limit_schedule`` of a ``[targets.NAME]`` section).

One wrapper outside the backend, put on by :func:`engine.storage.open.open_target` only
when the section sets a limit, so every transfer of the agent to or from that target —
all concurrent pack uploads of a backup, a restore's reads, replication — shares one
budget per direction. Uploads (``put``, ``create``) are charged before the bytes go out;
downloads (``get``, ``get_range``) after they arrived, by the bytes actually returned
(a range that ends with the object costs what it returned). Listings, ``stat``,
``exists`` and ``delete`` move no object data and are not charged.

The budget is a token bucket that may go into debt: a transfer of ``n`` bytes takes
``n`` tokens and, if the bucket is then below zero, waits until the rate has paid the
debt back. Tokens accrue at the current rate up to ``burst_s`` seconds' worth, so a
single uploader that spends time on the wire between its packs is not charged that time
twice, and a transfer larger than the bucket is still allowed (it waits longer). Two
transfers that start together are put one after the other in time: the second waits for
its own bytes and for the first's. The rate is looked up at each transfer, so a limit
window that starts (``limit_schedule``, the agent's local time) applies from the next
transfer on.

The clock, the sleep and the time of day are parameters, so a test can check what the
limiter asks for (N bytes at R bytes/s ≈ N/R seconds of sleeping) without waiting.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import anyio

from engine.storage.base import ObjectInfo, SpaceInfo, Target
from shared.config.limits import RatePlan

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]
Rate = Callable[[], int | None]  # bytes per second now; None: no limit


def local_minute() -> int:
    """The minute of the day in the agent's local time (what ``hours`` are written in)."""
    now = datetime.now()
    return now.hour * 60 + now.minute


class TokenBucket:
    """Bytes per second for everything that takes from it (see the module docstring)."""

    def __init__(
        self,
        rate: Rate,
        *,
        burst_s: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        if burst_s < 0:
            raise ValueError(f"burst_s must be ≥ 0, got {burst_s}")
        self._rate = rate
        self._burst_s = burst_s
        self._clock = clock
        self._sleep = sleep
        self._tokens: float | None = None  # full at the first transfer
        self._last = 0.0
        self._last_rate = 0
        self.taken = 0  # bytes charged so far, for tests and diagnostics
        self.slept = 0.0  # seconds waited so far

    async def take(self, n: int) -> None:
        """Charge ``n`` bytes, waiting as long as the current rate requires."""
        rate = self._rate()
        now = self._clock()
        self.taken += n
        if rate is None:  # no limit at the moment: start full when one applies again
            self._tokens = None
            return
        cap = rate * self._burst_s
        if self._tokens is None:
            self._tokens = cap
        else:  # tokens accrued since the last transfer, at the rate of that time
            self._tokens = min(cap, self._tokens + (now - self._last) * self._last_rate)
        self._last, self._last_rate = now, rate
        self._tokens -= n
        if self._tokens >= 0:
            return
        wait = -self._tokens / rate
        self.slept += wait
        try:
            await self._sleep(wait)
        except BaseException:  # cancelled: these bytes were never sent
            if self._tokens is not None:
                self._tokens += n
            self.slept -= wait
            self.taken -= n
            raise


class RateLimitedTarget:
    """A target whose object transfers keep to an upload and a download rate.

    Everything else is the inner target's: listings, ``stat``, ``space``, ``describe``
    and extra attributes (``check``, ``list_after``…) pass through unchanged."""

    def __init__(
        self, inner: Target, *, upload: TokenBucket | None, download: TokenBucket | None
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.upload = upload
        self.download = download

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not defined here: the backend's extras.
        if name == "inner":  # not set yet (copy, unpickle): no endless recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def describe(self) -> str:
        return self.inner.describe()

    async def _sent(self, n: int) -> None:
        if self.upload is not None:
            await self.upload.take(n)

    async def _received(self, data: bytes) -> bytes:
        if self.download is not None:
            await self.download.take(len(data))
        return data

    async def put(self, key: str, data: bytes) -> None:
        await self._sent(len(data))
        await self.inner.put(key, data)

    async def create(self, key: str, data: bytes) -> bool:
        await self._sent(len(data))
        return await self.inner.create(key, data)

    async def get(self, key: str) -> bytes:
        return await self._received(await self.inner.get(key))

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        return await self._received(await self.inner.get_range(key, offset, length))

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self.inner.stat(key)

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self.inner.list(prefix)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def space(self) -> SpaceInfo | None:
        return await self.inner.space()

    async def aclose(self) -> None:
        await self.inner.aclose()


def rate_limited(
    inner: Target,
    plan: RatePlan,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = anyio.sleep,
    minute: Callable[[], int] = local_minute,
    burst_s: float = 1.0,
) -> Target:
    """``inner`` with the limits of ``plan``; ``inner`` itself when it sets none."""
    if not plan.limited():
        return inner

    def bucket(rate: Rate) -> TokenBucket:
        return TokenBucket(rate, burst_s=burst_s, clock=clock, sleep=sleep)

    up = down = None
    if plan.upload is not None or any(w.upload is not None for w in plan.windows):
        up = bucket(lambda: plan.upload_at(minute()))
    if plan.download is not None or any(w.download is not None for w in plan.windows):
        down = bucket(lambda: plan.download_at(minute()))
    return RateLimitedTarget(inner, upload=up, download=down)
