"""The audit trail: append-only in both catalogs, recorded by the coordinator, on NATS.

The catalog cases run on SQLite and a real PostgreSQL (like test_catalog_contract.py);
the end-to-end case backs up and restores through a real coordinator and agent and finds
the restore in the catalog's audit table, on the ``MOSAIC_AUDIT`` stream and in the
output of ``mosaic-backup audit``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psycopg
import pytest
from nats.js.api import DeliverPolicy
from rich.console import Console

from coordinator.audit import AuditTrail, policy_hash
from coordinator.catalog import Catalog, open_catalog
from coordinator.catalog.base import AuditEntry
from coordinator.service import Coordinator
from mosaic import operator
from shared import subjects
from shared.config.coordinator import (
    CatalogConfig,
    CoordinatorConfig,
    DatasetConfig,
    MaintenanceConfig,
    RetentionConfig,
    TierRetention,
)
from shared.config.targets import LocalTargetConfig
from shared.wire.api import JobAccepted
from shared.wire.events import BackupCompleted, PruneCompleted, RestoreCompleted
from shared.wire.sources import FilesSource
from tests.harness import agent_toml, cli, make_tree, running_stack, unique
from tests.test_maintenance_jobs import eventually

T0 = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
QUIET = Console(quiet=True)


def entry(n: int, **changes: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "entry_id": f"restore_requested:job-{n}",
        "at": T0 + timedelta(seconds=n),
        "action": "restore_requested",
        "actor": "alice@ops1",
        "dataset": "gitea-db",
        "backup_id": f"backup-{n}",
        "job_id": f"job-{n}",
        "detail": "to /srv/restore",
    }
    return AuditEntry(**(fields | changes))


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
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


async def test_entries_come_back_newest_first_and_once(catalog: Catalog) -> None:
    for n in range(3):
        await catalog.append_audit(entry(n))
    await catalog.append_audit(entry(1, actor="mallory"))  # same id: ignored
    await catalog.append_audit(entry(3, action="backup_scheduled", entry_id="s:3"))
    got = await catalog.list_audit(limit=10)
    assert [e.entry_id for e in got] == ["s:3", *(f"restore_requested:job-{n}" for n in (2, 1, 0))]
    assert got[2] == entry(1)  # times round-trip exactly, the first write wins
    assert await catalog.list_audit(limit=2, action="restore_requested") == [entry(2), entry(1)]


def _tamper(url: str, sql: str) -> None:
    """Run ``sql`` with a plain client of the database, as an intruder would."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite://"))
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit SET actor = 'nobody'",
        "DELETE FROM audit WHERE action = 'restore_requested'",
    ],
)
async def test_the_table_refuses_update_and_delete(
    catalog: Catalog, catalog_url: str, sql: str
) -> None:
    await catalog.append_audit(entry(1))
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
        _tamper(catalog_url, sql)
    assert await catalog.list_audit() == [entry(1)]


async def test_a_policy_change_is_recorded_once(catalog: Catalog) -> None:
    trail = AuditTrail(catalog)
    ds = {"web": DatasetConfig(agent="a", target="t", source=FilesSource(path="/srv"))}
    cfg = CoordinatorConfig(name="coord-1", datasets=ds)
    first = await trail.record_policy(cfg)
    assert first is not None and first.actor == "coord-1" and policy_hash(cfg) in first.detail
    assert await trail.record_policy(cfg) is None  # restarted, same policy: no new line
    moved = msgspec.structs.replace(cfg, nats_url="nats://elsewhere:4222")
    assert await trail.record_policy(moved) is None  # connection settings are not policy
    changed = msgspec.structs.replace(
        cfg, retention=RetentionConfig(daily=TierRetention(local="1d"))
    )
    second = await trail.record_policy(changed)
    assert second is not None and policy_hash(changed) in second.detail
    assert f"was {policy_hash(cfg)[:12]}" in second.detail
    back = await trail.record_policy(cfg)  # changing it back is a change too
    assert back is not None
    assert len(await catalog.list_audit(action="config_changed")) == 3


