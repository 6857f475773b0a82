"""The part of the catalog contract that access control needs (coordinator/auth/).

:class:`coordinator.catalog.base.Catalog` includes this Protocol; both backends
implement it in a module of their own (``sqlite_auth.py``, ``pg_auth.py``) and
tests/test_auth_store.py runs one suite on both.

Contract, beyond :class:`Catalog`'s (times are timezone-aware UTC in and out):

- ``add_*`` never overwrite: they return False (or do nothing) when the key exists.
- The operations a second coordinator may race on are single statements, so exactly one
  caller wins: ``claim_totp_step`` (a TOTP code is accepted once), ``use_recovery_code``
  (a recovery code once), ``count_login_failure`` (no failure is lost).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from coordinator.catalog.auth_records import (
    LoginFailures,
    SessionRecord,
    TokenRecord,
    UserRecord,
)


class AuthCatalog(Protocol):
    # --- users -----------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> bool:
        """Insert a user; False (and nothing changed) if the name exists."""

    async def get_user(self, name: str) -> UserRecord | None: ...

    async def list_users(self) -> list[UserRecord]:
        """Every user, by name."""

    async def update_user(self, user: UserRecord) -> bool:
        """Replace the row of ``user.name`` (role, password hash, TOTP seed and last
        step, disabled, times); False if there is no such user."""

    async def user_logged_in(self, name: str, at: datetime) -> None:
        """Set ``last_login_at``."""

    async def claim_totp_step(self, name: str, step: int) -> bool:
        """Record ``step`` as the user's newest accepted TOTP step if it is newer than the
        one recorded; True only for the one caller that did (replays get False)."""

    # --- recovery codes --------------------------------------------------------------

    async def set_recovery_codes(self, name: str, code_hashes: Sequence[str]) -> None:
        """Replace the user's recovery codes (hashes) with these, all unused."""

    async def use_recovery_code(self, name: str, code_hash: str, at: datetime) -> bool:
        """Mark an unused code used; True only for the one caller that did."""

    async def recovery_codes_left(self, name: str) -> int: ...

    # --- API tokens ------------------------------------------------------------------

    async def add_token(self, token: TokenRecord) -> bool:
        """Insert a token; False if its id, or its name among unrevoked tokens, exists."""

    async def get_token(self, token_id: str) -> TokenRecord | None: ...

    async def list_tokens(self) -> list[TokenRecord]:
        """Every token, revoked ones too, by name then creation."""

    async def revoke_token(self, name: str, at: datetime) -> TokenRecord | None:
        """Revoke the unrevoked token called ``name``; the revoked row, or None."""

    async def token_used(self, token_id: str, at: datetime) -> None:
        """Set ``last_used_at``."""

    # --- sessions --------------------------------------------------------------------

    async def add_session(self, session: SessionRecord) -> None: ...

    async def get_session(self, session_hash: str) -> SessionRecord | None: ...

    async def touch_session(self, session_hash: str, at: datetime) -> None:
        """Set ``last_seen_at`` (never moves it back)."""

    async def end_sessions(
        self,
        *,
        session_hash: str | None = None,
        user_name: str | None = None,
        idle_before: datetime | None = None,
        created_before: datetime | None = None,
    ) -> int:
        """Delete the sessions matching ANY of the given criteria; how many."""

    # --- login failures --------------------------------------------------------------

    async def count_login_failure(
        self, key: str, at: datetime, *, window_start: datetime
    ) -> LoginFailures:
        """Count one failure for ``key``: a count whose window began before
        ``window_start`` starts again at 1 (and its lock is dropped)."""

    async def lock_login(self, key: str, until: datetime) -> None:
        """Lock ``key`` until ``until`` (a counted key only)."""

    async def login_failures(self, keys: Sequence[str]) -> dict[str, LoginFailures]:
        """The counts of those keys that have one."""

    async def clear_login_failures(self, key: str) -> None: ...
