"""The console's read pages in a real Chromium against a real coordinator, agent, NATS
and catalog (tests/fixtures/console.py): the verdict follows failed and good backups,
live progress reaches 100 % through the SSE feed, the 30-day strip marks today, a
backup's page lists its copies, the audit trail filters. Saves the screenshots the
docs show (docs/img/console-*.png)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
from playwright.async_api import Page

from coordinator.schedule import FireTimes
from coordinator.web import view
from shared.config.coordinator import DatasetConfig, ScheduleConfig
from shared.wire.api import BackupRequest, JobAccepted
from shared.wire.drills import HostDrillItem, HostDrillResult, render_report
from shared.wire.events import VerifyCompleted
from shared.wire.records import BackupRecord, JobRecord, MaintenanceRecord
from shared.wire.sources import FilesSource
from tests.fixtures.console import ConsoleStack


async def backup(console: ConsoleStack, *, by: str = "operator") -> str:
    acc = await console.ctx.bus.request(
        "backup", BackupRequest(dataset=console.dataset, requested_by=by)
    )
    assert isinstance(acc, JobAccepted), acc
    return acc.job_id


async def job_ends(console: ConsoleStack, job_id: str, status: str) -> None:
    """Wait until the catalog has the job ``status`` (the coordinator recorded it)."""
    with anyio.fail_after(30):
        while True:
            job = await console.catalog.get_job(job_id)
            if job is not None and job.status in ("completed", "failed"):
                assert job.status == status, job
                return
            await anyio.sleep(0.1)


async def reload_until(page: Page, url: str, ok: Callable[[Page], object]) -> None:
    """Load ``url`` again until ``ok(page)`` (an awaitable of a truth) holds."""
    with anyio.fail_after(20):
        while True:
            await page.goto(url)
            if await ok(page):  # type: ignore[misc]
                return
            await anyio.sleep(0.2)


def verdict_is(state: str) -> Callable[[Page], object]:
    async def check(page: Page) -> bool:
        return await page.get_attribute("#verdict", "data-state") == state

    return check


async def today_cell(page: Page) -> str | None:
    return await page.get_attribute(".strip-big .cell:last-child", "data-state")


async def test_verdict_strip_progress_backup_page(console: ConsoleStack, page: Page) -> None:
    await console.login(page, "viewer", next_path="/agents")
    home = f"{console.url}/"
    await page.goto(home)
    text = await page.inner_text("#verdict")
    assert await page.get_attribute("#verdict", "data-state") == "degraded", text
    assert "1 dataset never backed up" in text

    # a failing backup: the source folder is gone
    hidden = console.source.with_name("source-away")
    console.source.rename(hidden)
    await job_ends(console, await backup(console), "failed")
    await reload_until(page, home, verdict_is("failing"))
    assert "failing: 1 dataset failed" in await page.inner_text("#verdict")
    row = page.locator(f"tr[data-dataset='{console.dataset}']")
    assert await row.locator(".badge").inner_text() == "failed"
    ds_url = f"{console.url}/datasets/{console.dataset}"
    await page.goto(ds_url)
    assert await today_cell(page) == "failed"

    # a good one, watched live on the overview: progress comes by SSE to 100 %
    hidden.rename(console.source)
    await page.goto(home)
    await page.wait_for_selector("html[data-progress=open]")
    job_id = await backup(console)
    done = page.locator(f"#jobs tr[data-job='{job_id}'][data-state=completed]")
    await done.wait_for(timeout=30_000)
    assert await done.locator(".j-pct").inner_text() == "100.0 %"
    assert await done.locator("progress").get_attribute("value") == "100"
    await job_ends(console, job_id, "completed")
    await reload_until(page, home, verdict_is("healthy"))
    assert (await page.inner_text("#verdict")).startswith("healthy")
    await console.shot(page, "overview")

    await page.goto(ds_url)
    assert await today_cell(page) == "ok"
    assert await page.locator("svg.chart").count() == 3

    # the backup's page: its summary from the catalog and its copies
    newest = await console.catalog.last_backup(console.dataset)
    assert newest is not None
    await page.click(f"a[href='/backups/{newest.backup_id}']")
    await page.wait_for_selector("#copies")
    copies = await page.locator("#copies tbody tr").all_inner_texts()
    assert [c.split() for c in copies] == [["t", "primary"]]
    summary = await page.inner_text("#summary")
    assert f"({newest.bytes_read})" in summary and str(newest.files) in summary
    # its files are a click away: the agent lists them (coordinator/web/pages/browse.py)
    await page.click("#browse")
    await page.wait_for_selector("text=listed by the agent")
    await page.go_back()

    # failing again, then back
    console.source.rename(hidden)
    await job_ends(console, await backup(console), "failed")
    await reload_until(page, home, verdict_is("failing"))
    hidden.rename(console.source)
    await job_ends(console, await backup(console), "completed")
    await reload_until(page, home, verdict_is("healthy"))

    # the dataset grows over a few more backups: its charts have a history to show
    for n in range(3):
        (console.source / f"more-{n}.bin").write_bytes(bytes(range(256)) * 400 * (n + 1))
        await job_ends(console, await backup(console), "completed")
    await page.goto(ds_url)
    assert await page.locator("table.backups tbody tr").count() == 5
    await console.shot(page, "dataset")


async def test_audit_filters_and_drills(console: ConsoleStack, page: Page) -> None:
    await job_ends(console, await backup(console, by="alice"), "completed")
    await job_ends(console, await backup(console, by="bob"), "completed")
    await console.login(page, "viewer", next_path="/agents")

    await page.goto(f"{console.url}/audit")
    actors = await page.locator("#audit tbody td:nth-child(3)").all_inner_texts()
    assert {"alice", "bob", "viewer"} <= set(actors), actors  # viewer: its login

    await page.fill("input[name=actor]", "alice")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url(lambda u: "actor=alice" in u)
    rows = page.locator("#audit tbody tr")
    actors = await page.locator("#audit tbody td:nth-child(3)").all_inner_texts()
    assert actors and set(actors) == {"alice"}, actors
    actions = await page.locator("#audit tbody td:nth-child(2)").all_inner_texts()
    assert "backup_requested" in actions

    await page.goto(f"{console.url}/audit?action=login&actor=bob")
    assert await rows.count() == 1
    assert "no entry matches" in await rows.inner_text()
    await page.goto(f"{console.url}/audit?action=backup_requested&dataset={console.dataset}")
    actors = await page.locator("#audit tbody td:nth-child(3)").all_inner_texts()
    assert sorted(actors) == ["alice", "bob"], actors
    await page.goto(f"{console.url}/audit")
    await console.shot(page, "audit")

    await page.goto(f"{console.url}/drills")
    assert "no drill yet" in await page.inner_text("#drills")

    # Results as the coordinator's recorder writes them (this fixture's coordinator has
    # no [maintenance] agent to run drills and verifies): the pages read them back.
    newest = await console.catalog.last_backup(console.dataset)
    assert newest is not None
    await record_results(console, newest.backup_id)
    await page.goto(f"{console.url}/drills")
    row = await page.locator("#drills tbody tr").inner_text()
    assert console.dataset in row and "passed" in row and "7.2 s" in row and "3" in row
    assert await page.locator("svg.chart").count() == 2
    report = await page.inner_text("pre.report")
    assert f"# Disaster-recovery drill of host {newest.agent}: PASSED" in report
    assert f"`{newest.backup_id}`" in report  # the Markdown as text, not rendered
    await console.shot(page, "drills")

    await page.goto(f"{console.url}/backups/{newest.backup_id}")
    verifies = await page.locator("#verifies tbody tr").all_inner_texts()
    assert len(verifies) == 2, verifies
    assert "damaged" in verifies[0] and "intact" in verifies[1]
    await console.shot(page, "backup")


async def record_results(console: ConsoleStack, backup_id: str) -> None:
    """Three drills (RTO 12.5, 9, 7.25 s), two verifies of the backup's target (the
    newest found it damaged), one host drill with its Markdown report."""
    b = await console.catalog.get_backup(backup_id)
    assert b is not None
    now = datetime.now(UTC)
    for n, (rto, days) in enumerate(((12.5, 2), (9.0, 1), (7.25, 0))):
        at = now - timedelta(days=days, seconds=1)
        await console.catalog.record_maintenance(
            MaintenanceRecord(
                job_id=f"drill-{n}",
                kind="drill",
                agent=b.agent,
                target=b.target,
                dataset=b.dataset,
                backup_id=backup_id,
                outcome="passed",
                started_at=at - timedelta(seconds=rto),
                finished_at=at,
                rto_s=rto,
                rpo_s=60.0 * (n + 1),
                summary="restore, rehash: ok",
            )
        )
    for n, damaged in enumerate(([], [backup_id])):
        at = now + timedelta(seconds=n)
        ev = VerifyCompleted(
            job_id=f"verify-{n}", agent=b.agent, target=b.target, damaged_backups=damaged, at=at
        )
        await console.catalog.record_maintenance(
            MaintenanceRecord(
                job_id=ev.job_id,
                kind="verify",
                agent=b.agent,
                target=b.target,
                dataset=b.dataset,
                outcome="failed" if damaged else "passed",
                started_at=at,
                finished_at=at,
                summary=f"{len(damaged)} damaged",
                detail=msgspec.json.encode(ev).decode(),
            )
        )
    item = HostDrillItem(
        dataset=b.dataset,
        stage="application",
        kind="files",
        backup_id=backup_id,
        outcome="passed",
        rto_s=7.25,
        rpo_s=60.0,
        checks="rehash 2 files",
    )
    result = HostDrillResult(
        drill_id="hostdrill-1",
        host=b.agent,
        agent=b.agent,
        point=now,
        outcome="passed",
        started_at=now - timedelta(seconds=8),
        finished_at=now,
        rto_s=8.0,
        rpo_s=60.0,
        items=[item],
    )
    result = msgspec.structs.replace(result, report=render_report(result))
    await console.catalog.record_maintenance(
        MaintenanceRecord(
            job_id=result.drill_id,
            kind="host_drill",
            agent=b.agent,
            target="",
            dataset=b.agent,
            outcome="passed",
            started_at=result.started_at,
            finished_at=result.finished_at,
            rto_s=8.0,
            rpo_s=60.0,
            summary="host drill passed",
            detail=msgspec.json.encode(result).decode(),
        )
    )


def test_strip_marks_ok_failed_missed_and_nothing_due() -> None:
    """The 30-day strip from plain values: a daily schedule, the dataset new on the
    5th, nothing on the 5th and 6th (missed), a backup on the 7th, only a failure on
    the 8th, nothing on the 9th (missed), a job running today (the 10th)."""
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    cfg = DatasetConfig(
        agent="a",
        target="t",
        source=FilesSource(path="/srv"),
        schedules=[ScheduleConfig(cron="0 2 * * *", backup_type="incremental")],
    )
    at = datetime(2026, 3, 7, 2, 5, tzinfo=UTC)
    b = BackupRecord(
        backup_id="b1",
        dataset="d",
        agent="a",
        target="t",
        backup_type="incremental",
        repository_id="r",
        started_at=at,
        finished_at=at,
        files=1,
        bytes_read=1,
        bytes_new=1,
        bytes_stored=1,
        duration_s=1.0,
    )
    failed_at = datetime(2026, 3, 8, 2, 1, tzinfo=UTC)
    f = JobRecord(
        job_id="j",
        job_kind="backup",
        dataset="d",
        agent="a",
        target="t",
        status="failed",
        requested_at=failed_at,
        updated_at=failed_at,
    )
    cells = view.strip(
        cfg,
        now=now,
        backups=[b],
        failures=[f],
        running=True,
        first_seen=datetime(2026, 3, 5, 0, 0, tzinfo=UTC),
        due=view.DueDays(now, FireTimes()),
    )
    assert len(cells) == view.STRIP_DAYS and cells[-1].day == "2026-03-10"
    states = [c.state for c in cells[-7:]]  # 4th … 10th
    assert states == ["none", "missed", "missed", "ok", "failed", "missed", "running"]
    assert cells[0].state == "none"  # before the dataset appeared: nothing was due


async def test_back_up_now_button_progress_arrives_live(console: ConsoleStack, page: Page) -> None:
    """An operator presses "Back up" (the actions page, in a second tab) while the
    overview follows the SSE feed in the first: the job's row appears there without a
    reload and reaches 100 %; the audit trail names the operator."""
    await console.login(page, "operator", next_path="/agents")
    await page.goto(f"{console.url}/")
    await page.wait_for_selector("html[data-progress=open]")
    assert await page.locator("#jobs tr[data-job]").count() == 0

    actions = await page.context.new_page()
    await actions.goto(f"{console.url}/actions")
    await actions.click(f"tr[data-dataset='{console.dataset}'] button.backup-now")
    await actions.wait_for_load_state()

    done = page.locator("#jobs tr[data-job][data-state=completed]")
    await done.wait_for(timeout=30_000)
    assert console.dataset in await done.inner_text()
    assert await done.locator(".j-pct").inner_text() == "100.0 %"
    job_id = await done.get_attribute("data-job")
    assert job_id is not None
    await job_ends(console, job_id, "completed")
    entries = await console.catalog.list_audit(action="backup_requested")
    assert [(e.actor, e.job_id) for e in entries] == [("operator", job_id)]
