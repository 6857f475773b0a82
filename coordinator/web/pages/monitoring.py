"""``/metrics`` and ``GET /api/v1/backup/status`` on the console too, answered by the
coordinator's own HTTP API code (coordinator/http.py :class:`HttpApi`, built here on
the console's catalog and status builder), so the two ports give the same documents.

Both need a viewer (or higher): an API token (``Authorization: Bearer``) for
Prometheus and scripts, or a session. ``/metrics`` answers anonymously only when
``[auth] anonymous_metrics = true``.
"""

from __future__ import annotations

from aiohttp import web

from coordinator.api_models import API_PREFIX
from coordinator.http import BadRequest, HttpApi
from coordinator.web.context import WebContext
from coordinator.web.guard import refuse, require, user_of


def routes(ctx: WebContext) -> list[web.RouteDef]:
    api = HttpApi(None, ctx.catalog, ctx.status.reply)
    scrape = require("viewer")(api.get_metrics)

    async def metrics(request: web.Request) -> web.StreamResponse:
        if user_of(request) is None and ctx.cfg.auth.anonymous_metrics:
            return await api.get_metrics(request)
        return await scrape(request)

    metrics.required_role = "viewer"  # type: ignore[attr-defined]  # or anonymous, if configured

    @require("viewer")
    async def status(request: web.Request) -> web.StreamResponse:
        try:
            return await api.get_status(request)
        except BadRequest as exc:
            return refuse(request, 400, str(exc))

    return [
        web.get("/metrics", metrics),
        web.get(f"{API_PREFIX}/backup/status", status),
    ]
