"""A backup's page (``/backups/{id}``): its catalog summary (files, bytes read / new /
stored, duration, tier), the targets holding a copy, and the verifies of those targets
since it finished (whether they found it damaged)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from coordinator.web import view
from coordinator.web.context import WebContext
from coordinator.web.guard import require
from coordinator.web.render import page
from shared.wire.events import VerifyCompleted

VERIFY_SCAN = 50  # newest verifies read per target
_verify = msgspec.json.Decoder(VerifyCompleted)


def routes(ctx: WebContext) -> list[web.RouteDef]:
    view.install_filters(ctx.templates)

    @require("viewer")
    async def backup(request: web.Request) -> web.StreamResponse:
        backup_id = request.match_info["backup_id"]
        b = await ctx.catalog.get_backup(backup_id)
        if b is None:
            raise web.HTTPNotFound(text=f"no backup with id {backup_id!r} in the catalog")
        replicas = (await ctx.catalog.copies_of([backup_id])).get(backup_id, [])
        copies = [(b.target, "primary"), *((t, "replica") for t in replicas)]
        verifies = []
        for target, _ in copies:
            for rec in await ctx.catalog.list_maintenance(
                kind="verify", target=target, limit=VERIFY_SCAN
            ):
                if rec.finished_at < b.finished_at:
                    break  # newest first: older verifies did not see this backup
                damaged = False
                try:
                    ev = _verify.decode(rec.detail)
                    if ev.checked and backup_id not in ev.checked:
                        continue  # a verify of other named backups
                    damaged = backup_id in ev.damaged_backups
                except msgspec.DecodeError:
                    pass  # a failed verify job: its detail is the failure
                verifies.append((rec, damaged))
        return page(
            ctx,
            request,
            "backup.html",
            b=b,
            copies=copies,
            verifies=verifies,
            now=ctx.clock(),
            age=view.age,
        )

    return [web.get("/backups/{backup_id}", backup)]
