"""Where alert transitions go: a NATS stream for other systems, and a webhook in
Alertmanager's JSON format for people.

Both receive only transitions (started firing, resolved), never the same state twice.
A sink never raises for a failed delivery: it logs and returns, because a broken
receiver must neither stop the coordinator nor keep the other sinks from getting the
alert. The alert state is kept either way; a delivery that failed every attempt is not
repeated on the next evaluation.

NATS: each transition is one :class:`~shared.wire.monitoring.Alert` on
``mosaic.alert.<rule>.<dataset>``, stored in its own JetStream stream ``MOSAIC_ALERTS``
(limits retention) so a consumer that was offline reads what it missed, with a durable
consumer or ``deliver_policy=last_per_subject`` for the current state. Not on
``MOSAIC_EVENTS`` under ``mosaic.event.…``: the coordinator's own durable consumer reads
everything there as job events. The stream is created here, idempotently, because the
alerter is its only writer (``shared/bus.py`` owns the job and event streams).

Webhook: one POST per evaluation carrying every transition, in the body Alertmanager's
``POST /api/v2/alerts`` takes (so Alertmanager can be the receiver and route, group and
silence): firing alerts carry no ``endsAt``, resolved ones carry the time they resolved.
Each POST has a timeout and a bounded number of attempts with backoff; a 4xx other than
408/429 is not retried (the receiver refuses the document, repeating will not help).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
import anyio
import msgspec
import yarl
from nats.errors import Error as NatsError
from nats.js import api

from shared import replicas, subjects
from shared.bus import Bus
from shared.errors import BusError
from shared.wire.base import encode
from shared.wire.monitoring import Alert

log = logging.getLogger(__name__)

ALERTS_MAX_AGE_S = 90 * 86400.0
_json = msgspec.json.Encoder()


class Sink(Protocol):
    async def send(self, alerts: Sequence[Alert]) -> None:
        """Deliver transitions; log failures, never raise for them."""


class NatsSink:
    """Publishes each transition to the ``MOSAIC_ALERTS`` stream."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def prepare(self) -> None:
        """Create or update the alerts stream (safe on every start)."""
        cfg = api.StreamConfig(
            name=subjects.ALERTS_STREAM,
            subjects=[subjects.alerts_all()],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=ALERTS_MAX_AGE_S,
            duplicate_window=120.0,
        )
        try:
            await replicas.ensure_stream(self.bus.js, cfg)  # R copies (shared/replicas.py)
        except (NatsError, TimeoutError) as exc:
            raise BusError(f"stream {subjects.ALERTS_STREAM} could not be set up: {exc!r}") from exc

    async def send(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            # Same transition published twice (a retry) is stored once.
            msg_id = f"{a.fingerprint}:{a.status}:{a.starts_at.isoformat()}"
            try:
                await self.bus.js.publish(
                    subjects.alert(a.rule, a.dataset),
                    encode(a),
                    stream=subjects.ALERTS_STREAM,
                    headers={"Nats-Msg-Id": msg_id},
                )
            except (NatsError, TimeoutError) as exc:
                log.error("alert %s (%s) not published on NATS: %r", a.fingerprint, a.status, exc)


def alertmanager_payload(
    alerts: Sequence[Alert], generator_url: str | None = None
) -> list[dict[str, Any]]:
    """The alerts as Alertmanager's ``postableAlerts`` list."""
    out: list[dict[str, Any]] = []
    for a in alerts:
        labels = {"alertname": a.rule, "dataset": a.dataset, "severity": a.severity}
        if a.target:
            labels["target"] = a.target
        doc: dict[str, Any] = {
            "labels": labels,
            "annotations": {"summary": a.summary, "description": a.description},
            "startsAt": a.starts_at.isoformat(),
        }
        if a.ends_at is not None:
            doc["endsAt"] = a.ends_at.isoformat()
        if generator_url:
            doc["generatorURL"] = generator_url
        out.append(doc)
    return out


def safe_url(url: str) -> str:
    """The URL without user, password or query (webhook tokens live there), for logs."""
    try:
        return str(yarl.URL(url).with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<webhook>"


class WebhookSink:
    """POSTs transitions to ``url``; an async context manager (it owns an HTTP session)."""

    def __init__(
        self,
        url: str,
        *,
        generator_url: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 1.0,
    ) -> None:
        self.url = url
        self.generator_url = generator_url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WebhookSink:
        self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.close()

    async def send(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        if self._session is None:
            raise RuntimeError("WebhookSink.send outside `async with`")
        body = _json.encode(alertmanager_payload(alerts, self.generator_url))
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                await anyio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                async with self._session.post(
                    self.url, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    if resp.status < 300:
                        return
                    problem = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = repr(exc)
        log.error(
            "webhook %s: %d alert(s) not delivered after %d attempt(s): %s",
            safe_url(self.url),
            len(alerts),
            attempt + 1,
            problem,
        )
