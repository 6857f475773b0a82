"""Who asks, and the role check every console handler declares.

The auth middleware (``coordinator/web/auth.py``) puts a :class:`User` (or None) under
``request[USER_KEY]``; :func:`require` turns a handler into one that answers only users
of at least that role: an anonymous HTML request is sent to the login page, an
anonymous API request gets 401, a user of a lower role 403 — the page never decides by
hiding a button alone.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from shared.config.auth import ROLES, Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOGIN_PATH = "/login"


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    via: Literal["session", "token", "anonymous"]
    csrf: str | None = None  # the session's CSRF token (None for tokens: no cookies)

    def may(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


# typed request storage (aiohttp warns on plain string keys)
USER_KEY: web.RequestKey[User | None] = web.RequestKey("user")


def user_of(request: web.Request) -> User | None:
    return request.get(USER_KEY)


def wants_html(request: web.Request) -> bool:
    return not request.path.startswith("/api/") and "text/html" in request.headers.get(
        "Accept", "text/html"
    )


def refuse(request: web.Request, status: int, message: str) -> web.StreamResponse:
    if status == 401 and wants_html(request) and request.method == "GET":
        raise web.HTTPSeeOther(f"{LOGIN_PATH}?next={request.path_qs}")
    return web.json_response({"error": {"code": str(status), "message": message}}, status=status)


def require(role: Role) -> Callable[[Handler], Handler]:
    """Answer only users of at least ``role`` (viewer < operator < admin)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            user = user_of(request)
            if user is None:
                return refuse(request, 401, "log in first")
            if not user.may(role):
                return refuse(request, 403, f"this needs the {role} role")
            return await handler(request)

        guarded.required_role = role  # type: ignore[attr-defined]  # for the route table test
        return guarded

    return wrap
