"""The agents (``/agents``): heartbeat age, version, host, uptime, running job, and each
target's space and tags as the agent's heartbeats report them."""

from __future__ import annotations

from aiohttp import web

from coordinator.web import view
from coordinator.web.context import WebContext
from coordinator.web.guard import require
from coordinator.web.render import page


def routes(ctx: WebContext) -> list[web.RouteDef]:
    view.install_filters(ctx.templates)

    @require("viewer")
    async def agents(request: web.Request) -> web.StreamResponse:
        reply = await ctx.status.reply(limit=1)
        counts: dict[str, int] = {}
        for d in ctx.cfg.datasets.values():
            counts[d.agent] = counts.get(d.agent, 0) + 1
        return page(
            ctx,
            request,
            "agents.html",
            agents=reply.agents,
            targets=reply.targets,
            counts=counts,
            now=ctx.clock(),
            age=view.age,
        )

    return [web.get("/agents", agents)]
