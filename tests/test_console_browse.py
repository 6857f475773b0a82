"""Browsing a backup, restoring and downloading one file, and the actions, in a real
Chromium against a real coordinator, agent, NATS and catalog (tests/fixtures/console.py).

The console never decrypts: listings and bytes come from the agent over NATS. The tests
check what a user cares about: the restored file's bytes on disk equal the source; the
downloaded bytes equal the source; a viewer sees no restore button AND its crafted POST
(with its own valid CSRF token) answers 403; a destination outside the agent's restore
roots is refused naming them; a secret file shows as ``<secret>`` to an operator and by
name to an admin; every action is in the audit trail under the user's name. Saves
docs/img/console-browse.png.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from playwright.async_api import Page

from shared.wire.browse import SECRET_NAME
from tests.fixtures.console import ConsoleOptions, ConsoleStack

SECRET_CONTENT = "api-token-value-that-must-never-show"


@pytest.fixture
def console_options() -> ConsoleOptions:
    return ConsoleOptions(secret=("*.key",), restore_roots=("restore",))


async def backup_from_actions_page(console: ConsoleStack, page: Page) -> str:
    """The operator presses "Back up" on /actions; the new backup's id once cataloged."""
    (console.source / "docs" / "api.key").write_text(SECRET_CONTENT)
    await page.goto(f"{console.url}/actions")
    row = page.locator(f'tr[data-dataset="{console.dataset}"]')
    await row.locator("select[name=backup_type]").select_option("full")
    await row.locator("button.backup-now").click()
    await page.wait_for_selector("#outcomes")
    assert "job sent to agent" in await page.inner_text("#outcomes")
    with anyio.fail_after(30):
        # the catalog cannot notify: poll it (bounded by the scope above)
        while not (backups := await console.catalog.list_backups(dataset=console.dataset)):  # noqa: ASYNC110
            await anyio.sleep(0.1)
    return backups[0].backup_id


async def names_on(page: Page) -> list[str]:
    return [
        n or ""
        for n in await page.locator("#files tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.name)"
        )
    ]


async def size_of(page: Page, name: str) -> str:
    return (await page.inner_text(f'#files tr[data-name="{name}"] td.size')).strip()


async def test_browse_restore_and_download_one_file(console: ConsoleStack, page: Page) -> None:
    await console.login(page, "operator", next_path="/actions")
    bid = await backup_from_actions_page(console, page)

    await page.goto(f"{console.url}/backups/{bid}/browse")
    assert await names_on(page) == ["docs", "notes.md"]
    await page.click("#files a:text('docs/')")
    await page.wait_for_url(lambda u: "path=docs" in u)
    assert await names_on(page) == ["report.txt", SECRET_NAME]  # name and size withheld
    assert await size_of(page, SECRET_NAME) == "–"
    assert "api.key" not in await page.content()
    await console.shot(page, "browse")

    # restore one file into the agent's restore roots: the bytes on disk equal the source
    dest = console.work / "restore" / "one"
    await page.check('#files input[value="docs/report.txt"]')
    await page.fill("input[name=destination]", str(dest))
    await page.click("#restore-button")
    await page.wait_for_selector("#outcomes")
    outcome = await page.inner_text("#outcomes")
    assert "restored 1 files" in outcome, outcome
    restored = dest / "docs" / "report.txt"
    assert restored.read_bytes() == (console.source / "docs" / "report.txt").read_bytes()
    assert not (dest / "notes.md").exists() and not (dest / "docs" / "api.key").exists()

    # download through the browser: the bytes equal the source
    await page.goto(f"{console.url}/backups/{bid}/browse")
    async with page.expect_download() as info:
        await page.click('#files tr[data-name="notes.md"] a.download')
    download = await info.value
    saved = Path(await download.path())
    assert saved.read_bytes() == (console.source / "notes.md").read_bytes()
    assert download.suggested_filename == "notes.md"

    # every action under the operator's name
    entries = await console.catalog.list_audit(limit=50)
    by = {(e.action, e.actor) for e in entries}
    assert ("backup_requested", "operator") in by, by
    assert ("restore_requested", "operator") in by, by
    assert ("file_downloaded", "operator") in by, by


