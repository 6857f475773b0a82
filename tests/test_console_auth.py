"""The console's doors, in a real Chromium against a real coordinator, agent, NATS and
catalog: password + TOTP login, one generic message and a lockout, CSRF, session
timeouts, roles, API tokens for Prometheus, TLS."""

from __future__ import annotations

import asyncio
import ssl
from datetime import timedelta

import aiohttp
import pytest
from playwright.async_api import Page

from coordinator.audit import AuditTrail
from coordinator.auth.lockout import GENERIC
from coordinator.auth.store import UserStore
from shared.config.auth import AuthConfig
from shared.vocab import utcnow
from tests.fixtures.console import ConsoleOptions, ConsoleStack

pytestmark = pytest.mark.timeout(180)


async def actions(console: ConsoleStack, action: str) -> list[str]:
    """The actors of the audit entries of ``action``, newest first."""
    return [e.actor for e in await console.catalog.list_audit(limit=100, action=action)]


async def error_text(page: Page) -> str:
    return (await page.text_content("p.error")) or ""


async def test_login_with_password_and_totp(console: ConsoleStack, page: Page) -> None:
    answer = await page.goto(f"{console.url}/login")
    assert answer is not None and answer.status == 200
    headers = answer.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert (
        "unsafe-inline"
        not in headers["content-security-policy"].split("script-src")[1].split(";")[0]
    )
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    await console.shot(page, "login")

    # the password alone is not enough for an admin: the code step follows
    await page.fill("input[name=name]", "admin")
    await page.fill("input[name=password]", console.users["admin"].password)
    await page.click("button[type=submit]")
    await page.wait_for_selector("input[name=code]")
    assert not await page.context.cookies(console.url)
    await page.fill("input[name=code]", await console.totp_code("admin"))
    await page.click("button[type=submit]")
    await page.wait_for_url(lambda u: "/login" not in u)
    cookies = {c["name"]: c for c in await page.context.cookies(console.url)}
    cookie = cookies["mosaic_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert "admin" in await actions(console, "login")

    # logged in: the admin page, then logging out ends the session
    answer = await page.goto(f"{console.url}/admin")
    assert answer is not None and answer.status == 200
    await page.click("header form.who button")
    await page.wait_for_url(f"{console.url}/login")
    assert "admin" in await actions(console, "logout")
    answer = await page.goto(f"{console.url}/admin")
    assert answer is not None and page.url.startswith(f"{console.url}/login?next=/admin")


@pytest.mark.parametrize("console_options", [ConsoleOptions(auth=AuthConfig(lockout_failures=3))])
async def test_wrong_password_or_code_one_message_and_lockout(
    console: ConsoleStack, page: Page
) -> None:
    async def attempt(name: str, password: str, code: str) -> str:
        await page.goto(f"{console.url}/login")
        await page.fill("input[name=name]", name)
        await page.fill("input[name=password]", password)
        await page.click("button[type=submit]")
        await page.wait_for_selector("input[name=code]")  # asked for every name alike
        await page.fill("input[name=code]", code)
        await page.click("button[type=submit]")
        await page.wait_for_selector("p.error")
        return await error_text(page)

    admin = console.users["admin"]
    right_code = await console.totp_code("admin")
    wrong_code = "000000" if right_code != "000000" else "111111"
    # a wrong password, a wrong code, an unknown name: the same words each time
    assert await attempt("admin", "not the password at all", right_code) == GENERIC
    assert await attempt("admin", admin.password, wrong_code) == GENERIC
    assert await attempt("nobody-here", "whatever it is", "123456") == GENERIC
    # a user without MFA and a wrong password: the code step too (no hint it has none)
    assert await attempt("viewer", "not the password at all", "") == GENERIC
    failed = await actions(console, "login_failed")
    assert failed.count("admin") == 2 and "nobody-here" in failed and "viewer" in failed

    # the third failure locks the name: now even the right password and code are refused
    assert (
        await attempt("admin", "still not the password", await console.totp_code("admin"))
        == GENERIC
    )
    assert await actions(console, "login_locked") == ["admin"]
    assert await attempt("admin", admin.password, await console.totp_code("admin")) == GENERIC
    assert not await page.context.cookies(console.url)
    assert "admin" not in await actions(console, "login")


@pytest.mark.parametrize(
    "console_options",
    [ConsoleOptions(auth=AuthConfig(mfa_required_roles=["admin", "operator"]), agent=False)],
)
async def test_mfa_required_but_not_enrolled_is_told_how(console: ConsoleStack, page: Page) -> None:
    # made under a policy that did not require MFA for operators; the console's does
    lax = UserStore(console.catalog, AuditTrail(console.catalog), AuthConfig())
    await lax.add("op2", "operator", "operator two passphrase", mfa=False, actor="test")
    await page.goto(f"{console.url}/login")
    await page.fill("input[name=name]", "op2")
    await page.fill("input[name=password]", "operator two passphrase")
    await page.click("button[type=submit]")
    await page.wait_for_selector("p.error")
    assert "`mosaic-backup users mfa op2`" in await error_text(page)
    assert not await page.context.cookies(console.url)
    # with the wrong password it says nothing of MFA
    await page.fill("input[name=name]", "op2")
    await page.fill("input[name=password]", "not the passphrase")
    await page.click("button[type=submit]")
    await page.wait_for_selector("input[name=code]")


async def test_post_without_csrf_token_is_refused(console: ConsoleStack, page: Page) -> None:
    await console.login(page, "admin", next_path="/admin")
    form: dict[str, str | float | bool] = {"name": "sneaky", "role": "admin", "expires": "30d"}
    refused = await page.request.post(f"{console.url}/admin/tokens", form=form)
    assert refused.status == 403
    assert "CSRF token" in (await refused.json())["error"]["message"]
    wrong = await page.request.post(
        f"{console.url}/admin/tokens", form={**form, "csrf": "not-the-token"}
    )
    assert wrong.status == 403
    assert [t.name for t in await console.catalog.list_tokens()] == []

    csrf = await page.get_attribute('meta[name="csrf-token"]', "content")
    assert csrf and csrf == await console.csrf_of(page)
    made = await page.request.post(
        f"{console.url}/admin/tokens", form=form, headers={"X-CSRF-Token": csrf}
    )
    assert made.status == 200
    assert [t.name for t in await console.catalog.list_tokens()] == ["sneaky"]


async def test_expired_session_is_sent_to_the_login_page(console: ConsoleStack, page: Page) -> None:
    await console.login(page, "viewer", next_path="/metrics")
    answer = await page.goto(f"{console.url}/metrics")
    assert answer is not None and answer.status == 200
    assert "mosaic_catalog_backups_total" in await answer.text()

    idle = console.cfg.auth.session_idle_s
    console.auth.sessions.clock = lambda: utcnow() + timedelta(seconds=idle + 1)
    answer = await page.goto(f"{console.url}/metrics")
    assert answer is not None and page.url == f"{console.url}/login?next=/metrics"
    assert await page.is_visible("input[name=password]")
    # the ended session is gone from the catalog and from the browser
    assert not await page.context.cookies(console.url)


async def test_admin_creates_a_token_that_scrapes_metrics(
    console: ConsoleStack, page: Page
) -> None:
    await console.login(page, "admin", next_path="/admin")
    await page.fill("#create-token input[name=name]", "prometheus")
    await page.select_option("#create-token select[name=role]", "viewer")
    await page.fill("#create-token input[name=expires]", "30d")
    await page.click("#create-token button[type=submit]")
    secret = ((await page.text_content("#token-secret")) or "").strip()
    assert secret.startswith("mbk_")

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{console.url}/metrics") as r:
            assert r.status == 401
        bearer = {"Authorization": f"Bearer {secret}"}
        async with http.get(f"{console.url}/metrics", headers=bearer) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert "mosaic_catalog_backups_total" in await r.text()
        async with http.get(f"{console.url}/api/v1/backup/status", headers=bearer) as r:
            assert r.status == 200
            doc = await r.json()
            assert doc["coordinator"] == console.cfg.name and "recent_failures" in doc
        async with http.get(f"{console.url}/metrics", headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "token_refused"
    assert "token prometheus" in await actions(console, "token_used")
    assert await actions(console, "token_refused") == ["anonymous"]
    assert "admin" in await actions(console, "token_created")

    # the list shows the token, never its secret; revoked, it scrapes no more
    await page.goto(f"{console.url}/admin")
    row = page.locator('tr[data-token="prometheus"]')
    assert "active" in (await row.text_content() or "")
    assert secret not in await page.content()
    await console.shot(page, "admin")
    await row.locator("button").click()
    await page.wait_for_selector("#admin-notice")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{console.url}/metrics", headers=bearer) as r:
            assert r.status == 401


async def test_admin_adds_and_disables_a_user(console: ConsoleStack, page: Page) -> None:
    await console.login(page, "admin", next_path="/admin")
    await page.fill("#add-user input[name=name]", "carol")
    await page.select_option("#add-user select[name=role]", "operator")
    await page.fill("#add-user input[name=password]", "short")
    await page.eval_on_selector(
        "#add-user input[name=password]", "e => e.removeAttribute('minlength')"
    )
    await page.click("#add-user button[type=submit]")
    assert "fewer than the minimum" in ((await page.text_content("#admin-error")) or "")
    await page.fill("#add-user input[name=name]", "carol")
    await page.select_option("#add-user select[name=role]", "operator")
    await page.fill("#add-user input[name=password]", "carol's long passphrase")
    await page.check("#add-user input[name=mfa]")
    await page.click("#add-user button[type=submit]")
    assert len((await page.text_content("#totp-secret")) or "") >= 32
    assert await page.locator(".qr svg").count() == 1
    user = await console.catalog.get_user("carol")
    assert user is not None and user.role == "operator" and user.totp_secret is not None

    await page.goto(f"{console.url}/admin")
    await page.locator('tr[data-user="carol"] button').click()
    await page.wait_for_selector("#admin-notice")
    user = await console.catalog.get_user("carol")
    assert user is not None and user.disabled
    assert "admin" in await actions(console, "user_disabled")


async def test_viewer_gets_403_on_admin(console: ConsoleStack, page: Page) -> None:
    await console.login(page, "viewer", next_path="/metrics")
    answer = await page.goto(f"{console.url}/admin")
    assert answer is not None and answer.status == 403
    # the server refuses a crafted request too, with the right CSRF token
    csrf = await console.csrf_of(page)
    crafted = await page.request.post(
        f"{console.url}/admin/tokens",
        form={"name": "mine", "role": "admin", "expires": "30d", "csrf": csrf or ""},
    )
    assert crafted.status == 403
    assert await console.catalog.list_tokens() == []


@pytest.mark.parametrize(
    "console_options", [ConsoleOptions(auth=AuthConfig(anonymous_metrics=True), agent=False)]
)
async def test_anonymous_metrics_only_when_configured(console: ConsoleStack) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{console.url}/metrics") as r:
            assert r.status == 200
            assert "mosaic_catalog_backups_total" in await r.text()
        async with http.get(f"{console.url}/api/v1/backup/status") as r:
            assert r.status == 401  # the status document still needs a viewer


async def _login_over_tls(console: ConsoleStack, tls: ssl.SSLContext) -> str:
    async with aiohttp.ClientSession() as http:
        form = {"name": "viewer", "password": console.users["viewer"].password, "next": "/"}
        async with http.post(
            f"{console.url}/login", data=form, ssl=tls, allow_redirects=False
        ) as r:
            assert r.status == 303, await r.text()
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")
            return r.headers["Set-Cookie"]


@pytest.mark.parametrize(
    "console_options", [ConsoleOptions(tls=True, tls13_only=True, agent=False)]
)
async def test_tls13_only_refuses_tls12(console: ConsoleStack) -> None:
    cookie = await _login_over_tls(console, console.ssl_context())
    assert cookie.startswith("__Host-mosaic_session=")
    attrs = [a.strip() for a in cookie.split(";")]
    assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} <= set(attrs)
    old = console.ssl_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    port = int(console.url.rsplit(":", 1)[1])
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        await asyncio.open_connection("127.0.0.1", port, ssl=old)
    assert refused.value is not None  # reset or an alert: no TLS 1.2 session
    # and the listener still serves TLS 1.3
    assert (await _login_over_tls(console, console.ssl_context())).startswith("__Host-")


@pytest.mark.parametrize("console_options", [ConsoleOptions(tls=True, agent=False)])
async def test_tls12_allowed_without_tls13_only(console: ConsoleStack) -> None:
    old = console.ssl_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    cookie = await _login_over_tls(console, old)
    assert cookie.startswith("__Host-mosaic_session=") and "Secure" in cookie
