"""How many copies JetStream keeps of each mosaic-backup stream and KV bucket: the one
place every creator asks (shared/bus.py, coordinator/audit.py, alert_sinks.py,
heartbeats.py, coverage.py, leader.py).

The number ``R``:

- the coordinator's ``stream_replicas`` when set (1..5, checked at load);
- else ``min(3, servers in the cluster)``. The cluster's size is learnt from the INFO
  the connected server sent: ``connect_urls`` lists the client URLs of every server of
  its cluster, itself included (seen with nats-server 2.15). A lone server, or one run
  with ``no_advertise``, sends none: 1. The list is what the server knew when this
  client connected, so a coordinator started while a member is down counts one fewer —
  set ``stream_replicas`` in production rather than rely on the count.

Only the coordinator changes the replicas of an existing stream (its connection is
*managed*: :func:`manage` by :meth:`shared.bus.Bus.connect_with` for a
coordinator's config). It raises an R1 stream to R3 (JetStream scales a stream's
replicas in place) or lowers it when the setting says so. Anyone else who creates a
stream (an agent in one shared account, as with quickstart) creates it with the
derived R, and updates an existing one keeping the replicas it has, so that an agent
never undoes what the coordinator's setting chose.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import anyio
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import BadRequestError

DEFAULT_MAX = 3  # three copies survive one server's loss and keep a quorum
MIN_REPLICAS, MAX_REPLICAS = 1, 5  # JetStream's own bounds
SCALE_WAIT_S = 15.0  # for new peers to catch up after a scale-up

# connection -> the coordinator's stream_replicas (None: derive); absent: not managed
_managed: weakref.WeakKeyDictionary[NATS, int | None] = weakref.WeakKeyDictionary()


def manage(nc: NATS, setting: int | None) -> None:
    """Mark ``nc`` as the coordinator's: its creators set the replicas of existing
    streams too, to ``setting`` (None: :func:`cluster_size`-derived)."""
    _managed[nc] = setting


def cluster_size(nc: NATS) -> int:
    """Servers in the cluster of the server ``nc`` is connected to (1 if alone)."""
    info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
    urls = info.get("connect_urls") or []
    return max(1, len(set(urls)))


def _nc_of(js_or_nc: Any) -> NATS:
    return js_or_nc if isinstance(js_or_nc, NATS) else js_or_nc._nc


def replicas(js_or_nc: Any) -> int:
    """``R`` for a stream or bucket created over this connection (or JetStream context)."""
    nc = _nc_of(js_or_nc)
    setting = _managed.get(nc)
    if setting is not None:
        return setting
    return min(DEFAULT_MAX, cluster_size(nc))


def is_managed(js_or_nc: Any) -> bool:
    return _nc_of(js_or_nc) in _managed


async def ensure_stream(js: Any, cfg: api.StreamConfig) -> api.StreamInfo:
    """Create ``cfg`` with :func:`replicas` copies, or update the existing stream to it
    (replicas too on a managed connection; kept as they are otherwise)."""
    want = replace_replicas(cfg, replicas(js))
    try:
        info: api.StreamInfo = await js.add_stream(want)
        return info
    except BadRequestError:
        pass  # exists with another config
    assert cfg.name is not None
    have = (await js.stream_info(cfg.name)).config.num_replicas or 1
    if not is_managed(js):
        want = replace_replicas(cfg, have)
    updated: api.StreamInfo = await js.update_stream(want)
    if (want.num_replicas or 1) != have:
        await await_peers(js, cfg.name, want.num_replicas or 1)
    return updated


async def update_stream(js: Any, cfg: api.StreamConfig) -> api.StreamInfo:
    """``js.update_stream`` with the replicas :func:`ensure_stream` would choose (an
    update without them would scale a replicated stream back to one copy)."""
    assert cfg.name is not None
    n = replicas(js)
    if not is_managed(js):
        n = (await js.stream_info(cfg.name)).config.num_replicas or 1
    info: api.StreamInfo = await js.update_stream(replace_replicas(cfg, n))
    return info


async def ensure_bucket_replicas(js: Any, bucket: str) -> None:
    """Raise (or lower) an existing KV bucket's stream ``KV_<bucket>`` to
    :func:`replicas`, on a managed connection only (a bucket is a stream)."""
    if not is_managed(js):
        return
    info = await js.stream_info(f"KV_{bucket}")
    want = replicas(js)
    if (info.config.num_replicas or 1) != want:
        await js.update_stream(replace_replicas(info.config, want))
        await await_peers(js, f"KV_{bucket}", want)


async def await_peers(js: Any, stream: str, n: int, limit: float = SCALE_WAIT_S) -> None:
    """Wait (at most ``limit``) until ``stream`` has a leader and ``n - 1`` current
    followers: right after a scale-up, JetStream refuses consumers on it ("insufficient
    resources") while the new peers catch up. Past ``limit`` the caller goes on and the
    next request says what is wrong."""
    with anyio.move_on_after(limit):
        while True:
            c = (await js.stream_info(stream)).cluster
            peers = [p for p in (c.replicas or []) if p.current] if c is not None else []
            if n == 1 or (c is not None and c.leader and len(peers) >= n - 1):
                return
            await anyio.sleep(0.1)


def replace_replicas(cfg: api.StreamConfig, n: int) -> api.StreamConfig:
    return dataclasses.replace(cfg, num_replicas=n)