async def test_a_prune_is_audited_with_what_it_deleted(catalog: Catalog) -> None:
    trail = AuditTrail(catalog)
    done = PruneCompleted(
        job_id="prune-a-t-1", agent="a", target="t", forgotten=["b-1", "b-2"], at=T0
    )
    await trail.record_prune(done)
    await trail.record_prune(done)  # the event redelivered: still one line
    (e,) = await catalog.list_audit()
    assert (e.action, e.actor, e.job_id) == ("backups_deleted", "agent a", "prune-a-t-1")
    assert "forgot 2 backup(s): b-1, b-2" in e.detail


async def test_a_scheduled_backup_is_audited_once(nats_url: str, tmp_path: Path) -> None:
    ds = {"web": DatasetConfig(agent=unique("nobody"), target="t", source=FilesSource(path="/x"))}
    cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        datasets=ds,
    )
    catalog = await open_catalog(cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            coordinator = Coordinator(cfg, catalog)
            await tg.start(coordinator.run)
            job_id = unique("sched-web")
            first = await coordinator.dispatch_scheduled("web", "full", job_id)
            again = await coordinator.dispatch_scheduled("web", "full", job_id)  # fail-over
            assert isinstance(again, JobAccepted) and again.duplicate
            assert isinstance(first, JobAccepted)
            tg.cancel_scope.cancel()
        (e,) = await catalog.list_audit(action="backup_scheduled")
    finally:
        await catalog.aclose()
    assert (e.actor, e.dataset, e.job_id) == ("scheduler", "web", job_id)


async def test_scheduled_maintenance_jobs_are_audited_like_operator_jobs(
    nats_url: str, tmp_path: Path
) -> None:
    """A verify and a prune the maintenance schedule starts go out by the same path as
    backups: a catalog row, then an audit entry by ``scheduler``, then the publish."""
    agent = unique("nobody")  # no agent runs: the jobs wait in the stream
    ds = {"web": DatasetConfig(agent=agent, target="t", source=FilesSource(path="/x"))}
    fire = datetime(2026, 6, 7, 4, 0, tzinfo=UTC)
    crons = {"verify_cron": "0 4 * * *", "prune_cron": "0 4 * * *"}
    cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
        datasets=ds,
        scheduler_interval_s=0.2,
        maintenance=MaintenanceConfig(**crons, replicate_cron="", drill_cron=""),
    )
    catalog = await open_catalog(cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            coordinator = Coordinator(cfg, catalog, clock=lambda: fire + timedelta(seconds=30))
            await tg.start(coordinator.run)  # the 04:00 runs are due at once

            async def both() -> list[AuditEntry] | None:
                found = await catalog.list_audit(limit=10)
                return found if len(found) >= 3 else None  # config_changed + two jobs

            entries = await eventually("two scheduled maintenance entries", both, limit=30)
            tg.cancel_scope.cancel()
        ids = [e.job_id for e in entries if e.job_id]
        jobs = {i: await catalog.get_job(i) for i in ids if i is not None}
    finally:
        await catalog.aclose()
    scheduled = sorted(
        (e.action, e.actor, e.job_id) for e in entries if e.action != "config_changed"
    )
    assert scheduled == [
        ("prune_scheduled", "scheduler", f"prune-{agent}-t-20260607T0400Z"),
        ("verify_scheduled", "scheduler", f"verify-{agent}-t-20260607T0400Z"),
    ]
    prune = next(e for e in entries if e.action == "prune_scheduled")
    assert prune.detail == "target t: forget 0 backup(s)"
    assert len(jobs) == 2, jobs
    assert all(j is not None and j.status == "dispatched" for j in jobs.values()), jobs


async def test_a_restore_is_audited_in_the_catalog_and_on_nats(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "repo")), src
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        dest = tmp_path / "restored"
        res = await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60)
        assert isinstance(res, RestoreCompleted)

        sub = await st.bus.js.subscribe(
            subjects.audit("restore_requested"),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        on_nats = []
        while True:
            msg = await sub.next_msg(timeout=5)
            e = msgspec.json.decode(msg.data, type=AuditEntry)
            on_nats.append(e)
            if e.backup_id == done.backup_id:
                break
        await sub.unsubscribe()

    catalog = await open_catalog(st.coordinator.catalog.url)
    try:
        trail = await catalog.list_audit()
    finally:
        await catalog.aclose()
    actions = [(e.action, e.dataset, e.backup_id) for e in trail]
    assert actions[:2] == [
        ("restore_requested", st.dataset, done.backup_id),
        ("backup_requested", st.dataset, done.backup_id),
    ]
    # who asked: user@host of the operator's shell (mosaic/operator.py)
    assert trail[0].actor == operator.who() and trail[0].detail == f"to {dest}"
    assert trail[-1].action == "config_changed"  # the coordinator's first start
    assert on_nats[-1] == trail[0]

    shown = cli("audit", "--catalog", st.coordinator.catalog.url, "--limit", "5")
    assert shown.returncode == 0, shown.stderr
    assert "restore_requested" in shown.stdout and done.backup_id in shown.stdout
    bad = cli("audit", "--catalog", "mysql://x", "--limit", "5")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--catalog" in bad.stderr


async def test_key_rotation_and_prune_by_repo_tools_are_audited(
    nats_url: str, tmp_path: Path
) -> None:
    """`repo keys rotate` and `repo prune` run beside an agent, with its config and no
    coordinator involved; they still leave audit lines (via the agent's event subject),
    and a tool that cannot reach NATS says so in one line after doing its work."""
    src = make_tree(tmp_path / "src", big_mib=1)
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_url, tmp_path, target, src) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        cfg = agent_toml(
            tmp_path / "tool.toml",
            name=st.agent.name,
            nats_url=nats_url,
            key_file=Path(st.agent.key_file),
            targets={"t": target},
            extra="audit_plain_nats = true",  # this test's NATS has no auth
        )
        # in a thread: the coordinator and agent of this test share the event loop
        rotated = await anyio.to_thread.run_sync(
            lambda: cli("repo", "keys", "rotate", "--config", str(cfg), env={"USER": "carol"})
        )
        assert rotated.returncode == 0 and "not audited" not in rotated.stderr, rotated.stderr
        pruned = await anyio.to_thread.run_sync(
            lambda: cli(
                "repo", "prune", "--config", str(cfg), "--forget", done.backup_id, "--margin", "0.1"
            )
        )
        assert pruned.returncode == 0 and "not audited" not in pruned.stderr, pruned.stderr

        catalog = await open_catalog(st.coordinator.catalog.url)
        try:
            with anyio.fail_after(30):
                while True:
                    trail = {e.action: e for e in await catalog.list_audit(limit=20)}
                    if {"keys_rotated", "pruned"} <= trail.keys():
                        break
                    await anyio.sleep(0.2)
        finally:
            await catalog.aclose()
    rot, prn = trail["keys_rotated"], trail["pruned"]
    assert rot.actor.startswith("carol@") and f"on agent {st.agent.name}" in rot.actor
    assert "target t" in rot.detail and "is current" in rot.detail
    assert done.backup_id in prn.detail and "forgot 1 backup" in prn.detail

    # NATS gone: the rotation still happens, and one line says it was not audited
    offline = agent_toml(
        tmp_path / "offline.toml",
        name=st.agent.name,
        nats_url="nats://127.0.0.1:1",
        key_file=Path(st.agent.key_file),
        targets={"t": target},
    )
    again = cli("repo", "keys", "rotate", "--config", str(offline))
    assert again.returncode == 0, again.stderr
    assert "is now current" in again.stdout
    assert again.stderr.count("\n") == 1 and "keys rotated is done but not audited" in again.stderr
