"""The login: password, then TOTP (or a recovery code), rate-limited and locked out.

Failures are counted per user name (``user:<name>``, unknown names too, so a lockout
says nothing about whether a name exists) and per source address (``addr:<address>``).
``lockout_failures`` (per name) or ``lockout_address_failures`` (per address) within
``lockout_s`` lock that key for ``lockout_s``. A locked key is refused before the
password is looked at. Every refusal carries the same :data:`GENERIC` message, and an
unknown or disabled user still costs one argon2 verification (timing).

Audit: ``login`` (success), ``login_failed`` (with the reason, for the admins reading
the trail, never the password or code), ``login_locked`` (when a key becomes locked).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import NoReturn

import msgspec

from coordinator.audit import AuditTrail
from coordinator.auth import passwords, totp
from coordinator.auth.errors import LoginRefused
from coordinator.catalog.auth_records import UserRecord
from coordinator.catalog.base import Catalog
from shared.config.auth import AuthConfig
from shared.vocab import utcnow

GENERIC = "login failed: wrong user name, password or code, or too many attempts (wait and retry)"
MFA_MISSING = (
    "login refused: the role {role} requires MFA and this user has none enrolled; "
    "an admin runs `mosaic-backup users mfa {name}`"
)


def _shown(name: str) -> str:
    """A user name as the audit trail shows it (what was typed, bounded)."""
    return "".join(c if c.isprintable() else "?" for c in name[:64]) or "(empty)"


class Logins:
    def __init__(
        self,
        catalog: Catalog,
        audit: AuditTrail,
        cfg: AuthConfig,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.catalog, self.audit, self.cfg, self.clock = catalog, audit, cfg, clock

    def _keys(self, name: str, source: str) -> dict[str, int]:
        """Counted key → the failures that lock it."""
        return {
            f"user:{name}": self.cfg.lockout_failures,
            f"addr:{source}": self.cfg.lockout_address_failures,
        }

    async def login(self, name: str, password: str, code: str, source: str) -> UserRecord:
        """The user, if ``password`` and (where MFA applies) ``code`` are right and no
        lockout applies; else :class:`LoginRefused` with :data:`GENERIC`."""
        now = self.clock()
        keys = self._keys(name, source)
        counted = await self.catalog.login_failures(list(keys))
        if any(c.locked_until is not None and c.locked_until > now for c in counted.values()):
            passwords.dummy_verify(password)
            await self._refuse(name, source, "locked out", count=False)
        user = await self.catalog.get_user(name)
        if user is None or user.disabled:
            passwords.dummy_verify(password)
            await self._refuse(name, source, "unknown user" if user is None else "user disabled")
        if not passwords.verify_password(user.password_hash, password):
            await self._refuse(name, source, "wrong password")
        await self._second_factor(user, code, source, now)
        await self.catalog.clear_login_failures(f"user:{name}")
        await self.catalog.user_logged_in(name, now)
        if passwords.needs_rehash(user.password_hash):
            rehashed = passwords.hash_password(password)
            user = msgspec.structs.replace(user, password_hash=rehashed, updated_at=now)
            await self.catalog.update_user(user)
        await self.audit.record("login", name, detail=f"from {source}")
        return user

    async def _second_factor(self, user: UserRecord, code: str, source: str, at: datetime) -> None:
        if user.totp_secret is None:
            if self.cfg.mfa_required(user.role):
                await self.audit.record(
                    "login_failed", user.name, detail=f"from {source}: MFA required, none enrolled"
                )
                raise LoginRefused(MFA_MISSING.format(role=user.role, name=user.name))
            return
        if totp.looks_like_recovery_code(code):
            used = totp.hash_recovery_code(code)
            if await self.catalog.use_recovery_code(user.name, used, at):
                left = await self.catalog.recovery_codes_left(user.name)
                await self.audit.record(
                    "recovery_code_used", user.name, detail=f"from {source}; {left} left"
                )
                return
            await self._refuse(user.name, source, "wrong or used recovery code")
        if not await totp.verify_code(self.catalog, user.name, user.totp_secret, code, at):
            await self._refuse(user.name, source, "wrong, old or replayed TOTP code")

    async def _refuse(self, name: str, source: str, reason: str, *, count: bool = True) -> NoReturn:
        """Count the failure, lock what reached its limit, audit, raise GENERIC."""
        now = self.clock()
        window = timedelta(seconds=self.cfg.lockout_s)
        if count:
            for key, limit in self._keys(name, source).items():
                seen = await self.catalog.count_login_failure(key, now, window_start=now - window)
                if seen.failures >= limit and seen.locked_until is None:
                    await self.catalog.lock_login(key, now + window)
                    await self.audit.record(
                        "login_locked",
                        _shown(name),
                        detail=f"{key.partition(':')[0]} {_shown(key.partition(':')[2])} "
                        f"locked for {self.cfg.lockout_s:g} s after {seen.failures} failures",
                    )
        await self.audit.record("login_failed", _shown(name), detail=f"from {source}: {reason}")
        raise LoginRefused(GENERIC)
