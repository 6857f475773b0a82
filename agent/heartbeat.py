"""The agent's heartbeat: "I am alive, this is what I run, this is how full my targets are".

Sent every ``heartbeat_interval_s`` on ``mosaic.heartbeat.<agent>`` with core NATS: a
heartbeat that cannot be delivered is simply late, and the next one replaces it, so
waiting for an ack would only let a slow server stall the agent. The coordinator keeps
the last one per agent (stream ``MOSAIC_HEARTBEATS``), alerts when three in a row are
missing, and reads the targets' tags (3-2-1) and free space (storage alerts) from it.

Free space is asked of each target every time (``Target.space``: local disk via
``statvfs``, SFTP via the server's statvfs extension, S3 has none). A target that fails
to answer is reported without space rather than holding the heartbeat back: being
alive matters more than the numbers. A target that was down at start
(agent/target_health.py) is looked at again by that query and reported with ``down``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from importlib import metadata

import anyio
from nats.errors import Error as NatsError

from engine.storage.base import Target
from shared import subjects
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.targets import LocalTargetConfig, SftpTargetConfig
from shared.errors import MosaicError
from shared.vocab import utcnow
from shared.wire.base import encode
from shared.wire.monitoring import Heartbeat, KeyCheck, TargetSpace

log = logging.getLogger(__name__)

KeyChecks = Callable[[str], KeyCheck | None]  # target → the last key check (target_health.py)

# A target that takes longer than this to report its space is reported without it.
SPACE_TIMEOUT_S = 10.0


def version() -> str:
    try:
        return metadata.version("mosaic-backup")
    except metadata.PackageNotFoundError:
        return "unknown"


async def target_space(
    name: str, cfg: AgentConfig, target: Target | None, key_checks: KeyChecks | None = None
) -> TargetSpace:
    """One target's tags from the config, and its space where the target can tell."""
    tc = cfg.targets[name]
    total = free = used = None
    space = getattr(target, "space", None)  # optional: a wrapped target may lack it
    if space is not None:
        try:
            with anyio.fail_after(SPACE_TIMEOUT_S):
                info = await space()
            if info is not None:
                total, free, used = info.total, info.free, info.used
        except (MosaicError, OSError, TimeoutError) as exc:
            log.warning("target %s: free space unknown: %s", name, exc)
    return TargetSpace(
        name=name,
        kind=str(type(tc).__struct_config__.tag),
        media=tc.media,
        location=tc.location,
        tier=tc.tier,
        total=total,
        free=free,
        used=used,
        append_only=(
            target.capabilities.append_only
            if target is not None
            else isinstance(tc, LocalTargetConfig | SftpTargetConfig) and tc.append_only
        ),
        down=getattr(target, "down", None),  # a DownTarget's state, after its space() look
        key_check=key_checks(name) if key_checks is not None else None,
    )


async def heartbeat(
    cfg: AgentConfig,
    targets: Mapping[str, Target],
    *,
    started: float,
    running_job: str | None,
    hostname: str | None = None,
    key_checks: KeyChecks | None = None,
) -> Heartbeat:
    return Heartbeat(
        agent=cfg.name,
        hostname=hostname or socket.gethostname(),
        version=version(),
        at=utcnow(),
        interval_s=cfg.heartbeat_interval_s,
        uptime_s=round(time.monotonic() - started, 3),
        running_job=running_job,
        targets=[
            await target_space(n, cfg, targets.get(n), key_checks) for n in sorted(cfg.targets)
        ],
    )


async def send_heartbeats(
    bus: Bus,
    cfg: AgentConfig,
    targets: Mapping[str, Target],
    running_job: Callable[[], str | None],
    key_checks: KeyChecks | None = None,
) -> None:
    """Publish a heartbeat now and then every ``heartbeat_interval_s``, until cancelled."""
    started = time.monotonic()
    subject = subjects.heartbeat(cfg.name)
    while True:
        hb = await heartbeat(
            cfg, targets, started=started, running_job=running_job(), key_checks=key_checks
        )
        try:
            await bus.nc.publish(subject, encode(hb))
        except NatsError as exc:  # the next one may get through; jobs must keep running
            log.warning("heartbeat not sent: %r", exc)
        await anyio.sleep(cfg.heartbeat_interval_s)
