"""The access-control part of the PostgreSQL catalog (:class:`AuthCatalog`), mixed into
:class:`coordinator.catalog.postgres.PostgresCatalog` (imported there through
``pg_schema``: postgres.py is at the 500-line limit). The same statements as
``sqlite_auth.py``, in PostgreSQL's dialect."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from coordinator.catalog.auth_records import (
    AUTH_TIME_COLUMNS,
    FAILURE_COLUMNS,
    SESSION_COLUMNS,
    TOKEN_COLUMNS,
    USER_COLUMNS,
    LoginFailures,
    SessionRecord,
    TokenRecord,
    UserRecord,
)

_T = TypeVar("_T")
_USERS, _TOKENS = ", ".join(USER_COLUMNS), ", ".join(TOKEN_COLUMNS)
_SESSIONS, _FAILURES = ", ".join(SESSION_COLUMNS), ", ".join(FAILURE_COLUMNS)


def _us(value: datetime | None) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"catalog times must be timezone-aware, got naive {value.isoformat()}")
    return value


def _row(row: dict[str, Any], kind: type[_T]) -> _T:
    fields = {
        k: v.astimezone(UTC) if isinstance(v, datetime) and k in AUTH_TIME_COLUMNS else v
        for k, v in row.items()
    }
    return msgspec.convert(fields, kind)


def _params(record: msgspec.Struct, columns: tuple[str, ...]) -> list[object]:
    values = [getattr(record, name) for name in columns]
    return [_us(v) if isinstance(v, datetime) else v for v in values]


class PostgresAuthMixin:
    if TYPE_CHECKING:

        async def _execute(self, sql: str, params: Sequence[object]) -> None: ...
        async def _fetch(self, sql: str, params: Sequence[object]) -> list[dict[str, Any]]: ...

    async def add_user(self, user: UserRecord) -> bool:
        rows = await self._fetch(
            f"INSERT INTO auth_users ({_USERS}) VALUES ({', '.join(['%s'] * len(USER_COLUMNS))})"
            " ON CONFLICT (name) DO NOTHING RETURNING name",
            _params(user, USER_COLUMNS),
        )
        return bool(rows)

    async def get_user(self, name: str) -> UserRecord | None:
        rows = await self._fetch(f"SELECT {_USERS} FROM auth_users WHERE name = %s", (name,))
        return _row(rows[0], UserRecord) if rows else None

    async def list_users(self) -> list[UserRecord]:
        rows = await self._fetch(f"SELECT {_USERS} FROM auth_users ORDER BY name", ())
        return [_row(r, UserRecord) for r in rows]

    async def update_user(self, user: UserRecord) -> bool:
        columns = USER_COLUMNS[1:]
        rows = await self._fetch(
            f"UPDATE auth_users SET {', '.join(f'{c} = %s' for c in columns)}"
            " WHERE name = %s RETURNING name",
            [*_params(user, columns), user.name],
        )
        return bool(rows)

    async def user_logged_in(self, name: str, at: datetime) -> None:
        await self._execute(
            "UPDATE auth_users SET last_login_at = %s WHERE name = %s", (_us(at), name)
        )

    async def claim_totp_step(self, name: str, step: int) -> bool:
        rows = await self._fetch(
            "UPDATE auth_users SET totp_last_step = %s WHERE name = %s"
            " AND (totp_last_step IS NULL OR totp_last_step < %s) RETURNING name",
            (step, name, step),
        )
        return bool(rows)

    async def set_recovery_codes(self, name: str, code_hashes: Sequence[str]) -> None:
        # One statement (a reader never sees half the codes); the DELETE and the INSERT
        # touch disjoint rows, since statements of one WITH run in no defined order.
        await self._execute(
            "WITH gone AS (DELETE FROM auth_recovery_codes"
            " WHERE user_name = %s AND NOT code_hash = ANY(%s))"
            " INSERT INTO auth_recovery_codes (user_name, code_hash)"
            " SELECT %s, unnest(%s::text[])"
            " ON CONFLICT (user_name, code_hash) DO UPDATE SET used_at = NULL",
            (name, list(code_hashes), name, list(code_hashes)),
        )

    async def use_recovery_code(self, name: str, code_hash: str, at: datetime) -> bool:
        rows = await self._fetch(
            "UPDATE auth_recovery_codes SET used_at = %s WHERE user_name = %s AND code_hash = %s"
            " AND used_at IS NULL RETURNING code_hash",
            (_us(at), name, code_hash),
        )
        return bool(rows)

    async def recovery_codes_left(self, name: str) -> int:
        rows = await self._fetch(
            "SELECT count(*) AS n FROM auth_recovery_codes"
            " WHERE user_name = %s AND used_at IS NULL",
            (name,),
        )
        return int(rows[0]["n"])

    async def add_token(self, token: TokenRecord) -> bool:
        marks = ", ".join(["%s"] * len(TOKEN_COLUMNS))
        rows = await self._fetch(  # no conflict target: the id or an active name
            f"INSERT INTO auth_tokens ({_TOKENS}) VALUES ({marks})"
            " ON CONFLICT DO NOTHING RETURNING token_id",
            _params(token, TOKEN_COLUMNS),
        )
        return bool(rows)

    async def get_token(self, token_id: str) -> TokenRecord | None:
        rows = await self._fetch(
            f"SELECT {_TOKENS} FROM auth_tokens WHERE token_id = %s", (token_id,)
        )
        return _row(rows[0], TokenRecord) if rows else None

    async def list_tokens(self) -> list[TokenRecord]:
        rows = await self._fetch(
            f"SELECT {_TOKENS} FROM auth_tokens ORDER BY name, created_at, token_id", ()
        )
        return [_row(r, TokenRecord) for r in rows]

    async def revoke_token(self, name: str, at: datetime) -> TokenRecord | None:
        rows = await self._fetch(
            "UPDATE auth_tokens SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL"
            f" RETURNING {_TOKENS}",
            (_us(at), name),
        )
        return _row(rows[0], TokenRecord) if rows else None

    async def token_used(self, token_id: str, at: datetime) -> None:
        await self._execute(
            "UPDATE auth_tokens SET last_used_at = %s WHERE token_id = %s", (_us(at), token_id)
        )

    async def add_session(self, session: SessionRecord) -> None:
        marks = ", ".join(["%s"] * len(SESSION_COLUMNS))
        await self._execute(
            f"INSERT INTO auth_sessions ({_SESSIONS}) VALUES ({marks})"
            " ON CONFLICT (session_hash) DO NOTHING",
            _params(session, SESSION_COLUMNS),
        )

    async def get_session(self, session_hash: str) -> SessionRecord | None:
        rows = await self._fetch(
            f"SELECT {_SESSIONS} FROM auth_sessions WHERE session_hash = %s", (session_hash,)
        )
        return _row(rows[0], SessionRecord) if rows else None

    async def touch_session(self, session_hash: str, at: datetime) -> None:
        await self._execute(
            "UPDATE auth_sessions SET last_seen_at = greatest(last_seen_at, %s)"
            " WHERE session_hash = %s",
            (_us(at), session_hash),
        )

    async def end_sessions(
        self,
        *,
        session_hash: str | None = None,
        user_name: str | None = None,
        idle_before: datetime | None = None,
        created_before: datetime | None = None,
    ) -> int:
        rows = await self._fetch(
            "DELETE FROM auth_sessions WHERE session_hash = %s OR user_name = %s"
            " OR last_seen_at < %s OR created_at < %s RETURNING session_hash",
            (session_hash, user_name, _us(idle_before), _us(created_before)),
        )
        return len(rows)

    async def count_login_failure(
        self, key: str, at: datetime, *, window_start: datetime
    ) -> LoginFailures:
        rows = await self._fetch(
            f"INSERT INTO auth_login_failures AS f ({_FAILURES}) VALUES (%s, 1, %s, NULL)"
            " ON CONFLICT (key) DO UPDATE SET"
            " failures = CASE WHEN f.first_at < %s THEN 1 ELSE f.failures + 1 END,"
            " locked_until = CASE WHEN f.first_at < %s THEN NULL ELSE f.locked_until END,"
            " first_at = CASE WHEN f.first_at < %s THEN excluded.first_at ELSE f.first_at END"
            f" RETURNING {_FAILURES}",
            (key, _us(at), *([_us(window_start)] * 3)),
        )
        return _row(rows[0], LoginFailures)

    async def lock_login(self, key: str, until: datetime) -> None:
        await self._execute(
            "UPDATE auth_login_failures SET locked_until = %s WHERE key = %s", (_us(until), key)
        )

    async def login_failures(self, keys: Sequence[str]) -> dict[str, LoginFailures]:
        rows = await self._fetch(
            f"SELECT {_FAILURES} FROM auth_login_failures WHERE key = ANY(%s)", (list(keys),)
        )
        return {r["key"]: _row(r, LoginFailures) for r in rows}

    async def clear_login_failures(self, key: str) -> None:
        await self._execute("DELETE FROM auth_login_failures WHERE key = %s", (key,))
