"""Publishing to a replicated stream through a leader change: retried, stored once;
and fetching from a pull consumer through one (:func:`fetch_one`).

When the server leading a stream dies, the stream has no leader until the others elect
one (a few seconds); a publish meanwhile gets "no response from stream" (503) or times
out, and a client whose server died waits for its reconnect. Each publish is
retried for up to ``RETRY_S``, with one ``Nats-Msg-Id`` for all its tries, so the
stream's duplicate window (every mosaic-backup stream has one, longer than
``RETRY_S``) stores it once even when a try that looked failed had been stored.

A message without an id of its own gets the hash of its subject and bytes: the same
event published twice is the same message, and two different events never share one.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import anyio
from nats.aio.msg import Msg
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from shared.errors import BusError

log = logging.getLogger("shared.bus")

RETRY_S = 60.0  # below the 120 s duplicate window of the jobs and events streams
_RETRIED = (
    NoStreamResponseError,
    NoRespondersError,
    NatsTimeout,
    TimeoutError,
    ServiceUnavailableError,
    ConnectionReconnectingError,
)


def message_id(subject: str, payload: bytes) -> str:
    return hashlib.blake2b(subject.encode() + b"\0" + payload, digest_size=16).hexdigest()


async def publish_stored(
    js: Any,
    subject: str,
    payload: bytes,
    *,
    stream: str,
    headers: dict[str, str] | None = None,
    retry_s: float = RETRY_S,
) -> Any:
    """``js.publish`` until the stream acknowledges it (the PubAck), or ``retry_s`` has
    passed: then the last error is raised."""
    hdrs = dict(headers or {})
    hdrs.setdefault("Nats-Msg-Id", message_id(subject, payload))
    deadline = anyio.current_time() + retry_s
    wait = 0.2
    while True:
        try:
            return await js.publish(subject, payload, stream=stream, headers=hdrs)
        except _RETRIED as exc:
            if anyio.current_time() + wait > deadline:
                raise
            log.info("publish to %s not stored yet (%r); trying again", subject, exc)
        await anyio.sleep(wait)
        wait = min(wait * 2, 2.0)


async def fetch_one(sub: Any, timeout: float) -> Msg | None:
    """One message from a pull subscription, or None when none arrived in ``timeout``.

    "JetStream temporarily unavailable" (503: the cluster is electing leaders, or is
    restarting) is None too, after a pause: the caller asks again, and the consumer is
    there once a leader is. A consumer that does not exist is a BusError."""
    try:
        msgs = await sub.fetch(1, timeout=timeout)
    except (NatsTimeout, TimeoutError):
        return None
    except ServiceUnavailableError as exc:
        log.info("JetStream unavailable for now (%r); fetching again", exc)
        await anyio.sleep(min(timeout, 1.0))
        return None
    except (NotFoundError, APIError) as exc:
        raise BusError(f"consumer vanished: {exc}") from exc
    return msgs[0] if msgs else None
