"""The console's process: the catalog, NATS, the same status parts as a coordinator, and
the aiohttp application with every page of ``coordinator/web/pages``.

Started by ``mosaic-backup console run --config coordinator.toml``; it needs the
``[web]`` table. It follows the heartbeats and inventories on NATS itself, so its status
answers equal a coordinator's; it never holds the coordinators' lease.
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
from typing import Any

import anyio
import jinja2
from aiohttp import web

from coordinator import host_drill_status, windows
from coordinator.catalog import open_catalog
from coordinator.coverage import Coverage
from coordinator.heartbeats import HeartbeatStore
from coordinator.status import StatusBuilder
from coordinator.tls import server_context
from coordinator.web import auth
from coordinator.web.context import WebContext
from coordinator.web.pages import PAGES
from shared.bus import Bus
from shared.config.coordinator import CoordinatorConfig
from shared.config.web import WebConfig
from shared.errors import ConfigError
from shared.tasks import task_group

log = logging.getLogger(__name__)


def templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("coordinator.web", "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
    )


def build_app(ctx: WebContext) -> web.Application:
    """The application: the auth middleware, the static files, every page module."""
    app = web.Application(middlewares=[auth.middleware(ctx)])
    app.on_response_prepare.append(auth.on_prepare(ctx))  # security headers on every answer
    app.router.add_routes(auth.routes(ctx))
    for name in PAGES:
        module = importlib.import_module(f"coordinator.web.pages.{name}")
        app.router.add_routes(module.routes(ctx))
    static = importlib.resources.files("coordinator.web") / "static"
    app.router.add_static("/static", str(static))
    return app


class Console:
    """The console process's parts; ``port`` is the bound port while it serves."""

    def __init__(self, cfg: CoordinatorConfig) -> None:
        if cfg.web is None:
            raise ConfigError("coordinator.toml has no [web] table: add one to run the console")
        self.cfg = cfg
        self.web: WebConfig = cfg.web
        self.port: int | None = None
        self.ctx: WebContext | None = None

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        catalog = await open_catalog(self.cfg.catalog.url)
        try:
            bus = await Bus.connect_with(self.cfg, name=f"{self.cfg.name}-console")
            try:
                await self._serve(catalog, bus, task_status)
            finally:
                with anyio.CancelScope(shield=True):
                    await bus.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await catalog.aclose()

    async def _serve(self, catalog: Any, bus: Bus, task_status: Any) -> None:
        heartbeats = HeartbeatStore()
        status = StatusBuilder(self.cfg, catalog, heartbeats)
        win = windows.Windows(self.cfg, catalog, heartbeats, clock=status.clock)
        status.fillers.append(win.fill)
        coverage = Coverage(self.cfg, status)
        host_drill_status.attach(status)
        ctx = self.ctx = WebContext(self.cfg, catalog, bus, heartbeats, status, templates())
        runner = web.AppRunner(build_app(ctx), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            async with task_group() as tg:
                await tg.start(heartbeats.run, bus)
                await tg.start(coverage.run, bus)
                site = web.TCPSite(
                    runner,
                    self.web.listen,
                    self.web.port,
                    ssl_context=server_context(self.web, "web"),
                )
                await site.start()
                self.port = int(runner.addresses[0][1])
                scheme = "https" if self.web.tls else "http"
                log.info("console on %s://%s:%d/", scheme, self.web.listen, self.port)
                task_status.started()
        finally:
            self.port = None
            with anyio.CancelScope(shield=True):
                feed = ctx.parts.get("progress")  # open event streams end first
                if feed is not None:
                    await feed.close()
                await runner.cleanup()
