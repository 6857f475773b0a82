"""The drill report (``/drills``): per dataset its newest drill and an RTO/RPO chart of
the newest ones, and the host drills with their Markdown reports (shown as text)."""

from __future__ import annotations

from collections import defaultdict

import msgspec
from aiohttp import web

from coordinator.web import charts, view
from coordinator.web.context import WebContext
from coordinator.web.guard import require
from coordinator.web.render import page
from shared.wire.drills import host_drill_result_decoder
from shared.wire.records import MaintenanceRecord

DRILL_SCAN = 2000  # newest drill results read (their datasets paged from those)
HOST_DRILLS = 10


def routes(ctx: WebContext) -> list[web.RouteDef]:
    view.install_filters(ctx.templates)

    @require("viewer")
    async def drills(request: web.Request) -> web.StreamResponse:
        p = view.paging(request)
        recs = await ctx.catalog.list_maintenance(kind="drill", limit=DRILL_SCAN)
        by_ds: dict[str, list[MaintenanceRecord]] = defaultdict(list)
        for r in recs:
            by_ds[r.dataset].append(r)
        # failed newest drill first, then by name
        names = sorted(by_ds, key=lambda d: (by_ds[d][0].outcome == "passed", d))
        shown = names[p.offset : p.offset + p.limit]
        old_first = list(reversed(recs))
        rto = charts.line_chart(
            [(r.finished_at, r.rto_s or 0.0) for r in old_first if r.rto_s is not None],
            title="RTO of each drill",
            fmt=view.human_duration,
        )
        rpo = charts.line_chart(
            [(r.finished_at, r.rpo_s) for r in old_first if r.rpo_s is not None],
            title="RPO of each drill",
            fmt=view.human_duration,
        )
        hosts = []
        for h in await ctx.catalog.list_maintenance(kind="host_drill", limit=HOST_DRILLS):
            try:
                report = host_drill_result_decoder.decode(h.detail).report
            except msgspec.DecodeError:
                report = h.summary
            hosts.append((h, report))
        prev, nxt = p.links(len(shown), len(names))
        return page(
            ctx,
            request,
            "drills.html",
            rows=[(d, by_ds[d][0], len(by_ds[d])) for d in shown],
            rto=rto,
            rpo=rpo,
            hosts=hosts,
            prev=prev,
            next=nxt,
            total=len(names),
            scanned=len(recs),
        )

    return [web.get("/drills", drills)]
