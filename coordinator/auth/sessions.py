"""Server-side console sessions.

The cookie holds a random id (32 bytes); the catalog keeps only its SHA-256, so a copy
of the catalog opens no session. A session ends ``session_idle_s`` after its last request
and ``session_absolute_s`` after its login ([auth] in coordinator.toml), read from the
config on every lookup, so shortening them applies to sessions already open. Each
session has a CSRF token that every state-changing request must send back
(:func:`csrf_ok`); the cookie is HttpOnly, SameSite=Strict, and Secure (with the
``__Host-`` prefix) when the listener speaks TLS.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from coordinator.catalog.auth_records import SessionRecord
from coordinator.catalog.base import Catalog
from shared.config.auth import AuthConfig
from shared.vocab import utcnow

COOKIE = "mosaic_session"
TLS_COOKIE = "__Host-mosaic_session"  # the browser enforces Secure, Path=/, no Domain


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def cookie_name(*, tls: bool) -> str:
    return TLS_COOKIE if tls else COOKIE


def set_cookie(session_id: str, *, tls: bool, max_age_s: float) -> str:
    """The ``Set-Cookie`` value that hands ``session_id`` to the browser."""
    parts = [f"{cookie_name(tls=tls)}={session_id}", "Path=/", f"Max-Age={int(max_age_s)}"]
    parts += ["HttpOnly", "SameSite=Strict"] + (["Secure"] if tls else [])
    return "; ".join(parts)


def clear_cookie(*, tls: bool) -> str:
    """The ``Set-Cookie`` value that removes the session cookie (logout)."""
    return set_cookie("", tls=tls, max_age_s=0)


def csrf_ok(session: SessionRecord, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf_token, presented)


class Sessions:
    def __init__(
        self, catalog: Catalog, cfg: AuthConfig, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.catalog, self.cfg, self.clock = catalog, cfg, clock

    async def start(self, user_name: str, source: str) -> tuple[str, SessionRecord]:
        """A new session for a user who just logged in: (the cookie's id, its row). Each
        login also deletes every session that timed out, so abandoned ones never pile up."""
        await self.purge()
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        rec = SessionRecord(
            session_hash=_hash(session_id),
            user_name=user_name,
            csrf_token=secrets.token_urlsafe(32),
            source=source,
            created_at=now,
            last_seen_at=now,
        )
        await self.catalog.add_session(rec)
        return session_id, rec

    async def resume(self, session_id: str | None) -> SessionRecord | None:
        """The live session with this cookie id (its last request moved to now), or None
        when there is none, it timed out (then it is deleted), or its user is disabled."""
        if not session_id:
            return None
        key = _hash(session_id)
        rec = await self.catalog.get_session(key)
        if rec is None:
            return None
        now = self.clock()
        idle = now - rec.last_seen_at >= timedelta(seconds=self.cfg.session_idle_s)
        old = now - rec.created_at >= timedelta(seconds=self.cfg.session_absolute_s)
        user = await self.catalog.get_user(rec.user_name)
        if idle or old or user is None or user.disabled:
            await self.catalog.end_sessions(session_hash=key)
            return None
        await self.catalog.touch_session(key, now)
        return rec

    async def end(self, session_id: str) -> None:
        await self.catalog.end_sessions(session_hash=_hash(session_id))

    async def purge(self) -> int:
        """Delete every timed-out session (any coordinator may run it now and then)."""
        now = self.clock()
        return await self.catalog.end_sessions(
            idle_before=now - timedelta(seconds=self.cfg.session_idle_s),
            created_before=now - timedelta(seconds=self.cfg.session_absolute_s),
        )
