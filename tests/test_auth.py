"""Access control (coordinator/auth/) on a real SQLite catalog with an injected clock:
passwords, TOTP and recovery codes, lockout, generic messages, tokens, sessions, roles.
The catalog side on both backends is in tests/test_auth_store.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from argon2 import PasswordHasher

from coordinator.audit import AuditTrail
from coordinator.auth import passwords, roles, sessions, totp
from coordinator.auth.errors import AuthInputError, LoginRefused, TokenRefused
from coordinator.auth.lockout import GENERIC, Logins
from coordinator.auth.store import UserStore
from coordinator.auth.tokens import TokenStore, parse_lifetime
from coordinator.catalog import Catalog, open_catalog
from shared.config.auth import AuthConfig
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load
from shared.errors import ConfigError
from tests.harness import REPO_ROOT

T0 = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)  # 10 s into a TOTP step
PASSWORD = "correct horse battery staple"
ADMIN = "tester"


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Auth:
    catalog: Catalog
    clock: Clock
    cfg: AuthConfig
    users: UserStore
    logins: Logins
    tokens: TokenStore
    sessions: sessions.Sessions

    async def actions(self) -> list[str]:
        return [e.action for e in reversed(await self.catalog.list_audit(limit=1000))]


CFG = AuthConfig(lockout_failures=3, lockout_address_failures=5, lockout_s=60.0)


@pytest.fixture
async def auth(tmp_path: Path) -> AsyncIterator[Auth]:
    catalog = await open_catalog(f"sqlite://{tmp_path}/catalog.db")
    clock, audit = Clock(), AuditTrail(catalog)
    try:
        yield Auth(
            catalog,
            clock,
            CFG,
            UserStore(catalog, audit, CFG, clock=clock),
            Logins(catalog, audit, CFG, clock=clock),
            TokenStore(catalog, audit, clock=clock),
            sessions.Sessions(catalog, CFG, clock=clock),
        )
    finally:
        await catalog.aclose()


async def refused(auth: Auth, name: str, password: str, code: str = "", src: str = "ip1") -> str:
    with pytest.raises(LoginRefused) as exc:
        await auth.logins.login(name, password, code, src)
    return str(exc.value)


# --- passwords -------------------------------------------------------------------------


def test_password_hash_verifies_only_the_right_password() -> None:
    stored = passwords.hash_password(PASSWORD)
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert passwords.verify_password(stored, PASSWORD)
    assert not passwords.verify_password(stored, PASSWORD + "!")
    assert not passwords.verify_password("not a hash", PASSWORD)
    assert not passwords.needs_rehash(stored)


def test_weak_passwords_are_refused_with_the_minimum() -> None:
    with pytest.raises(AuthInputError, match="11 characters, fewer than the minimum 12"):
        passwords.check_strength("a" * 11)
    passwords.check_strength("a" * 12)


async def test_a_login_rehashes_a_password_hashed_with_weaker_parameters(auth: Auth) -> None:
    await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    weak = passwords.hash_password(PASSWORD, hasher=PasswordHasher(time_cost=1, memory_cost=8192))
    assert passwords.needs_rehash(weak)
    bob = await auth.catalog.get_user("bob")
    assert bob is not None
    await auth.catalog.update_user(msgspec.structs.replace(bob, password_hash=weak))
    await auth.logins.login("bob", PASSWORD, "", "ip1")
    rehashed = await auth.catalog.get_user("bob")
    assert rehashed is not None and rehashed.password_hash != weak
    assert "m=65536,t=3" in rehashed.password_hash
    assert passwords.verify_password(rehashed.password_hash, PASSWORD)


# --- TOTP and recovery codes -------------------------------------------------------------


async def admin(auth: Auth) -> totp.Enrolment:
    enrol = await auth.users.add("alice", "admin", PASSWORD, mfa=False, actor=ADMIN)
    assert enrol is not None, "MFA is required for admins by default"
    return enrol


async def test_totp_current_code_once_then_replay_refused(auth: Auth) -> None:
    enrol = await admin(auth)
    code = totp.code_at(enrol.secret, T0)
    user = await auth.logins.login("alice", PASSWORD, code, "ip1")
    assert user.name == "alice"
    assert await refused(auth, "alice", PASSWORD, code) == GENERIC
    auth.clock.advance(seconds=15)  # same step still: the same code, still refused
    assert await refused(auth, "alice", PASSWORD, code) == GENERIC


@pytest.mark.parametrize(("offset", "ok"), [(-30, True), (30, True), (-60, False), (60, False)])
async def test_totp_accepts_one_step_either_side_and_no_more(
    auth: Auth, offset: int, ok: bool
) -> None:
    enrol = await admin(auth)
    code = totp.code_at(enrol.secret, T0 + timedelta(seconds=offset))
    assert await totp.verify_code(auth.catalog, "alice", enrol.secret, code, T0) is ok


async def test_password_without_code_or_with_a_wrong_code_is_refused(auth: Auth) -> None:
    enrol = await admin(auth)
    assert await refused(auth, "alice", PASSWORD, "") == GENERIC
    wrong = f"{(int(totp.code_at(enrol.secret, T0)) + 1) % 1_000_000:06d}"
    assert await refused(auth, "alice", PASSWORD, wrong) == GENERIC


async def test_a_recovery_code_works_once(auth: Auth) -> None:
    enrol = await admin(auth)
    assert len(enrol.recovery_codes) == 10 and len(set(enrol.recovery_codes)) == 10
    code = enrol.recovery_codes[3].upper()  # typed in capitals: still the code
    await auth.logins.login("alice", PASSWORD, code, "ip1")
    assert await refused(auth, "alice", PASSWORD, code) == GENERIC
    assert await auth.catalog.recovery_codes_left("alice") == 9
    assert "recovery_code_used" in await auth.actions()


async def test_mfa_reset_replaces_the_authenticator_and_the_codes(auth: Auth) -> None:
    old = await admin(auth)
    with pytest.raises(AuthInputError, match="has MFA already; add --reset"):
        await auth.users.enrol_mfa("alice", reset=False, actor=ADMIN)
    new = await auth.users.enrol_mfa("alice", reset=True, actor=ADMIN)
    assert new.secret != old.secret
    assert await refused(auth, "alice", PASSWORD, old.recovery_codes[0]) == GENERIC
    await auth.logins.login("alice", PASSWORD, totp.code_at(new.secret, T0), "ip1")


def test_the_qr_code_and_uri_carry_the_secret_for_an_authenticator_app() -> None:
    enrol = totp.enrolment("alice", "mosaic-backup")
    assert enrol.uri.startswith("otpauth://totp/mosaic-backup:alice?")
    assert f"secret={enrol.secret}" in enrol.uri
    qr = totp.qr_text(enrol.uri).splitlines()
    assert len(qr) > 10 and {"█", "▀", "▄"} & set("".join(qr))


async def test_mfa_required_but_not_enrolled_says_how_to_enrol(auth: Auth) -> None:
    await auth.users.add("olga", "operator", PASSWORD, mfa=False, actor=ADMIN)
    strict = AuthConfig(mfa_required_roles=["admin", "operator"])
    logins = Logins(auth.catalog, AuditTrail(auth.catalog), strict, clock=auth.clock)
    with pytest.raises(LoginRefused, match=r"users mfa olga"):
        await logins.login("olga", PASSWORD, "", "ip1")
    assert await refused(auth, "olga", PASSWORD + "x") == GENERIC  # wrong password: generic


# --- lockout and generic messages --------------------------------------------------------


async def test_unknown_user_and_wrong_password_get_the_same_message(auth: Auth) -> None:
    await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    unknown = await refused(auth, "nobody", PASSWORD)
    wrong = await refused(auth, "bob", "wrong password here")
    await auth.users.disable("bob", actor=ADMIN)
    disabled = await refused(auth, "bob", PASSWORD)
    assert unknown == wrong == disabled == GENERIC
    assert "nobody" not in GENERIC and "exist" not in GENERIC


async def test_lockout_after_n_failures_and_its_expiry(auth: Auth) -> None:
    await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    for _ in range(CFG.lockout_failures):
        assert await refused(auth, "bob", "wrong password here") == GENERIC
    assert await refused(auth, "bob", PASSWORD) == GENERIC, "locked: even the right password"
    assert await refused(auth, "bob", PASSWORD, src="ip2") == GENERIC, "the name is locked"
    auth.clock.advance(seconds=CFG.lockout_s - 1)
    assert await refused(auth, "bob", PASSWORD) == GENERIC
    auth.clock.advance(seconds=2)
    assert (await auth.logins.login("bob", PASSWORD, "", "ip1")).name == "bob"
    acts = await auth.actions()
    assert acts.count("login_locked") == 1 and acts[-1] == "login"


async def test_an_unknown_name_locks_like_a_known_one(auth: Auth) -> None:
    for _ in range(CFG.lockout_failures):
        await refused(auth, "nobody", "whatever password")
    locks = await auth.catalog.login_failures(["user:nobody"])
    assert locks["user:nobody"].locked_until == T0 + timedelta(seconds=CFG.lockout_s)


async def test_one_address_trying_many_names_is_locked_out(auth: Auth) -> None:
    await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    for i in range(CFG.lockout_address_failures):
        await refused(auth, f"guess{i}", "whatever password", src="203.0.113.9")
    assert await refused(auth, "bob", PASSWORD, src="203.0.113.9") == GENERIC
    assert (await auth.logins.login("bob", PASSWORD, "", "198.51.100.1")).name == "bob"


async def test_logins_and_failures_are_audited_without_the_password(auth: Auth) -> None:
    await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    await refused(auth, "bob", "wrong password here")
    await auth.logins.login("bob", PASSWORD, "", "ip1")
    entries = await auth.catalog.list_audit(limit=100)
    assert [e.action for e in reversed(entries)] == ["user_added", "login_failed", "login"]
    assert all(PASSWORD not in e.detail and "wrong password here" not in e.detail for e in entries)
    assert entries[0].actor == "bob" and "ip1" in entries[0].detail


# --- users ------------------------------------------------------------------------------


async def test_user_changes_are_refused_in_one_line(auth: Auth) -> None:
    await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    with pytest.raises(AuthInputError, match="exists already"):
        await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    with pytest.raises(AuthInputError, match="is not allowed"):
        await auth.users.add("bad name", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    with pytest.raises(AuthInputError, match="no user 'carol'"):
        await auth.users.set_password("carol", PASSWORD, actor=ADMIN)
    with pytest.raises(AuthInputError, match="use one of: viewer, operator, admin"):
        roles.parse_role("root")


async def test_a_new_password_ends_the_sessions_and_the_old_one_stops_working(
    auth: Auth,
) -> None:
    await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    sid, _ = await auth.sessions.start("bob", "ip1")
    await auth.users.set_password("bob", "a new long passphrase", actor=ADMIN)
    assert await auth.sessions.resume(sid) is None
    assert await refused(auth, "bob", PASSWORD) == GENERIC
    await auth.logins.login("bob", "a new long passphrase", "", "ip1")


# --- tokens -----------------------------------------------------------------------------


async def test_token_create_verify_revoke_refused(auth: Auth) -> None:
    rec, secret = await auth.tokens.create("prom", "viewer", timedelta(days=90), actor=ADMIN)
    assert re.fullmatch(rf"mbk_{rec.token_id}_[A-Za-z0-9_-]{{43}}", secret)
    stored = await auth.catalog.get_token(rec.token_id)
    assert (
        stored is not None and secret.split("_", 2)[2] not in msgspec.json.encode(stored).decode()
    )
    assert (await auth.tokens.verify(secret)).role == "viewer"
    auth.clock.advance(minutes=5)
    await auth.tokens.verify(secret)
    used = await auth.catalog.get_token(rec.token_id)
    assert used is not None and used.last_used_at == T0 + timedelta(minutes=5)
    assert (await auth.actions()).count("token_used") == 1, "first use per process only"
    await auth.tokens.revoke("prom", actor=ADMIN)
    with pytest.raises(TokenRefused):
        await auth.tokens.verify(secret)


async def test_expired_malformed_and_forged_tokens_are_refused_alike(auth: Auth) -> None:
    _, secret = await auth.tokens.create("ci", "operator", timedelta(hours=1), actor=ADMIN)
    forged = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    messages = set()
    for bad in (forged, "mbk_nothex_x", "Bearer x", secret.replace("mbk_", "mbk_f", 1)):
        with pytest.raises(TokenRefused) as exc:
            await auth.tokens.verify(bad)
        messages.add(str(exc.value))
    auth.clock.advance(hours=1)
    with pytest.raises(TokenRefused) as exc:
        await auth.tokens.verify(secret)
    messages.add(str(exc.value))
    assert len(messages) == 1


def test_token_lifetimes_parse_and_bad_ones_say_how() -> None:
    assert parse_lifetime("90d") == timedelta(days=90)
    assert parse_lifetime("12h") == timedelta(hours=12)
    with pytest.raises(AuthInputError, match=r"write e\.g\. 90d"):
        parse_lifetime("soon")
    with pytest.raises(AuthInputError, match="between 1h and"):
        parse_lifetime("0d")


# --- sessions ---------------------------------------------------------------------------


async def test_sessions_end_when_idle_and_at_the_absolute_limit(auth: Auth) -> None:
    await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    sid, rec = await auth.sessions.start("bob", "ip1")
    assert rec.session_hash != sid and await auth.catalog.get_session(sid) is None
    auth.clock.advance(seconds=CFG.session_idle_s - 1)
    assert await auth.sessions.resume(sid) == rec
    auth.clock.advance(seconds=CFG.session_idle_s - 1)  # kept alive by the last request
    assert await auth.sessions.resume(sid) is not None
    auth.clock.advance(seconds=CFG.session_idle_s)
    assert await auth.sessions.resume(sid) is None, "idle"
    assert await auth.catalog.get_session(rec.session_hash) is None, "and deleted"
    sid, _ = await auth.sessions.start("bob", "ip1")
    steps = int(CFG.session_absolute_s // (CFG.session_idle_s / 2))
    for _ in range(steps - 1):
        auth.clock.advance(seconds=CFG.session_idle_s / 2)
        assert await auth.sessions.resume(sid) is not None
    auth.clock.advance(seconds=CFG.session_idle_s / 2)
    assert await auth.sessions.resume(sid) is None, "absolute limit, though active"


async def test_a_disabled_users_session_ends_and_csrf_must_match(auth: Auth) -> None:
    await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    sid, rec = await auth.sessions.start("bob", "ip1")
    assert sessions.csrf_ok(rec, rec.csrf_token)
    assert not sessions.csrf_ok(rec, None) and not sessions.csrf_ok(rec, rec.csrf_token[:-1])
    await auth.users.disable("bob", actor=ADMIN)
    assert await auth.sessions.resume(sid) is None
    assert await auth.sessions.resume(None) is None


def test_the_cookie_is_httponly_samesite_strict_and_secure_with_tls() -> None:
    plain = sessions.set_cookie("abc", tls=False, max_age_s=3600).split("; ")
    assert plain[0] == "mosaic_session=abc"
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"} <= set(plain)
    assert "Secure" not in plain
    tls = sessions.set_cookie("abc", tls=True, max_age_s=3600).split("; ")
    assert tls[0] == "__Host-mosaic_session=abc" and "Secure" in tls
    assert "Max-Age=0" in sessions.clear_cookie(tls=True)


# --- roles and config -------------------------------------------------------------------


def test_every_operator_api_verb_has_a_role() -> None:
    source = (REPO_ROOT / "coordinator" / "service.py").read_text()
    verbs = set(re.findall(r'api\.add_endpoint\("(\w+)"', source))
    assert {"backup", "restore", "list", "status"} <= verbs
    assert verbs - set(roles.VERB_ROLES) == set()


def test_what_each_role_may_do() -> None:
    assert roles.allows("viewer", "status") and roles.allows("viewer", "list")
    assert not roles.allows("viewer", "restore") and not roles.allows("viewer", "backup")
    assert roles.allows("operator", "restore") and roles.allows("operator", "drill")
    assert not roles.allows("operator", "users") and not roles.allows("operator", "tokens")
    assert all(roles.allows("admin", v) for v in roles.VERB_ROLES)
    assert not roles.allows("admin", "no_such_verb"), "unknown verbs are refused"


def test_auth_config_section_is_checked_at_load(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text("[auth]\nsession_idle_s = 600\nmfa_required_roles = ['admin', 'operator']\n")
    cfg = load(path, CoordinatorConfig).auth
    assert cfg.session_idle_s == 600 and cfg.mfa_required("operator")
    assert not cfg.anonymous_metrics
    path.write_text("[auth]\nlockout_minutes = 5\n")
    with pytest.raises(ConfigError, match="lockout_minutes"):
        load(path, CoordinatorConfig)
    path.write_text("[auth]\nsession_idle_s = 100000\n")
    with pytest.raises(ConfigError, match="longer than session_absolute_s"):
        load(path, CoordinatorConfig)
    path.write_text("[auth]\nmfa_required_roles = ['root']\n")
    with pytest.raises(ConfigError, match="mfa_required_roles"):
        load(path, CoordinatorConfig)


async def test_a_login_deletes_the_sessions_that_timed_out(auth: Auth) -> None:
    await auth.users.add("bob", "viewer", PASSWORD, mfa=False, actor=ADMIN)
    _, abandoned = await auth.sessions.start("bob", "ip1")  # never used again
    auth.clock.advance(seconds=CFG.session_idle_s + 1)
    _, fresh = await auth.sessions.start("bob", "ip2")
    assert await auth.catalog.get_session(abandoned.session_hash) is None
    assert await auth.catalog.get_session(fresh.session_hash) is not None
