"""A backup's files (``/backups/{id}/browse?path=…``) and downloading one of them
(``/backups/{id}/download?path=…``).

The console never decrypts (docs/design.md): the agent that made the backup answers
over NATS (``mosaic.agentapi.<agent>.tree`` / ``.chunk``, agent/browse.py). A download
is streamed to the browser chunk by chunk as the agent answers (at most
``shared.wire.browse.MAX_CHUNK`` bytes each), never stored here.

Who sees what: every role may list folders; secret entries (the ``secret`` globs of a
files dataset) are one ``<secret>`` row without name or size, except for admins, who
see their names (never their sizes or content). Downloading needs the operator role
(it is reading backup data, like a restore) and is audited; a secret's content is never
sent, whoever asks. The restore form posts to ``/actions/restore`` (actions.py) and is
shown to operators and admins only; the POST checks the role again.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from aiohttp import web

from coordinator.web import view
from coordinator.web.authparts import parts
from coordinator.web.context import WebContext
from coordinator.web.guard import User, require, user_of
from coordinator.web.render import page
from shared.asking import ask_agent
from shared.errors import BusError
from shared.wire.browse import (
    MAX_CHUNK,
    AgentApiError,
    FileChunk,
    FileChunkRequest,
    TreeEntry,
    TreeListing,
    TreeRequest,
)
from shared.wire.records import BackupRecord
from shared.wire.sources import FilesSource

ERROR_STATUS = {"secret": 403, "not_found": 404, "not_a_file": 400, "bad_request": 400}


@dataclass(frozen=True)
class Row:
    """One entry as the page shows it, with where its links go."""

    entry: TreeEntry
    path: str  # full path inside the backup ("" for a hidden secret row)

    @property
    def downloadable(self) -> bool:
        return not self.entry.secret and self.entry.type in ("file", "hardlink")


def join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def crumbs(path: str) -> list[tuple[str, str]]:
    """(name, path) of every folder from the top down to ``path``."""
    out: list[tuple[str, str]] = []
    parts_ = [p for p in path.split("/") if p]
    for i, name in enumerate(parts_):
        out.append((name, "/".join(parts_[: i + 1])))
    return out


async def backup_or_404(ctx: WebContext, backup_id: str) -> BackupRecord:
    b = await ctx.catalog.get_backup(backup_id)
    if b is None:
        raise web.HTTPNotFound(text=f"no backup with id {backup_id!r} in the catalog")
    return b


def is_database(ctx: WebContext, dataset: str) -> bool:
    ds = ctx.cfg.datasets.get(dataset)
    return ds is not None and not isinstance(ds.source, FilesSource)


def routes(ctx: WebContext) -> list[web.RouteDef]:
    view.install_filters(ctx.templates)

    @require("viewer")
    async def browse(request: web.Request) -> web.StreamResponse:
        user = user_of(request)
        assert user is not None
        b = await backup_or_404(ctx, request.match_info["backup_id"])
        paging = view.paging(request, default=100)
        path = request.query.get("path", "").strip("/")
        req = TreeRequest(
            backup_id=b.backup_id,
            target=b.target,
            path=path,
            offset=paging.offset,
            limit=paging.limit,
            reveal_secret_names=user.may("admin"),
        )
        problem, listing = None, None
        try:
            reply = await ask_agent(ctx.bus, b.agent, "tree", req)
        except BusError as exc:
            reply = AgentApiError(code="agent", message=str(exc))
        if isinstance(reply, TreeListing):
            listing = reply
        else:
            problem = reply.message if isinstance(reply, AgentApiError) else "unexpected reply"
        rows = [
            Row(e, "" if e.secret and not user.may("admin") else join(path, e.name))
            for e in (listing.entries if listing else [])
        ]
        prev, nxt = paging.links(len(rows), listing.total if listing else 0)
        status = 200 if problem is None else (502 if reply_code(reply) == "agent" else 400)
        return page(
            ctx,
            request,
            "browse.html",
            status=status,
            b=b,
            folder_path=path,
            crumbs=crumbs(path),
            rows=rows,
            total=listing.total if listing else 0,
            problem=problem,
            prev=prev,
            next=nxt,
            may_restore=user.may("operator"),
            database=is_database(ctx, b.dataset),
            quote=urllib.parse.quote,
        )

    @require("operator")
    async def download(request: web.Request) -> web.StreamResponse:
        user = user_of(request)
        assert user is not None
        b = await backup_or_404(ctx, request.match_info["backup_id"])
        path = request.query.get("path", "").strip("/")
        return await stream_file(ctx, request, user, b, path)

    return [
        web.get("/backups/{backup_id}/browse", browse),
        web.get("/backups/{backup_id}/download", download),
    ]


def reply_code(reply: object) -> str | None:
    return reply.code if isinstance(reply, AgentApiError) else None


async def stream_file(
    ctx: WebContext, request: web.Request, user: User, b: BackupRecord, path: str
) -> web.StreamResponse:
    """Ask the agent for one chunk after another and pass each on as it comes."""

    async def chunk(offset: int) -> FileChunk:
        req = FileChunkRequest(
            backup_id=b.backup_id, target=b.target, path=path, offset=offset, length=MAX_CHUNK
        )
        try:
            reply = await ask_agent(ctx.bus, b.agent, "chunk", req)
        except BusError as exc:
            raise web.HTTPBadGateway(text=str(exc)) from None
        if isinstance(reply, AgentApiError):
            status = ERROR_STATUS.get(reply.code, 502)
            raise _http(status, reply.message)
        assert isinstance(reply, FileChunk)
        return reply

    first = await chunk(0)
    await parts(ctx).audit.record(
        "file_downloaded",
        user.name,
        dataset=b.dataset,
        backup_id=b.backup_id,
        detail=f"{path} ({first.size} bytes) through the console",
    )
    name = path.rpartition("/")[2] or "file"
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(first.size),
            "Content-Disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}",
            "Cache-Control": "no-store",
        }
    )
    await resp.prepare(request)
    reply = first
    while True:
        await resp.write(reply.data)
        if reply.eof or not reply.data:
            break
        reply = await chunk(reply.offset + len(reply.data))
    await resp.write_eof()
    return resp


def _http(status: int, message: str) -> web.HTTPException:
    classes: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
    }
    return classes.get(status, web.HTTPBadGateway)(text=message)
