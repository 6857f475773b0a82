"""API tokens for service accounts (Prometheus, scripts): a name, a role, an expiry.

A token reads ``mbk_<id>_<secret>``: ``id`` (12 hex digits) finds the row, ``secret``
(32 random bytes, base64url) proves it. Only the SHA-256 of the secret is stored: the
secret is random, so a fast hash is as good as a slow one here, and checking a token
costs microseconds, which matters for a scrape every 15 s. The whole token is shown once,
at creation. Every refusal (malformed, unknown, wrong secret, expired, revoked) is the
same :class:`TokenRefused`.

Audit: ``token_created``, ``token_revoked``, and ``token_used`` on a token's first use
in each process (every use updates ``last_used_at``; an entry per scrape would flood the
trail).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from coordinator.audit import AuditTrail
from coordinator.auth.errors import AuthInputError, TokenRefused
from coordinator.auth.store import check_name
from coordinator.catalog.auth_records import TokenRecord
from coordinator.catalog.base import Catalog
from shared.config.auth import Role
from shared.vocab import utcnow

PREFIX = "mbk"
_TOKEN = re.compile(r"^mbk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
REFUSED = "invalid, expired or revoked API token"
_DURATION = re.compile(r"^(\d{1,5})([hdw])$")
MAX_LIFETIME = timedelta(days=3660)


def parse_lifetime(text: str) -> timedelta:
    """``90d``, ``12h``, ``4w`` → a timedelta (at least an hour, at most ten years)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise AuthInputError(f"--expires {text!r} is not a duration; write e.g. 90d, 12h or 4w")
    n, unit = int(m.group(1)), m.group(2)
    life = {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]
    if not timedelta(hours=1) <= life <= MAX_LIFETIME:
        raise AuthInputError(f"--expires {text!r} must be between 1h and {MAX_LIFETIME.days}d")
    return life


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def state(token: TokenRecord, now: datetime) -> str:
    """``active``, ``expired`` or ``revoked``."""
    if token.revoked_at is not None:
        return "revoked"
    return "expired" if now >= token.expires_at else "active"


class TokenStore:
    def __init__(
        self, catalog: Catalog, audit: AuditTrail, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.catalog, self.audit, self.clock = catalog, audit, clock
        self._used: set[str] = set()  # token ids whose first use this process recorded

    async def create(
        self, name: str, role: Role, lifetime: timedelta, *, actor: str
    ) -> tuple[TokenRecord, str]:
        """A new token; the returned string is its only appearance in clear."""
        check_name(name, what="token name")
        token_id = secrets.token_hex(6)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        now = self.clock()
        rec = TokenRecord(
            token_id=token_id,
            name=name,
            role=role,
            secret_hash=_hash(secret),
            created_by=actor,
            created_at=now,
            expires_at=now + lifetime,
        )
        if not await self.catalog.add_token(rec):
            raise AuthInputError(
                f"a token named {name!r} exists already; revoke it first or pick another name"
            )
        await self.audit.record(
            "token_created",
            actor,
            detail=f"token {name} (id {token_id}) role {role} expires {rec.expires_at:%Y-%m-%d}",
        )
        return rec, f"{PREFIX}_{token_id}_{secret}"

    async def revoke(self, name: str, *, actor: str) -> TokenRecord:
        rec = await self.catalog.revoke_token(name, self.clock())
        if rec is None:
            raise AuthInputError(
                f"no active token {name!r}; `mosaic-backup tokens list` shows them"
            )
        await self.audit.record("token_revoked", actor, detail=f"token {name} (id {rec.token_id})")
        return rec

    async def list(self) -> list[TokenRecord]:
        return await self.catalog.list_tokens()

    async def verify(self, presented: str) -> TokenRecord:
        """The token's row if ``presented`` is a valid, unexpired, unrevoked token."""
        m = _TOKEN.match(presented.strip())
        if not m:
            raise TokenRefused(REFUSED)
        rec = await self.catalog.get_token(m.group(1))
        now = self.clock()
        if rec is None or not hmac.compare_digest(rec.secret_hash, _hash(m.group(2))):
            raise TokenRefused(REFUSED)
        if state(rec, now) != "active":
            raise TokenRefused(REFUSED)
        await self.catalog.token_used(rec.token_id, now)
        if rec.token_id not in self._used:
            self._used.add(rec.token_id)
            await self.audit.record(
                "token_used",
                f"token {rec.name}",
                detail=f"token {rec.name} (id {rec.token_id}) role {rec.role}: first use "
                "by this coordinator process",
            )
        return rec
