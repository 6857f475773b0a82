"""The login form (user name + password, then a code), and logout.

The second step is asked after every password that does not log in at once, so the
form never tells whether a name exists, or whether it has MFA, or (while it is locked)
whether the password was right:

1. ``POST /login``: for a user with MFA, nothing is decided yet (one dummy argon2
   verification keeps the timing of an unknown name); for anyone else
   :meth:`Logins.login` runs with no code: it logs in a user without MFA, and counts and
   audits every failure. The one message that is not generic is "this role requires MFA
   and you have none: have it enrolled" (only after a right password).
2. ``POST /login/totp``: the code (or a recovery code). A user with MFA is checked now,
   by :meth:`Logins.login` with the password kept from step 1; a step 1 that had failed
   answers the generic message without counting twice.

What step 1 keeps (the name, the password for a user with MFA) stays in this process's
memory for :data:`PENDING_S` at most, under a random id in the form, used once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from coordinator.auth import passwords
from coordinator.auth.errors import LoginRefused
from coordinator.auth.lockout import GENERIC
from coordinator.auth.sessions import set_cookie
from coordinator.web.authparts import SESSION_ID_KEY, STALE_KEY, AuthParts, source_of
from coordinator.web.context import WebContext
from coordinator.web.guard import user_of
from coordinator.web.render import page

PENDING_S = 300.0
PENDING_MAX = 10_000
EXPIRED = "the login took too long; enter your user name and password again"


@dataclass(frozen=True)
class Pending:
    name: str
    password: str  # "" when step 1 already failed
    failed: bool
    next: str
    until: float  # time.monotonic()


class PendingLogins:
    """Step-1 results waiting for their code, by random id (in memory, bounded)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Pending] = {}

    def put(self, pending: Pending) -> str:
        now = time.monotonic()
        self._by_id = {k: v for k, v in self._by_id.items() if v.until > now}
        while len(self._by_id) >= PENDING_MAX:
            self._by_id.pop(next(iter(self._by_id)))
        pending_id = secrets.token_urlsafe(24)
        self._by_id[pending_id] = pending
        return pending_id

    def take(self, pending_id: str) -> Pending | None:
        got = self._by_id.pop(pending_id, None)
        return got if got is not None and got.until > time.monotonic() else None


def safe_next(value: object) -> str:
    """Where to go after the login: a path on this site only (no ``//host``)."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith("//"):
        if "\\" not in value and not any(c in value for c in "\r\n"):
            return value[:2000]
    return "/"


def same_origin(request: web.Request) -> bool:
    """A form posted from this site, not from another one (login CSRF). Browsers say so
    in ``Sec-Fetch-Site``; with ``Referrer-Policy: no-referrer`` their ``Origin`` is
    ``null``, so it decides only when it names a site; a client that is no browser sends
    neither."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin in (None, "null") or origin == f"{request.scheme}://{request.host}"


def _text(form: object, key: str) -> str:
    value = form.get(key) if hasattr(form, "get") else None
    return value if isinstance(value, str) else ""


def routes(ctx: WebContext, p: AuthParts) -> list[web.RouteDef]:
    pending = PendingLogins()
    ctx.parts["pending_logins"] = pending

    def form(
        request: web.Request, *, nxt: str | None = None, error: str = "", status: int = 200
    ) -> web.Response:
        nxt = nxt or safe_next(request.query.get("next"))
        return page(ctx, request, "login.html", next=nxt, error=error, status=status)

    def code_step(request: web.Request, pending_id: str, nxt: str) -> web.Response:
        return page(ctx, request, "totp.html", pending=pending_id, next=nxt, error="")

    async def logged_in(request: web.Request, name: str, nxt: str) -> web.StreamResponse:
        old = request.get(SESSION_ID_KEY)
        if old:
            await p.sessions.end(old)
        session_id, _ = await p.sessions.start(name, source_of(request))
        request[STALE_KEY] = False  # the new cookie replaces the old one
        cookie = set_cookie(session_id, tls=p.tls, max_age_s=ctx.cfg.auth.session_absolute_s)
        raise web.HTTPSeeOther(nxt, headers={"Set-Cookie": cookie})

    async def get_login(request: web.Request) -> web.StreamResponse:
        if user_of(request) is not None:
            raise web.HTTPSeeOther(safe_next(request.query.get("next")))
        return form(request)

    async def post_login(request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            return form(request, error="refused: the form was posted from another site", status=403)
        data = await request.post()
        name, password = _text(data, "name").strip(), _text(data, "password")
        nxt = safe_next(_text(data, "next"))
        user = await ctx.catalog.get_user(name) if name else None
        until = time.monotonic() + PENDING_S
        if user is not None and not user.disabled and user.totp_secret is not None:
            passwords.dummy_verify(password)  # what a refusal below costs: no timing hint
            kept = Pending(name=name, password=password, failed=False, next=nxt, until=until)
            return code_step(request, pending.put(kept), nxt)
        try:
            await p.logins.login(name, password, "", source_of(request))
        except LoginRefused as exc:
            if str(exc) != GENERIC:  # a right password, but MFA is required and missing
                return form(request, nxt=nxt, error=str(exc), status=401)
            failed = Pending(name=name, password="", failed=True, next=nxt, until=until)
            return code_step(request, pending.put(failed), nxt)
        return await logged_in(request, name, nxt)

    async def post_code(request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            return form(request, error="refused: the form was posted from another site", status=403)
        data = await request.post()
        kept = pending.take(_text(data, "pending"))
        if kept is None:
            return form(request, error=EXPIRED, status=401)
        if kept.failed:
            return form(request, nxt=kept.next, error=GENERIC, status=401)
        try:
            await p.logins.login(kept.name, kept.password, _text(data, "code"), source_of(request))
        except LoginRefused as exc:
            return form(request, nxt=kept.next, error=str(exc), status=401)
        return await logged_in(request, kept.name, kept.next)

    async def post_logout(request: web.Request) -> web.StreamResponse:
        user, session_id = user_of(request), request.get(SESSION_ID_KEY)
        if user is not None and session_id:
            await p.sessions.end(session_id)
            await p.audit.record("logout", user.name, detail=f"from {source_of(request)}")
        request[STALE_KEY] = True  # the cookie goes with the answer
        raise web.HTTPSeeOther("/login")

    return [
        web.get("/login", get_login),
        web.post("/login", post_login),
        web.post("/login/totp", post_code),
        web.post("/logout", post_logout),
    ]
