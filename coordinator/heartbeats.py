"""The agents' last heartbeats, as this coordinator has seen them.

Agents publish on ``mosaic.heartbeat.<agent>`` (agent/heartbeat.py). The stream
``MOSAIC_HEARTBEATS`` keeps only the last message per agent, so every coordinator —
active or standby, just started or running for months — reads each agent's last
heartbeat at once through an ordered consumer that starts at the last message per
subject, then follows new ones. Nothing is written to the catalog: the stream is the
durable copy, and a heartbeat is worthless a few intervals later anyway.

A heartbeat counts only when the agent it names is the agent of its subject (NATS
permissions let an agent publish only on its own subject), so one agent cannot keep
another one "alive". When it was seen is the time NATS stored it (the server's clock,
the same for all agents), not the agent's own clock.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec
from nats.errors import Error as NatsError
from nats.js import api

from shared import replicas, subjects
from shared.bus import Bus
from shared.errors import BusError
from shared.vocab import utcnow
from shared.wire.monitoring import Heartbeat, heartbeat_decoder

log = logging.getLogger(__name__)

# A heartbeat older than this is dropped from the stream: an agent that was removed
# stops being listed a week later (one still configured keeps alerting as never seen).
KEEP_DAYS = 7


@dataclass(frozen=True)
class Seen:
    heartbeat: Heartbeat
    at: datetime  # when NATS stored it


class HeartbeatStore:
    """The last heartbeat per agent; :meth:`run` keeps it current."""

    def __init__(self) -> None:
        self._last: dict[str, Seen] = {}
        self.started_at: datetime = utcnow()

    def last(self) -> Mapping[str, Seen]:
        return dict(self._last)

    def record(self, subject: str, data: bytes, at: datetime) -> Heartbeat | None:
        """Keep a heartbeat if it is well-formed and from the agent of its subject."""
        try:
            hb = heartbeat_decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.warning("ignoring undecodable heartbeat on %s: %s", subject, exc)
            return None
        if subject != subjects.heartbeat(hb.agent):
            log.warning("ignoring heartbeat on %s: it names agent %s", subject, hb.agent)
            return None
        old = self._last.get(hb.agent)
        if old is None or at >= old.at:
            self._last[hb.agent] = Seen(hb, at)
        return hb

    async def run(self, bus: Bus, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Create the stream if needed, follow it until cancelled."""
        self.started_at = utcnow()
        cfg = api.StreamConfig(
            name=subjects.HEARTBEATS_STREAM,
            subjects=[subjects.heartbeats_all()],
            retention=api.RetentionPolicy.LIMITS,
            max_msgs_per_subject=1,
            max_age=float(timedelta(days=KEEP_DAYS).total_seconds()),
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
        )
        try:
            await replicas.ensure_stream(bus.js, cfg)  # R copies (shared/replicas.py)
        except (NatsError, TimeoutError) as exc:
            raise BusError(
                f"stream {subjects.HEARTBEATS_STREAM} could not be set up: {exc!r}"
            ) from exc

        async def on_msg(msg: Any) -> None:
            meta = msg.metadata
            at = meta.timestamp if meta is not None and meta.timestamp else utcnow()
            self.record(msg.subject, msg.data, at)

        sub = await bus.js.subscribe(
            subjects.heartbeats_all(),
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        )
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await sub.unsubscribe()
                except NatsError as exc:  # the connection may already be gone
                    log.debug("heartbeat subscription not closed cleanly: %r", exc)
