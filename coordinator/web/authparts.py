"""The console's auth stores (sessions, tokens, logins, users, the audit trail), built
once per console and shared by the middleware (``auth.py``), the login routes
(``login.py``) and the admin pages, and the request keys they set."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from coordinator.audit import AuditTrail
from coordinator.auth.lockout import Logins
from coordinator.auth.sessions import Sessions, cookie_name
from coordinator.auth.store import UserStore
from coordinator.auth.tokens import TokenStore
from coordinator.web.context import WebContext

SESSION_ID_KEY: web.RequestKey[str] = web.RequestKey("session_id")
STALE_KEY: web.RequestKey[bool] = web.RequestKey("stale_session")


@dataclass
class AuthParts:
    """The stores every auth route uses, built once per console (``ctx.parts["auth"]``)."""

    audit: AuditTrail
    sessions: Sessions
    tokens: TokenStore
    logins: Logins
    users: UserStore
    tls: bool
    # source address → when a refused token from it was last audited (monotonic)
    refusals: dict[str, float] = field(default_factory=dict)

    def cookie(self) -> str:
        return cookie_name(tls=self.tls)


def parts(ctx: WebContext) -> AuthParts:
    """The console's auth stores (made on first use, shared by the pages)."""
    got = ctx.parts.get("auth")
    if isinstance(got, AuthParts):
        return got
    audit = AuditTrail(ctx.catalog, bus=ctx.bus)
    auth_cfg = ctx.cfg.auth
    made = AuthParts(
        audit=audit,
        sessions=Sessions(ctx.catalog, auth_cfg, clock=ctx.clock),
        tokens=TokenStore(ctx.catalog, audit, clock=ctx.clock),
        logins=Logins(ctx.catalog, audit, auth_cfg, clock=ctx.clock),
        users=UserStore(ctx.catalog, audit, auth_cfg, clock=ctx.clock),
        tls=ctx.cfg.web is not None and ctx.cfg.web.tls,
    )
    ctx.parts["auth"] = made
    return made


def source_of(request: web.Request) -> str:
    return request.remote or "unknown"
