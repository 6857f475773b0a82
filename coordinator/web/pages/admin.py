"""Users and API tokens, for admins: list, add (with role, MFA enrolment shown once),
disable; create (the secret shown once), revoke.

Every change goes through the same stores as ``mosaic-backup users`` / ``tokens``
(coordinator/auth/store.py, tokens.py), so it is audited with the admin's name; a
refused change (weak password, taken name, bad expiry) shows its one-line reason.
"""

from __future__ import annotations

import io
from datetime import datetime

import segno
from aiohttp import web

from coordinator.auth import roles, tokens
from coordinator.auth.errors import AuthInputError
from coordinator.web.authparts import parts
from coordinator.web.context import WebContext
from coordinator.web.guard import require, user_of
from coordinator.web.render import page
from shared.config.auth import ROLES


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at is not None else "never"


def _qr_svg(uri: str) -> str:
    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=4, xmldecl=False, svgns=True)
    return out.getvalue().decode()


def _field(form: object, key: str) -> str:
    value = form.get(key) if hasattr(form, "get") else None
    return value.strip() if isinstance(value, str) else ""


def _actor(request: web.Request) -> str:
    user = user_of(request)
    assert user is not None  # require() let it through
    return user.name


class AdminPages:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx, self.p = ctx, parts(ctx)

    async def overview(
        self, request: web.Request, *, error: str = "", notice: str = "", status: int = 200
    ) -> web.Response:
        ctx, now = self.ctx, self.ctx.clock()
        users = [
            {
                "name": u.name,
                "role": u.role,
                "mfa": "yes"
                if u.totp_secret
                else ("MISSING" if ctx.cfg.auth.mfa_required(u.role) else "no"),
                "disabled": u.disabled,
                "last_login": _when(u.last_login_at),
            }
            for u in await self.p.users.list()
        ]
        toks = [
            {
                "name": t.name,
                "role": t.role,
                "state": tokens.state(t, now),
                "created": _when(t.created_at),
                "created_by": t.created_by,
                "expires": _when(t.expires_at),
                "last_used": _when(t.last_used_at),
            }
            for t in await self.p.tokens.list()
        ]
        return page(
            ctx,
            request,
            "admin.html",
            status=status,
            users=users,
            tokens=toks,
            roles=ROLES,
            mfa_roles=ctx.cfg.auth.mfa_required_roles,
            error=error,
            notice=notice,
        )

    async def get_admin(self, request: web.Request) -> web.StreamResponse:
        return await self.overview(request)

    async def add_user(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name = _field(form, "name")
        try:
            role = roles.parse_role(_field(form, "role"), what="role")
            password = form.get("password")
            enrol = await self.p.users.add(
                name,
                role,
                password if isinstance(password, str) else "",
                mfa=bool(_field(form, "mfa")),
                actor=_actor(request),
            )
        except AuthInputError as exc:
            return await self.overview(request, error=str(exc), status=400)
        if enrol is None:
            return await self.overview(request, notice=f"user {name} added with role {role}")
        return page(
            self.ctx,
            request,
            "admin_secret.html",
            heading=f"User {name} added with role {role}",
            token=None,
            enrolment=enrol,
            enrol_user=name,
            qr_svg=_qr_svg(enrol.uri),
        )

    async def disable_user(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == _actor(request):
            return await self.overview(request, error="you cannot disable yourself", status=400)
        try:
            await self.p.users.disable(name, actor=_actor(request))
        except AuthInputError as exc:
            return await self.overview(request, error=str(exc), status=400)
        return await self.overview(request, notice=f"user {name} disabled; its sessions ended")

    async def create_token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name = _field(form, "name")
        try:
            role = roles.parse_role(_field(form, "role"), what="role")
            life = tokens.parse_lifetime(_field(form, "expires"))
            rec, secret = await self.p.tokens.create(name, role, life, actor=_actor(request))
        except AuthInputError as exc:
            shown = str(exc).replace("--expires", "expires")
            return await self.overview(request, error=shown, status=400)
        return page(
            self.ctx,
            request,
            "admin_secret.html",
            heading=f"Token {name} created",
            token=secret,
            token_name=rec.name,
            role=rec.role,
            expires=_when(rec.expires_at),
            enrolment=None,
        )

    async def revoke_token(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            await self.p.tokens.revoke(name, actor=_actor(request))
        except AuthInputError as exc:
            return await self.overview(request, error=str(exc), status=400)
        return await self.overview(request, notice=f"token {name} revoked")


def routes(ctx: WebContext) -> list[web.RouteDef]:
    pages = AdminPages(ctx)
    admin = require("admin")
    return [
        web.get("/admin", admin(pages.get_admin)),
        web.post("/admin/users", admin(pages.add_user)),
        web.post("/admin/users/{name}/disable", admin(pages.disable_user)),
        web.post("/admin/tokens", admin(pages.create_token)),
        web.post("/admin/tokens/{name}/revoke", admin(pages.revoke_token)),
    ]
