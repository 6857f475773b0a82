"""What the system says about itself outside jobs: alerts and agent heartbeats.

Wire messages like those of :mod:`shared.wire` (same ``schema`` field and evolution
rules), on subjects of their own: they are not job events, so the coordinator's events
consumer never sees them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.wire.base import Msg as _Msg

# --- alerts (``mosaic.alert.<rule>.<dataset>``, stream MOSAIC_ALERTS) -------------------


class Alert(_Msg, frozen=True, kw_only=True, tag="alert"):
    """One alert as it starts firing or resolves (and as ``GET /api/v1/alerts`` lists it).

    Not part of :data:`Event`: alerts are about datasets, not jobs, and live on their own
    subjects. ``fingerprint`` is ``rule/dataset/target`` (target empty when the rule is
    not about one target): the identity under which the alert is deduplicated.
    ``ends_at`` is set only when ``status`` is ``resolved``.
    """

    status: Literal["firing", "resolved"]
    rule: str
    dataset: str
    target: str | None = None
    severity: Literal["critical", "warning"] = "critical"
    fingerprint: str
    summary: str
    description: str = ""
    starts_at: datetime
    ends_at: datetime | None = None
    coordinator: str = ""


alert_decoder = msgspec.json.Decoder(Alert)


# --- heartbeats (``mosaic.heartbeat.<agent>``, stream MOSAIC_HEARTBEATS) ----------------


class KeyCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The agent's last proof that its key works on one target (agent/target_health.py):
    a full key opened the repository and its newest manifest; a write-only key was
    found to belong to the repository (its index key opens the index). ``ok`` None:
    nothing to prove yet (no repository there). ``detail``: one line, the reason when
    not ok."""

    ok: bool | None = None
    detail: str = ""
    at: datetime | None = None
    write_only: bool = False


class TargetSpace(msgspec.Struct, frozen=True, kw_only=True):
    """One of the agent's targets: its tags and, where the medium knows, its space."""

    name: str
    kind: str  # local, s3, sftp
    media: str
    location: str
    tier: str
    # Bytes as ``df`` counts them (engine/storage/base.py SpaceInfo): ``total`` the size,
    # ``free`` available to the agent (f_bavail), ``used`` f_blocks − f_bfree. Blocks
    # reserved for root are in neither, so how full = used / (used + free).
    total: int | None = None  # None: unknown (object stores, servers without statvfs)
    free: int | None = None
    used: int | None = None  # None also from agents older than this field
    append_only: bool = False  # this agent may not delete there (no prune jobs)
    # Why the agent cannot reach it now (one line; agent/target_health.py), None when
    # it answers. The agent runs its other targets' jobs meanwhile.
    down: str | None = None
    key_check: KeyCheck | None = None  # None: not checked yet, or an older agent


class Heartbeat(_Msg, frozen=True, kw_only=True, tag="heartbeat"):
    """An agent is alive: sent every ``interval_s``; the last one per agent is kept."""

    agent: str
    hostname: str
    version: str
    at: datetime
    interval_s: float
    uptime_s: float
    running_job: str | None = None
    targets: list[TargetSpace] = msgspec.field(default_factory=list)


heartbeat_decoder = msgspec.json.Decoder(Heartbeat)
