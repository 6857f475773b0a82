"""What an agent found on its host (``mosaic.inventory.<agent>``, stream MOSAIC_INVENTORY).

Published by agent/inventory/ at start and every ``[inventory] interval_s``; the stream
keeps the newest per agent, so any coordinator (and any other system) reads every
agent's last inventory at once. coordinator/coverage.py matches the items against the
configured datasets. The wire rules of :mod:`shared.wire` apply: new fields get defaults.

An item's identity is (agent, ``kind``, ``key``); ``key`` by kind:

- ``postgres``: the cluster's data directory; ``mariadb``: the server's data directory
- ``redis``: its TCP port (``"6379"``), or its folder when it listens on no port
- ``docker_volume``, ``docker_container``, ``compose_project``: the docker name
- ``config_path``, ``certificate``: the path; ``systemd_unit``: the unit's name
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.wire.base import Msg as _Msg

ItemKind = Literal[
    "postgres",
    "mariadb",
    "redis",
    "docker_volume",
    "docker_container",
    "compose_project",
    "config_path",
    "systemd_unit",
    "certificate",
]


class InventoryItem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing on the host that may hold data worth a backup.

    - ``path``: data directory (postgres, mariadb), working folder (redis), mount point
      (docker_volume), the compose project's working folder, the file or folder itself
      (config_path, systemd_unit, certificate).
    - ``port``: TCP port it listens on (databases); ``sockets``: its unix sockets (their
      folder for postgres, which the ``host`` of a postgres source names).
    - ``databases``: PostgreSQL databases (when the agent could connect).
    - ``volumes`` / ``paths``: a container's named volumes and bind-mount sources; a
      compose project's config files in ``paths``.
    - ``project``: the compose project a container or volume belongs to.
    - ``subject`` / ``not_after``: a certificate's subject (RFC 4514) and expiry.
    """

    kind: ItemKind
    key: str
    detail: str = ""
    path: str | None = None
    port: int | None = None
    sockets: list[str] = []
    databases: list[str] = []
    volumes: list[str] = []
    paths: list[str] = []
    project: str = ""
    subject: str = ""
    not_after: datetime | None = None


class ProbeError(msgspec.Struct, frozen=True, kw_only=True):
    """A probe that could not look (no docker socket, a cluster it could not log into)."""

    probe: str  # postgres, mariadb, redis, docker, paths, systemd, certs
    message: str


class HostInventory(_Msg, frozen=True, kw_only=True, tag="inventory"):
    agent: str
    hostname: str
    at: datetime
    interval_s: float = 3600.0
    items: list[InventoryItem] = []
    errors: list[ProbeError] = []


inventory_decoder = msgspec.json.Decoder(HostInventory)
