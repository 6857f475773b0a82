"""Who is asking, for every console request: a session cookie or an API token; CSRF;
the security headers; the login routes (``login.py``).

- ``Authorization: Bearer mbk_…`` (service accounts, Prometheus): checked with
  :meth:`TokenStore.verify`; a bad, expired or revoked token is answered 401 at once
  (JSON), whatever the path. Token requests carry no cookie, so they need no CSRF token.
- Otherwise the session cookie: :meth:`Sessions.resume` (idle and absolute timeouts);
  a session that ended is no user, so ``guard.require`` sends a page to the login form,
  and the stale cookie is cleared.
- A POST/PUT/PATCH/DELETE from a session must carry its CSRF token (form field ``csrf``
  or header ``X-CSRF-Token``), or it is refused with 403 before any handler runs.
- Every answer gets the security headers (:data:`CSP` without inline scripts, no
  framing, no referrer, ``no-store`` on everything but ``/static``).

Audit: ``login``, ``login_failed``, ``login_locked`` (coordinator/auth/lockout.py),
``logout`` (here), ``token_used`` (first use per process, coordinator/auth/tokens.py) and
``token_refused`` (here, at most once a minute per source address). The console holds no
lease: like the ``users`` CLI it appends to the catalog's audit table directly (and
publishes on NATS for listeners).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDict

from coordinator.auth.errors import TokenRefused
from coordinator.auth.sessions import clear_cookie, csrf_ok
from coordinator.auth.tokens import REFUSED
from coordinator.catalog.auth_records import SessionRecord
from coordinator.web import login
from coordinator.web.authparts import SESSION_ID_KEY, STALE_KEY, AuthParts, parts, source_of
from coordinator.web.context import WebContext
from coordinator.web.guard import USER_KEY, User, refuse

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# the login form has no session yet: login.py checks its posts by Sec-Fetch-Site/Origin
NO_SESSION_PATHS = frozenset({"/login", "/login/totp"})
CSRF_REFUSED = (
    "refused: the request lacks this session's CSRF token (form field csrf or header "
    "X-CSRF-Token); reload the page and try again"
)
# No inline scripts anywhere; style attributes are allowed (progress bars, chart widths),
# <style> elements are not.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
TOKEN_REFUSAL_AUDIT_S = 60.0


def secure_headers(request: web.Request, headers: CIMultiDict[str], *, tls: bool) -> None:
    """The headers every answer carries (pages, JSON, errors, redirects)."""
    headers["Content-Security-Policy"] = CSP
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Content-Type-Options"] = "nosniff"
    if not request.path.startswith("/static/"):
        headers.setdefault("Cache-Control", "no-store")
    if tls:
        headers["Strict-Transport-Security"] = "max-age=31536000"


async def _presented_csrf(request: web.Request) -> str | None:
    header = request.headers.get("X-CSRF-Token")
    if header is not None:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()  # aiohttp keeps it: the handler reads it again
        value = form.get("csrf")
        return value if isinstance(value, str) else None
    return None


async def _token_user(p: AuthParts, request: web.Request, header: str) -> User | None:
    """The token's user, or None (refused: audited, at most once a minute per source)."""
    scheme, _, presented = header.partition(" ")
    if scheme.lower() == "bearer":
        try:
            rec = await p.tokens.verify(presented)
        except TokenRefused:
            pass
        else:
            return User(name=f"token {rec.name}", role=rec.role, via="token")
    source, now = source_of(request), time.monotonic()
    if now - p.refusals.get(source, -TOKEN_REFUSAL_AUDIT_S) >= TOKEN_REFUSAL_AUDIT_S:
        if len(p.refusals) > 10_000:
            p.refusals.clear()
        p.refusals[source] = now
        await p.audit.record(
            "token_refused", "anonymous", detail=f"from {source}: {request.method} {request.path}"
        )
    return None


async def _session(
    ctx: WebContext, p: AuthParts, request: web.Request
) -> tuple[User | None, SessionRecord | None, bool]:
    """(user, session, stale): stale when a cookie named a session that has ended."""
    sid = request.cookies.get(p.cookie())
    if not sid:
        return None, None, False
    session = await p.sessions.resume(sid)
    user = await ctx.catalog.get_user(session.user_name) if session is not None else None
    if session is None or user is None:
        return None, None, True
    request[SESSION_ID_KEY] = sid
    return (
        User(name=user.name, role=user.role, via="session", csrf=session.csrf_token),
        session,
        False,
    )


def middleware(ctx: WebContext) -> Middleware:
    p = parts(ctx)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[USER_KEY] = None
        header = request.headers.get("Authorization")
        if header is not None:
            request[USER_KEY] = user = await _token_user(p, request, header)
            if user is None:
                return web.json_response(
                    {"error": {"code": TokenRefused.code, "message": REFUSED}},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)
        user, session, stale = await _session(ctx, p, request)
        request[USER_KEY] = user
        request[STALE_KEY] = stale
        if (
            session is not None
            and request.method in STATE_CHANGING
            and request.path not in NO_SESSION_PATHS
            and not csrf_ok(session, await _presented_csrf(request))
        ):
            return refuse(request, 403, CSRF_REFUSED)
        return await handler(request)

    return authenticate


def on_prepare(ctx: WebContext) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """For ``app.on_response_prepare``: the security headers on every answer (pages,
    JSON, errors, redirects, static files, event streams), and a stale cookie cleared."""
    p = parts(ctx)

    async def prepare(request: web.Request, response: web.StreamResponse) -> None:
        secure_headers(request, response.headers, tls=p.tls)
        if request.get(STALE_KEY):
            response.headers.add("Set-Cookie", clear_cookie(tls=p.tls))

    return prepare


def routes(ctx: WebContext) -> list[web.RouteDef]:
    return login.routes(ctx, parts(ctx))
