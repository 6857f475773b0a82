"""Retrying reads that fail with a transient fault, around any target.

Like restic's ``RetryBackend``, one wrapper outside every backend, assembled in
:func:`shared.targets.open_target`, instead of a retry loop in each module. It exists
because the faults that hurt most are below what the SDKs retry: botocore retries a
request whose answer never came or was a 5xx, but not a 200 whose body was cut short
(``IncompleteRead`` → ``ResponseStreamingError``), and an SFTP session that drops in the
middle of a read is reconnected once by the SFTP target at most.

Only reads are retried here (``get``, ``get_range``, ``list``, ``stat``, ``exists``):
they change nothing, so repeating them is always safe. Writes pass through: ``put`` is
retried by the SDKs per request, and a repeated ``create`` after a lost answer would
report False for the value it stored itself.

What is retried: an error the backend marked ``retryable`` (its translation says
"retrying can help"), the raw transient faults of :func:`is_transient` (resets, timeouts,
botocore body and connection errors, asyncssh connection drops), and a ``get_range`` that
returns fewer bytes than asked while the object's size says more were there. Never
retried: :class:`~shared.errors.ObjectNotFound`, refused logins or permissions, and any
error marked not retryable. After the last attempt the read raises
:class:`~shared.errors.TargetUnreadable` (one line, with the key and the last cause):
the object could not be read, which says nothing about whether it is damaged.

The policy (attempts, backoff) is :class:`RetryPolicy`; delays grow exponentially with
"equal jitter" (half fixed, half random) so that many readers hit by one outage do not
come back in step. docs/integrity.md describes it for operators.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import anyio

from engine.storage.base import ObjectInfo, SpaceInfo, Target
from shared.errors import ObjectNotFound, TargetError, TargetUnreadable

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a read is repeated.

    With the defaults a read is tried 6 times over about 6 s at worst (0.1, 0.2, 0.4,
    0.8, 1.6 s caps, each at least half used): long enough for a dropped connection to be
    re-established or a proxy to recover, short enough that a target that is really down
    is reported while the operator still watches.
    """

    attempts: int = 6  # reads in all, the first included
    first_delay: float = 0.1  # seconds before the first retry (upper bound)
    max_delay: float = 4.0  # no single wait is longer

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay < 0 or self.max_delay < self.first_delay:
            raise ValueError(
                f"retry policy: need attempts ≥ 1 and 0 ≤ first_delay ≤ max_delay, got {self}"
            )

    def delay(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number ``retry`` (0 for the first retry)."""
        cap = min(self.max_delay, self.first_delay * float(2**retry))
        return cap / 2 + rng.uniform(0, cap / 2)


DEFAULT_POLICY = RetryPolicy()


class CutShort(TargetError):
    """``get_range`` returned fewer bytes than the object holds at that place: the answer
    was cut short on the way (a truncated body), not by the end of the object."""

    code = "target.cut_short"
    retryable = True


@cache
def _transient_types() -> tuple[type[BaseException], ...]:
    """Raw exceptions that mean "the way to the data failed", not "the data is bad"."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, EOFError]
    try:
        from botocore import exceptions as boto

        found += [
            boto.IncompleteReadError,
            boto.ResponseStreamingError,
            boto.ReadTimeoutError,
            boto.ConnectTimeoutError,
            boto.ConnectionClosedError,
            boto.EndpointConnectionError,
            boto.ConnectionError,
        ]
    except ImportError:  # pragma: no cover - boto3 is a dependency
        pass
    try:
        import asyncssh

        found += [asyncssh.ConnectionLost, asyncssh.SFTPConnectionLost, asyncssh.ChannelOpenError]
    except ImportError:  # pragma: no cover - asyncssh is a dependency
        pass
    return tuple(found)


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in out:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


def is_transient(exc: BaseException) -> bool:
    """Whether repeating the read can help: see the module docstring."""
    if isinstance(exc, ObjectNotFound | PermissionError | TargetUnreadable):
        return False  # an answer, a refusal, or retries already spent further in
    if isinstance(exc, TargetError):
        return exc.retryable
    return any(isinstance(e, _transient_types()) for e in _causes(exc))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class RetryingTarget:
    """A target whose reads are repeated on transient faults (see the module docstring).

    Everything else is the inner target's: writes, ``space``, ``describe`` and extra
    attributes (``append_only``, ``check``, ``retention``) pass through unchanged.
    """

    def __init__(
        self,
        inner: Target,
        policy: RetryPolicy = DEFAULT_POLICY,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.policy = policy
        self._rng = rng or random.Random()
        self.retries = 0  # reads repeated so far, for tests and diagnostics

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not defined here: the backend's extras.
        if name == "inner":  # not set yet (copy, unpickle): no endless recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def describe(self) -> str:
        return self.inner.describe()

    def _why(self, exc: BaseException) -> str:
        """The fault in one line, without the target's name that our message leads with."""
        return _one_line(exc).removeprefix(f"{self.describe()}: ")

    async def _backoff(self, op: str, key: str, attempt: int, exc: Exception) -> None:
        """After transient failure of attempt ``attempt`` (1-based): give up with
        TargetUnreadable if it was the last, else wait before the next one."""
        if attempt >= self.policy.attempts:
            raise TargetUnreadable(
                f"{self.describe()}: could not read {key!r} ({op}) after {attempt} attempts: "
                f"{self._why(exc)}",
                key=key,
                attempts=attempt,
                cause=exc,
                reason=self._why(exc),
            ) from exc
        wait = self.policy.delay(attempt - 1, self._rng)
        self.retries += 1
        # INFO, not WARNING: a read that succeeds on a retry is normal operation (and a
        # cron job's stderr stays quiet); the last failure is the error that counts.
        log.info(
            "%s: %s %r failed (attempt %d of %d), retrying in %.2f s: %s",
            self.describe(),
            op,
            key,
            attempt,
            self.policy.attempts,
            wait,
            self._why(exc),
        )
        await anyio.sleep(wait)

    async def _read(self, op: str, key: str, once: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await once()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await self._backoff(op, key, attempt, exc)

    # --- reads: retried --------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        return await self._read("get", key, lambda: self.inner.get(key))

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        async def once() -> bytes:
            data = await self.inner.get_range(key, offset, length)
            if len(data) < length:  # the end of the object, or a cut-short answer?
                info = await self.inner.stat(key)
                if info is not None and info.size > offset + len(data):
                    held = min(length, info.size - offset)
                    raise CutShort(
                        f"{self.describe()}: range of {key!r} at {offset}: got {len(data)} "
                        f"of {held} bytes (object is {info.size} bytes)"
                    )
            return data

        return await self._read("get_range", key, once)

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self._read("stat", key, lambda: self.inner.stat(key))

    async def exists(self, key: str) -> bool:
        return await self._read("exists", key, lambda: self.inner.exists(key))

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """A listing that fails midway is started again after the last key it yielded
        (listings are in ascending key order), so no key is yielded twice: with the
        backend's ``list_after`` (S3 StartAfter, SFTP skipping walked folders) if it has
        one, else from the start, skipping what was yielded. Attempts count consecutive
        failures: a listing that makes progress between faults is not given up."""
        last: str | None = None
        attempt = 0
        resume = getattr(self.inner, "list_after", None)
        while True:
            if resume is not None and last is not None:
                it = aiter(resume(prefix, last))
            else:
                it = aiter(self.inner.list(prefix))
            try:
                while True:
                    try:
                        info = await anext(it)
                    except StopAsyncIteration:
                        return
                    except Exception as exc:
                        if not is_transient(exc):
                            raise
                        attempt += 1
                        await self._backoff("list", prefix, attempt, exc)
                        break  # list again, after the last key yielded
                    if last is not None and info.key <= last:
                        continue  # yielded before the fault
                    last, attempt = info.key, 0
                    yield info
            finally:
                close = getattr(it, "aclose", None)
                if close is not None:
                    await close()

    # --- everything else: passed through --------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        await self.inner.put(key, data)

    async def create(self, key: str, data: bytes) -> bool:
        return await self.inner.create(key, data)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def space(self) -> SpaceInfo | None:
        return await self.inner.space()

    async def aclose(self) -> None:
        await self.inner.aclose()
