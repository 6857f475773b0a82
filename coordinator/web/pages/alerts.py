"""The alerts (``/alerts``): what holds now by the alerter's rules over the same
catalog and heartbeats (failing datasets, agents lost, storage low, replication lag,
3-2-1), critical first. The alerter's own firing set lives in the active coordinator's
memory (``GET /api/v1/alerts``); these are the same rules, evaluated here."""

from __future__ import annotations

from aiohttp import web

from coordinator.web import view
from coordinator.web.context import WebContext
from coordinator.web.guard import require
from coordinator.web.pages.overview import alerts_now
from coordinator.web.render import page


def routes(ctx: WebContext) -> list[web.RouteDef]:
    view.install_filters(ctx.templates)

    @require("viewer")
    async def alerts(request: web.Request) -> web.StreamResponse:
        p = view.paging(request, default=100)
        ov = await ctx.status.read()
        found = sorted(
            await alerts_now(ctx, ov), key=lambda f: (f.severity != "critical", f.rule, f.dataset)
        )
        shown = found[p.offset : p.offset + p.limit]
        prev, nxt = p.links(len(shown), len(found))
        return page(
            ctx, request, "alerts.html", alerts=shown, total=len(found), prev=prev, next=nxt
        )

    return [web.get("/alerts", alerts)]
