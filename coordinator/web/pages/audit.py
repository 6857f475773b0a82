"""The audit trail (``/audit``): newest first, filtered by action (in the query), actor
and dataset (over the newest :data:`AUDIT_SCAN` entries of that action), paged."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from coordinator.web import view
from coordinator.web.context import WebContext
from coordinator.web.guard import require
from coordinator.web.render import page

AUDIT_SCAN = 5000


def routes(ctx: WebContext) -> list[web.RouteDef]:
    view.install_filters(ctx.templates)

    @require("viewer")
    async def audit(request: web.Request) -> web.StreamResponse:
        p = view.paging(request, default=50)
        action = request.query.get("action", "").strip() or None
        actor = request.query.get("actor", "").strip()
        dataset = request.query.get("dataset", "").strip()
        want = p.offset + p.limit + 1
        scan = want if not (actor or dataset) else AUDIT_SCAN
        entries = await ctx.catalog.list_audit(limit=scan, action=action)
        matched = [
            e
            for e in entries
            if (not actor or e.actor == actor) and (not dataset or e.dataset == dataset)
        ]
        shown = matched[p.offset : p.offset + p.limit]
        more = len(matched) > p.offset + p.limit
        filters = {"action": action or "", "actor": actor, "dataset": dataset}
        extra = (
            "&" + urlencode({k: v for k, v in filters.items() if v})
            if any(filters.values())
            else ""
        )
        return page(
            ctx,
            request,
            "audit.html",
            entries=shown,
            filters=filters,
            prev=max(p.offset - p.limit, 0) if p.offset else None,
            next=p.offset + p.limit if more else None,
            extra=extra,
            truncated=(actor or dataset) and len(entries) >= AUDIT_SCAN,
            scan=AUDIT_SCAN,
        )

    return [web.get("/audit", audit)]
