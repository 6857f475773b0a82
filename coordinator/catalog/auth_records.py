"""The catalog's rows for access control (schema version 7): users, their recovery
codes, API tokens, console sessions and login failures.

They live in the catalog so that every coordinator (active or standby) answers a login,
a token or a session the same. Nothing here holds a secret in clear: passwords are
argon2id hashes, token secrets, recovery codes and session ids SHA-256 hashes
(coordinator/auth/). The one exception is a user's TOTP seed, which the server needs in
clear to compute the codes (RFC 6238); see docs/security.md.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from shared.config.auth import Role


class UserRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A local user (``auth_users``)."""

    name: str
    role: Role
    password_hash: str  # argon2id, PHC string
    totp_secret: str | None = None  # base32; None: no MFA enrolled
    totp_last_step: int | None = None  # the newest TOTP time step accepted (replays)
    disabled: bool = False
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None = None


class TokenRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An API token of a service account (``auth_tokens``); the secret is only hashed."""

    token_id: str  # public part of the token, hex
    name: str  # unique among tokens not revoked
    role: Role
    secret_hash: str  # SHA-256 hex of the secret part
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class SessionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A console session (``auth_sessions``), keyed by the SHA-256 of the cookie's id."""

    session_hash: str
    user_name: str
    csrf_token: str  # sent back with every state-changing request
    source: str  # the address it logged in from
    created_at: datetime
    last_seen_at: datetime


class LoginFailures(msgspec.Struct, frozen=True, kw_only=True):
    """Failed logins counted for one key (``user:<name>`` or ``addr:<address>``)."""

    key: str
    failures: int
    first_at: datetime  # start of the counting window
    locked_until: datetime | None = None


USER_COLUMNS = (
    *("name", "role", "password_hash", "totp_secret", "totp_last_step", "disabled"),
    *("created_at", "updated_at", "last_login_at"),
)
TOKEN_COLUMNS = (
    *("token_id", "name", "role", "secret_hash", "created_by", "created_at", "expires_at"),
    *("revoked_at", "last_used_at"),
)
SESSION_COLUMNS = (
    *("session_hash", "user_name", "csrf_token", "source", "created_at", "last_seen_at"),
)
FAILURE_COLUMNS = ("key", "failures", "first_at", "locked_until")
AUTH_TIME_COLUMNS = frozenset(
    {"created_at", "updated_at", "last_login_at", "expires_at", "revoked_at"}
    | {"last_used_at", "last_seen_at", "first_at", "locked_until"}
)
