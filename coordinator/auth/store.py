"""Users: adding them, changing their password or MFA, disabling them, listing them.

Every change goes to the audit trail (``user_added``, ``user_password_changed``,
``user_mfa_enrolled``, ``user_disabled``, with the actor who made it). A changed
password, a reset MFA or a disabled user ends that user's sessions. Used by the CLI
(``mosaic-backup users``) now, and by the console's admin pages later.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

import msgspec

from coordinator.audit import AuditTrail
from coordinator.auth import passwords, totp
from coordinator.auth.errors import AuthInputError
from coordinator.catalog.auth_records import UserRecord
from coordinator.catalog.base import Catalog
from shared.config.auth import AuthConfig, Role
from shared.vocab import utcnow

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def check_name(name: str, *, what: str = "user name") -> str:
    if not _USER_NAME.match(name):
        raise AuthInputError(
            f"{what} {name[:80]!r} is not allowed: use 1-64 letters, digits, '_', '.', '@' "
            "or '-', starting with a letter or digit"
        )
    return name


class UserStore:
    """The users in ``catalog``; audit entries go through ``audit``."""

    def __init__(
        self,
        catalog: Catalog,
        audit: AuditTrail,
        cfg: AuthConfig,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.catalog, self.audit, self.cfg, self.clock = catalog, audit, cfg, clock

    async def _get(self, name: str) -> UserRecord:
        user = await self.catalog.get_user(name)
        if user is None:
            raise AuthInputError(f"no user {name!r}; `mosaic-backup users list` shows them")
        return user

    async def add(
        self, name: str, role: Role, password: str, *, mfa: bool, actor: str
    ) -> totp.Enrolment | None:
        """Add a user; the MFA enrolment to show once when ``mfa`` or the role needs it."""
        check_name(name)
        passwords.check_strength(password)
        now = self.clock()
        enrol = totp.enrolment(name, self.cfg.totp_issuer)
        with_mfa = mfa or self.cfg.mfa_required(role)
        user = UserRecord(
            name=name,
            role=role,
            password_hash=passwords.hash_password(password),
            totp_secret=enrol.secret if with_mfa else None,
            created_at=now,
            updated_at=now,
        )
        if not await self.catalog.add_user(user):
            raise AuthInputError(
                f"user {name!r} exists already; change it with `users passwd` or `users mfa`"
            )
        if with_mfa:
            await self._store_codes(name, enrol)
        await self.audit.record(
            "user_added", actor, detail=f"user {name} role {role} mfa {'on' if with_mfa else 'off'}"
        )
        return enrol if with_mfa else None

    async def _store_codes(self, name: str, enrol: totp.Enrolment) -> None:
        hashes = [totp.hash_recovery_code(c) for c in enrol.recovery_codes]
        await self.catalog.set_recovery_codes(name, hashes)

    async def set_password(self, name: str, password: str, *, actor: str) -> None:
        user = await self._get(name)
        passwords.check_strength(password)
        changed = msgspec.structs.replace(
            user, password_hash=passwords.hash_password(password), updated_at=self.clock()
        )
        await self.catalog.update_user(changed)
        ended = await self.catalog.end_sessions(user_name=name)
        await self.audit.record(
            "user_password_changed", actor, detail=f"user {name}; {ended} session(s) ended"
        )

    async def enrol_mfa(self, name: str, *, reset: bool, actor: str) -> totp.Enrolment:
        """A new TOTP seed and recovery codes; replacing existing ones needs ``reset``."""
        user = await self._get(name)
        if user.totp_secret is not None and not reset:
            raise AuthInputError(
                f"user {name!r} has MFA already; add --reset to replace its authenticator "
                "and recovery codes"
            )
        enrol = totp.enrolment(name, self.cfg.totp_issuer)
        changed = msgspec.structs.replace(
            user, totp_secret=enrol.secret, totp_last_step=None, updated_at=self.clock()
        )
        await self.catalog.update_user(changed)
        await self._store_codes(name, enrol)
        ended = await self.catalog.end_sessions(user_name=name)
        await self.audit.record(
            "user_mfa_enrolled",
            actor,
            detail=f"user {name}{' (reset)' if reset else ''}; {ended} session(s) ended",
        )
        return enrol

    async def disable(self, name: str, *, actor: str) -> None:
        user = await self._get(name)
        if user.disabled:
            raise AuthInputError(f"user {name!r} is disabled already")
        await self.catalog.update_user(
            msgspec.structs.replace(user, disabled=True, updated_at=self.clock())
        )
        ended = await self.catalog.end_sessions(user_name=name)
        await self.audit.record(
            "user_disabled", actor, detail=f"user {name}; {ended} session(s) ended"
        )

    async def list(self) -> list[UserRecord]:
        return await self.catalog.list_users()
