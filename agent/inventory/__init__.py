"""Coverage discovery, the agent's half: what on this host may need a backup.

:func:`collect` runs every probe (one module each: postgres, mariadb, redis, docker,
paths and systemd units, certificates) and gathers their items into one
:class:`~shared.wire.inventory.HostInventory`. A probe that cannot look (no docker
socket, no process table) adds a ProbeError instead of items; it never stops the
others. :func:`publish_inventories` sends one at start and every ``[inventory]
interval_s`` on ``mosaic.inventory.<agent>`` (only when agent.toml has that table); the
coordinator matches it against its datasets (coordinator/coverage.py).

Publishing waits for JetStream's ack, and retries with backoff until the stream has it
(the coordinator creates the stream; an agent started first would otherwise lose the
inventory until the next interval, an hour later). The probes read the process table
and the file system, and block: they run in a worker thread.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import anyio
from nats.errors import Error as NatsError

from agent.inventory import certs, docker, mariadb, paths, postgres, redis
from shared import subjects
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.inventory import InventoryConfig
from shared.vocab import utcnow
from shared.wire.base import encode
from shared.wire.inventory import HostInventory, InventoryItem, ProbeError

log = logging.getLogger(__name__)

Probe = Callable[[InventoryConfig], tuple[list[InventoryItem], list[ProbeError]]]
PROBES: dict[str, Probe] = {
    "postgres": postgres.probe,
    "mariadb": mariadb.probe,
    "redis": redis.probe,
    "docker": docker.probe,
    "paths": paths.probe,
    "certs": certs.probe,
}
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 60.0
PUBLISH_TIMEOUT_S = 10.0


def collect(cfg: AgentConfig, *, hostname: str | None = None) -> HostInventory:
    """Run every probe now (blocking) and return what they found."""
    inv_cfg = cfg.inventory or InventoryConfig()
    items: list[InventoryItem] = []
    errors: list[ProbeError] = []
    for name, probe in PROBES.items():
        try:
            found, failed = probe(inv_cfg)
        except (OSError, ValueError) as exc:  # e.g. proc_root missing
            log.warning("inventory probe %s failed: %s", name, exc)
            errors.append(ProbeError(probe=name, message=str(exc)))
            continue
        items += found
        errors += failed
    return HostInventory(
        agent=cfg.name,
        hostname=hostname or socket.gethostname(),
        at=utcnow(),
        interval_s=inv_cfg.interval_s,
        items=items,
        errors=errors,
    )


async def publish(bus: Bus, inv: HostInventory) -> None:
    """Publish one inventory and wait until the stream stored it (raises on failure)."""
    await bus.js.publish(
        subjects.inventory(inv.agent),
        encode(inv),
        stream=subjects.INVENTORY_STREAM,
        timeout=PUBLISH_TIMEOUT_S,
    )


async def publish_inventories(bus: Bus, cfg: AgentConfig) -> None:
    """Inventory now and every ``interval_s``, until cancelled (nothing without an
    ``[inventory]`` table, or with ``enabled = false``)."""
    if cfg.inventory is None or not cfg.inventory.enabled:
        return
    interval = cfg.inventory.interval_s
    while True:
        # abandoned on cancel: a stopping agent does not wait for a slow probe
        inv = await anyio.to_thread.run_sync(collect, cfg, abandon_on_cancel=True)
        wait, deadline = RETRY_FIRST_S, anyio.current_time() + interval
        while True:
            try:
                await publish(bus, inv)
                n, e = len(inv.items), len(inv.errors)
                log.info("inventory sent: %d items, %d probe errors", n, e)
                break
            except (NatsError, TimeoutError) as exc:  # no stream yet, NATS away
                if anyio.current_time() + wait >= deadline:
                    log.warning(
                        "inventory not stored (%r); the next one is due in %.0f s",
                        exc,
                        deadline - anyio.current_time(),
                    )
                    break  # the next round collects afresh
                log.info("inventory not stored yet, retry in %.0f s: %r", wait, exc)
            await anyio.sleep(wait)
            wait = min(wait * 2, RETRY_MAX_S)
        await anyio.sleep(max(deadline - anyio.current_time(), 0.0))
