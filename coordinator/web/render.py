"""Rendering a page: the template with what every page shows (the user, the CSRF token
for its forms, the navigation)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coordinator.web.context import WebContext
from coordinator.web.guard import user_of

# (path, title, least role): the navigation bar, in order
NAV = (
    ("/", "Overview", "viewer"),
    ("/agents", "Agents", "viewer"),
    ("/alerts", "Alerts", "viewer"),
    ("/drills", "Drills", "viewer"),
    ("/audit", "Audit", "viewer"),
    ("/actions", "Actions", "operator"),
    ("/admin", "Users & tokens", "admin"),
)


def page(
    ctx: WebContext, request: web.Request, template: str, *, status: int = 200, **values: Any
) -> web.Response:
    user = user_of(request)
    nav = [(p, t) for p, t, role in NAV if user is not None and user.may(role)]  # type: ignore[arg-type]
    html = ctx.templates.get_template(template).render(
        user=user,
        csrf=user.csrf if user is not None else None,
        nav=nav,
        path=request.path,
        coordinator=ctx.cfg.name,
        **values,
    )
    return web.Response(text=html, content_type="text/html", status=status)
