"""What every console page gets: the config, the catalog, NATS, the status builder and
the templates (built once by ``server.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2

from coordinator.catalog.base import Catalog
from coordinator.heartbeats import HeartbeatStore
from coordinator.status import StatusBuilder
from shared.bus import Bus
from shared.config.coordinator import CoordinatorConfig
from shared.vocab import utcnow


@dataclass
class WebContext:
    cfg: CoordinatorConfig
    catalog: Catalog
    bus: Bus
    heartbeats: HeartbeatStore
    status: StatusBuilder
    templates: jinja2.Environment
    clock: Callable[[], datetime] = utcnow
    # parts the pages share that are built by their own modules (auth stores, progress
    # feed, …), by name
    parts: dict[str, Any] = field(default_factory=dict)