async def test_restore_outside_the_roots_is_refused_naming_them(
    console: ConsoleStack, page: Page
) -> None:
    await console.login(page, "operator", next_path="/actions")
    bid = await backup_from_actions_page(console, page)
    await page.goto(f"{console.url}/backups/{bid}/browse")
    outside = console.work / "elsewhere"
    await page.fill("input[name=destination]", str(outside))
    await page.click("#restore-button")
    await page.wait_for_selector("#outcomes")
    outcome = await page.inner_text("#outcomes")
    roots = str(console.work / "restore")
    assert "restore failed" in outcome and "outside the restore roots" in outcome, outcome
    assert f"({roots})" in outcome, outcome
    assert not outside.exists()

    # the other actions: every dataset of the agent, a verify, a drill; each in the audit
    # trail under the operator's name (or the coordinator's one-line refusal on the page)
    assert console.agent is not None
    await page.goto(f"{console.url}/actions")
    await page.click(
        f"#agents-actions button:text('Back up every dataset of {console.agent.name}')"
    )
    await page.wait_for_selector("#outcomes")
    assert f"incremental backup of {console.dataset}" in await page.inner_text("#outcomes")
    assert "job sent to agent" in await page.inner_text("#outcomes")
    for button, verb in (("Verify", "verify"), ("Run a drill", "drill")):
        await page.goto(f"{console.url}/actions")
        row = page.locator(f'tr[data-dataset="{console.dataset}"]')
        await row.locator(f"button:text('{button}')").click()
        await page.wait_for_selector("#outcomes")
        text = await page.inner_text("#outcomes")
        assert f"{verb} of {console.dataset}" in text and "job sent to agent" in text, text
    actions = {(e.action, e.actor) for e in await console.catalog.list_audit(limit=50)}
    for action in ("backup_requested", "verify_requested", "drill_requested"):
        assert (action, "operator") in actions, actions


async def test_viewer_sees_no_restore_and_its_crafted_post_is_forbidden(
    console: ConsoleStack, page: Page
) -> None:
    await console.login(page, "operator", next_path="/actions")
    bid = await backup_from_actions_page(console, page)
    await page.context.clear_cookies()

    await console.login(page, "viewer", next_path=f"/backups/{bid}/browse")
    await page.goto(f"{console.url}/backups/{bid}/browse?path=docs")
    assert await names_on(page) == ["report.txt", SECRET_NAME]
    assert await page.locator("#restore-button").count() == 0
    assert await page.locator("a.download").count() == 0
    assert await page.locator("a[href='/actions']").count() == 0  # no Actions in the nav

    csrf = await console.csrf_of(page)
    dest = console.work / "restore" / "by-viewer"
    crafted = await page.request.post(
        f"{console.url}/actions/restore",
        form={"csrf": csrf, "backup_id": bid, "destination": str(dest), "paths": "notes.md"},
    )
    assert crafted.status == 403, await crafted.text()
    download = await page.request.get(f"{console.url}/backups/{bid}/download?path=notes.md")
    assert download.status == 403
    backup_now = await page.request.post(
        f"{console.url}/actions/backup", form={"csrf": csrf, "scope": "all"}
    )
    assert backup_now.status == 403
    # the refused POSTs reached nothing: a real request of the operator is the marker
    entries = await console.catalog.list_audit(limit=50)
    assert not any(e.actor == "viewer" and e.action.endswith("_requested") for e in entries)
    assert not dest.exists()


async def test_admin_sees_secret_names_but_nobody_downloads_a_secret(
    console: ConsoleStack, page: Page
) -> None:
    await console.login(page, "operator", next_path="/actions")
    bid = await backup_from_actions_page(console, page)
    refused = await page.request.get(f"{console.url}/backups/{bid}/download?path=docs/api.key")
    assert refused.status == 403
    assert SECRET_CONTENT not in await refused.text() and "api.key" not in await refused.text()
    await page.context.clear_cookies()

    await console.login(page, "admin", next_path=f"/backups/{bid}/browse?path=docs")
    await page.goto(f"{console.url}/backups/{bid}/browse?path=docs")
    assert await names_on(page) == ["api.key", "report.txt"]
    assert "secret" in await page.inner_text('#files tr[data-name="api.key"]')
    assert await size_of(page, "api.key") == "–"  # the name, never the size
    assert await page.locator('#files tr[data-name="api.key"] a.download').count() == 0
    refused = await page.request.get(f"{console.url}/backups/{bid}/download?path=docs/api.key")
    assert refused.status == 403 and SECRET_CONTENT not in await refused.text()
