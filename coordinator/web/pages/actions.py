"""Actions from the browser: back up now (one dataset, every dataset of a host, or
everything), restore, run a drill, run a verify (``/actions``).

Every action goes through the operator API on NATS (``mosaic.api.<verb>``), exactly as
the CLI sends it, with ``requested_by`` = the logged-in user, so the coordinator records
it in the audit trail under that name; the console writes nothing itself. Every POST is
``require("operator")`` (a viewer's crafted POST answers 403 whatever its CSRF token)
and carries the session's CSRF token (the auth middleware refuses it otherwise). The
buttons are shown only to roles that may press them.

A restore waits up to :data:`RESTORE_WAIT_S` for its job's result, so a refusal by the
agent (a destination outside its ``restore_roots``, named in the message) is on the
page that follows; a longer restore is shown as running.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
from aiohttp import web

from coordinator.web import view
from coordinator.web.context import WebContext
from coordinator.web.guard import User, require, user_of
from coordinator.web.render import page
from shared.errors import BusError
from shared.vocab import BackupType
from shared.wire.api import (
    ApiError,
    ApiReply,
    ApiRequest,
    BackupRequest,
    DrillRequest,
    JobAccepted,
    RestoreRequest,
    VerifyRequest,
)
from shared.wire.events import JobFailed, RestoreCompleted

RESTORE_WAIT_S = 30.0
BACKUP_TYPES = ("full", "incremental")


@dataclass(frozen=True)
class Outcome:
    """One line of the result page: what was asked, and what came of it."""

    what: str
    ok: bool
    message: str
    job_id: str | None = None


def _reply_outcome(what: str, reply: ApiReply) -> Outcome:
    if isinstance(reply, JobAccepted):
        note = " (already sent: the same job)" if reply.duplicate else ""
        return Outcome(what, True, f"job sent to agent {reply.agent}{note}", reply.job_id)
    if isinstance(reply, ApiError):
        return Outcome(what, False, reply.message)
    return Outcome(what, False, f"unexpected answer {type(reply).__name__}")


async def _ask(ctx: WebContext, what: str, verb: str, req: ApiRequest) -> Outcome:
    try:
        reply = await ctx.bus.request(verb, req)
    except BusError as exc:
        return Outcome(what, False, str(exc))
    return _reply_outcome(what, reply)


def _user(request: web.Request) -> User:
    user = user_of(request)
    assert user is not None  # require() let it through
    return user


def _pitr(text: str) -> datetime | None:
    """The form's ``datetime-local`` value, read as UTC; empty: none."""
    if not text.strip():
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise web.HTTPBadRequest(
            text=f"point in time {text!r} is not a date and time; write 2026-12-01T08:00"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def _wait_restore(ctx: WebContext, job_id: str) -> Outcome | None:
    """The restore's result if it comes within RESTORE_WAIT_S, else None."""
    with anyio.move_on_after(RESTORE_WAIT_S):
        try:
            async for ev in ctx.bus.watch_job(job_id, timeout=RESTORE_WAIT_S):
                if isinstance(ev, RestoreCompleted):
                    return Outcome(
                        "restore",
                        True,
                        f"restored {ev.files} files ({view.human_bytes(ev.bytes_written)}) "
                        f"into {ev.destination} on agent {ev.agent}",
                        job_id,
                    )
                if isinstance(ev, JobFailed):
                    return Outcome("restore", False, f"restore failed: {ev.message}", job_id)
        except BusError:
            return None
    return None


class Actions:
    """The handlers (``routes`` wraps each in ``require("operator")``)."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def result(self, request: web.Request, outcomes: list[Outcome], back: str) -> web.Response:
        status = 200 if all(o.ok for o in outcomes) else 400
        return page(
            self.ctx, request, "actions_done.html", status=status, outcomes=outcomes, back=back
        )

    async def actions(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx
        paging = view.paging(request, default=50)
        names = sorted(ctx.cfg.datasets)
        shown = names[paging.offset : paging.offset + paging.limit]
        agents = sorted({ds.agent for ds in ctx.cfg.datasets.values()})
        prev, nxt = paging.links(len(shown), len(names))
        return page(
            ctx,
            request,
            "actions.html",
            datasets=[(n, ctx.cfg.datasets[n]) for n in shown],
            agents=agents,
            total=len(names),
            prev=prev,
            next=nxt,
            backup_types=BACKUP_TYPES,
        )

    async def backup(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx
        form = await request.post()
        user = _user(request)
        scope = str(form.get("scope", "dataset"))
        kind: BackupType = "full" if form.get("backup_type") == "full" else "incremental"
        if scope == "all":
            chosen = sorted(ctx.cfg.datasets)
        elif scope == "host":
            agent = str(form.get("agent", ""))
            chosen = sorted(n for n, d in ctx.cfg.datasets.items() if d.agent == agent)
            if not chosen:
                raise web.HTTPBadRequest(text=f"agent {agent!r} backs up no dataset")
        else:
            chosen = [str(form.get("dataset", ""))]
        outcomes = [
            await _ask(
                ctx,
                f"{kind} backup of {name}",
                "backup",
                BackupRequest(dataset=name, backup_type=kind, requested_by=user.name),
            )
            for name in chosen
        ]
        return self.result(request, outcomes, "/actions")

    async def restore(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx
        form = await request.post()
        user = _user(request)
        backup_id = str(form.get("backup_id", ""))
        paths = [str(p) for p in form.getall("paths", [])]
        folder = str(form.get("folder", "")).strip("/")
        if not paths and folder:
            paths = [folder]
        req = RestoreRequest(
            backup_id=backup_id,
            destination=str(form.get("destination", "")).strip(),
            paths=paths,
            pitr=_pitr(str(form.get("pitr", ""))),
            requested_by=user.name,
        )
        what = (
            f"restore of {', '.join(paths) if paths else 'the whole backup'} to {req.destination}"
        )
        sent = await _ask(ctx, what, "restore", req)
        outcome = sent
        if sent.ok and sent.job_id is not None:
            done = await _wait_restore(ctx, sent.job_id)
            outcome = done or Outcome(what, True, f"{sent.message}; still running", sent.job_id)
        back = f"/backups/{backup_id}/browse"
        return self.result(request, [outcome], back)

    async def drill(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx
        form = await request.post()
        name = str(form.get("dataset", ""))
        req = DrillRequest(dataset=name, requested_by=_user(request).name)
        return self.result(request, [await _ask(ctx, f"drill of {name}", "drill", req)], "/actions")

    async def verify(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx
        form = await request.post()
        name = str(form.get("dataset", "")) or None
        backup_id = str(form.get("backup_id", "")) or None
        req = VerifyRequest(dataset=name, backup_id=backup_id, requested_by=_user(request).name)
        what = f"verify of {backup_id or name}"
        return self.result(request, [await _ask(ctx, what, "verify", req)], "/actions")


def routes(ctx: WebContext) -> list[web.RouteDef]:
    view.install_filters(ctx.templates)
    a = Actions(ctx)
    operator = require("operator")
    return [
        web.get("/actions", operator(a.actions)),
        web.post("/actions/backup", operator(a.backup)),
        web.post("/actions/restore", operator(a.restore)),
        web.post("/actions/drill", operator(a.drill)),
        web.post("/actions/verify", operator(a.verify)),
    ]
