"""The access-control part of the catalog contract (coordinator/catalog/auth_base.py),
run on SQLite and a real PostgreSQL, like tests/test_catalog_contract.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from coordinator.catalog import Catalog, open_catalog
from coordinator.catalog.auth_records import SessionRecord, TokenRecord, UserRecord
from shared.errors import CatalogError

T0 = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)


def user(name: str = "alice", **changes: Any) -> UserRecord:
    fields: dict[str, Any] = {
        "name": name,
        "role": "admin",
        "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        "totp_secret": "JBSWY3DPEHPK3PXP",
        "created_at": T0,
        "updated_at": T0,
    }
    return UserRecord(**(fields | changes))


def token(token_id: str = "0123456789ab", name: str = "prometheus", **changes: Any) -> TokenRecord:
    fields: dict[str, Any] = {
        "token_id": token_id,
        "name": name,
        "role": "viewer",
        "secret_hash": "ab" * 32,
        "created_by": "root@host (tokens create CLI)",
        "created_at": T0,
        "expires_at": T0 + timedelta(days=90),
    }
    return TokenRecord(**(fields | changes))


def session(key: str = "s1", user_name: str = "alice", **changes: Any) -> SessionRecord:
    fields: dict[str, Any] = {
        "session_hash": key,
        "user_name": user_name,
        "csrf_token": f"csrf-{key}",
        "source": "192.0.2.7",
        "created_at": T0,
        "last_seen_at": T0,
    }
    return SessionRecord(**(fields | changes))


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/catalog.db"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
async def catalog(catalog_url: str) -> AsyncIterator[Catalog]:
    opened = await open_catalog(catalog_url)
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_users_add_get_list_update(catalog: Catalog) -> None:
    assert await catalog.get_user("alice") is None
    assert await catalog.add_user(user())
    assert not await catalog.add_user(user(role="viewer")), "a second add must not overwrite"
    assert await catalog.get_user("alice") == user()
    await catalog.add_user(user("bob", role="viewer", totp_secret=None))
    assert [u.name for u in await catalog.list_users()] == ["alice", "bob"]
    later = T0 + timedelta(hours=1)
    changed = msgspec.structs.replace(
        user(), role="operator", disabled=True, totp_secret=None, updated_at=later
    )
    assert await catalog.update_user(changed)
    assert await catalog.get_user("alice") == changed
    assert not await catalog.update_user(user("nobody"))
    await catalog.user_logged_in("bob", later)
    got = await catalog.get_user("bob")
    assert got is not None and got.last_login_at == later


async def test_a_role_outside_the_three_is_refused_by_the_table(catalog: Catalog) -> None:
    bad = msgspec.structs.replace(user("mallory"), role="root")
    with pytest.raises(CatalogError):
        await catalog.add_user(bad)


async def test_a_totp_step_is_claimed_once_and_never_an_older_one(catalog: Catalog) -> None:
    await catalog.add_user(user())
    assert await catalog.claim_totp_step("alice", 1000)
    assert not await catalog.claim_totp_step("alice", 1000)  # replay
    assert not await catalog.claim_totp_step("alice", 999)  # older code
    assert await catalog.claim_totp_step("alice", 1001)
    assert not await catalog.claim_totp_step("nobody", 5)
    got = await catalog.get_user("alice")
    assert got is not None and got.totp_last_step == 1001


async def test_concurrent_claims_of_one_step_let_exactly_one_win(catalog: Catalog) -> None:
    await catalog.add_user(user())
    wins: list[bool] = []

    async def claim() -> None:
        wins.append(await catalog.claim_totp_step("alice", 7))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(claim)
    assert sorted(wins) == [False] * 7 + [True]


async def test_recovery_codes_each_work_once_and_a_new_set_replaces_the_old(
    catalog: Catalog,
) -> None:
    await catalog.add_user(user())
    await catalog.set_recovery_codes("alice", ["h1", "h2", "h3"])
    assert await catalog.recovery_codes_left("alice") == 3
    assert await catalog.use_recovery_code("alice", "h2", T0)
    assert not await catalog.use_recovery_code("alice", "h2", T0)
    assert not await catalog.use_recovery_code("bob", "h1", T0), "codes belong to one user"
    assert await catalog.recovery_codes_left("alice") == 2
    await catalog.set_recovery_codes("alice", ["n1", "n2"])
    assert not await catalog.use_recovery_code("alice", "h1", T0)
    assert await catalog.use_recovery_code("alice", "n1", T0)
    assert await catalog.recovery_codes_left("alice") == 1
    await catalog.set_recovery_codes("alice", ["n1", "n2"])  # the same set again: all unused
    assert await catalog.recovery_codes_left("alice") == 2
    await catalog.set_recovery_codes("alice", [])
    assert await catalog.recovery_codes_left("alice") == 0


async def test_tokens_add_revoke_and_reuse_a_revoked_name(catalog: Catalog) -> None:
    assert await catalog.add_token(token())
    assert not await catalog.add_token(token("ffffffffffff")), "active name taken"
    assert not await catalog.add_token(token(name="other")), "id taken"
    assert await catalog.get_token("0123456789ab") == token()
    revoked = await catalog.revoke_token("prometheus", T0 + timedelta(days=1))
    assert revoked is not None and revoked.revoked_at == T0 + timedelta(days=1)
    assert await catalog.revoke_token("prometheus", T0) is None, "nothing left to revoke"
    assert await catalog.add_token(token("ffffffffffff", created_at=T0 + timedelta(days=2)))
    listed = await catalog.list_tokens()
    assert [(t.token_id, t.revoked_at is None) for t in listed] == [
        ("0123456789ab", False),
        ("ffffffffffff", True),
    ]
    await catalog.token_used("ffffffffffff", T0 + timedelta(days=3))
    got = await catalog.get_token("ffffffffffff")
    assert got is not None and got.last_used_at == T0 + timedelta(days=3)


async def test_sessions_touch_and_end(catalog: Catalog) -> None:
    await catalog.add_session(session("s1"))
    later = T0 + timedelta(hours=2)
    await catalog.add_session(session("s2", created_at=later, last_seen_at=later))
    await catalog.add_session(session("s3", user_name="bob"))
    assert await catalog.get_session("s1") == session("s1")
    await catalog.touch_session("s1", T0 + timedelta(minutes=10))
    await catalog.touch_session("s1", T0 + timedelta(minutes=5))  # never back
    got = await catalog.get_session("s1")
    assert got is not None and got.last_seen_at == T0 + timedelta(minutes=10)
    assert await catalog.end_sessions(session_hash="s3") == 1
    assert await catalog.get_session("s3") is None
    # s1 was last seen at T0+10m, s2 two hours after T0
    assert await catalog.end_sessions(idle_before=T0 + timedelta(minutes=30)) == 1
    assert await catalog.get_session("s1") is None
    assert await catalog.get_session("s2") is not None
    assert await catalog.end_sessions(user_name="alice") == 1
    assert await catalog.end_sessions(user_name="alice") == 0


async def test_login_failures_count_in_a_window_lock_and_clear(catalog: Catalog) -> None:
    win = timedelta(minutes=15)
    for i in range(3):
        at = T0 + timedelta(minutes=i)
        seen = await catalog.count_login_failure("user:alice", at, window_start=at - win)
        assert (seen.failures, seen.first_at) == (i + 1, T0)
    await catalog.lock_login("user:alice", T0 + win)
    got = await catalog.login_failures(["user:alice", "addr:192.0.2.7"])
    assert list(got) == ["user:alice"] and got["user:alice"].locked_until == T0 + win
    late = T0 + timedelta(minutes=40)  # the window has passed: counting starts again
    seen = await catalog.count_login_failure("user:alice", late, window_start=late - win)
    assert (seen.failures, seen.first_at, seen.locked_until) == (1, late, None)
    await catalog.clear_login_failures("user:alice")
    assert await catalog.login_failures(["user:alice"]) == {}
    assert await catalog.login_failures([]) == {}


async def test_concurrent_failures_are_all_counted(catalog: Catalog) -> None:
    async def fail() -> None:
        await catalog.count_login_failure("addr:x", T0, window_start=T0 - timedelta(hours=1))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(fail)
    assert (await catalog.login_failures(["addr:x"]))["addr:x"].failures == 10


# --- frozen catalogs (tests/data/compat-*, bench/make_compat_catalog.py) -----------------

DATA = Path(__file__).parent / "data"
FROZEN = {
    int(v): (folder / f"catalog-v{v}.sqlite", rows)
    for folder in sorted(DATA.glob("compat-*"))
    for v, rows in json.loads((folder / "expected.json").read_text())["catalogs"].items()
}


@pytest.mark.parametrize("version", sorted(v for v in FROZEN if "auth" in FROZEN[v][1]))
async def test_a_frozen_catalogs_auth_rows_read_back_after_upgrade(
    version: int, tmp_path: Path
) -> None:
    frozen, rows = FROZEN[version]
    shutil.copy(frozen, tmp_path / "catalog.db")
    auth = rows["auth"]
    catalog = await open_catalog(f"sqlite://{tmp_path}/catalog.db")
    try:
        users = [msgspec.convert(u, UserRecord) for u in auth["users"]]
        assert await catalog.list_users() == users
        tokens = [msgspec.convert(t, TokenRecord) for t in auth["tokens"]]
        assert sorted(await catalog.list_tokens(), key=lambda t: t.token_id) == sorted(
            tokens, key=lambda t: t.token_id
        )
        for s in auth["sessions"]:
            rec = msgspec.convert(s, SessionRecord)
            assert await catalog.get_session(rec.session_hash) == rec
        for name, left in auth["recovery_codes_left"].items():
            assert await catalog.recovery_codes_left(name) == left
        failures = await catalog.login_failures(list(auth["login_failures"]))
        assert {k: v.failures for k, v in failures.items()} == auth["login_failures"]
    finally:
        await catalog.aclose()


@pytest.mark.parametrize("version", sorted(FROZEN))
async def test_every_frozen_catalog_upgrades_to_take_users_and_tokens(
    version: int, tmp_path: Path
) -> None:
    shutil.copy(FROZEN[version][0], tmp_path / "catalog.db")
    catalog = await open_catalog(f"sqlite://{tmp_path}/catalog.db")
    try:
        assert await catalog.add_user(user("new-admin"))
        assert await catalog.get_user("new-admin") == user("new-admin")
        assert await catalog.add_token(token("abcdefabcdef", name="new-token"))
        assert await catalog.claim_totp_step("new-admin", 1)
    finally:
        await catalog.aclose()
