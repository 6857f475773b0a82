"""Heartbeats end to end: a real agent sends them over NATS, the coordinator keeps the
last one per agent, shows them in the status document and /metrics, and alerts when an
agent falls silent (resolved when it comes back) or a target runs low on space. Also the
status document's next backup, replication lag and 3-2-1 evaluation, and the pure rules.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator import alerts
from coordinator.api_models import BackupStatusDoc
from coordinator.catalog import Catalog, open_catalog
from coordinator.catalog.base import TargetSummary
from coordinator.overview import _replica_since
from coordinator.service import Coordinator
from coordinator.status import NextRuns
from engine.storage.open import open_target
from mosaic import operator
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import (
    AlertsConfig,
    CatalogConfig,
    CoordinatorConfig,
    DatasetConfig,
    HttpConfig,
    ScheduleConfig,
)
from shared.config.targets import LocalTargetConfig
from shared.vocab import utcnow
from shared.wire.base import encode
from shared.wire.events import BackupCompleted, ReplicateCompleted
from shared.wire.monitoring import Alert
from shared.wire.records import MaintenanceRecord
from shared.wire.sources import FilesSource
from tests.harness import make_tree, unique

QUIET = Console(quiet=True)
WAIT_S = 20.0  # upper bound of every wait below (they end as soon as the state is seen)


@dataclass
class HbStack:
    bus: Bus
    agent: AgentConfig
    coordinator: Coordinator
    catalog: Catalog
    dataset: str
    http_url: str
    tg: Any
    agent_scope: anyio.CancelScope | None = None

    async def start_agent(self) -> None:
        targets = {n: open_target(n, t) for n, t in self.agent.targets.items()}
        key, _ = await prepare_key(self.agent, targets)
        runner = AgentRunner(self.agent, key, targets)
        scope = self.agent_scope = anyio.CancelScope()

        async def run(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            with scope:
                try:
                    await runner.run(task_status=task_status)
                finally:
                    with anyio.CancelScope(shield=True):
                        await runner.aclose()

        await self.tg.start(run)

    def stop_agent(self) -> None:
        assert self.agent_scope is not None
        self.agent_scope.cancel()


@asynccontextmanager
async def hb_stack(
    nats_url: str, work: Path, *, alerts_cfg: AlertsConfig
) -> AsyncIterator[HbStack]:
    """A coordinator (HTTP, alerts every 0.1 s) and one agent with two local targets:
    ``t`` (disk, onsite, the dataset's primary) and ``off`` (tape, offsite), sending a
    heartbeat every 0.2 s."""
    name, dataset = unique("hbagent"), unique("ds")
    src = make_tree(work / "src", big_mib=1)
    agent_cfg = AgentConfig(
        name=name,
        nats_url=nats_url,
        key_file=str(work / "repo.key"),
        targets={
            "t": LocalTargetConfig(path=str(work / "repo")),
            "off": LocalTargetConfig(path=str(work / "vault"), media="tape", location="offsite"),
        },
        ack_wait_s=5.0,
        heartbeat_interval_s=0.2,
    )
    cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={
            dataset: DatasetConfig(
                agent=name,
                target="t",
                source=FilesSource(path=str(src)),
                schedules=[ScheduleConfig(cron="0 2 * * *", backup_type="incremental")],
            )
        },
        http=HttpConfig(port=0, anonymous=True),
        alerts=alerts_cfg,
    )
    catalog = await open_catalog(cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            coordinator = Coordinator(cfg, catalog)
            await tg.start(coordinator.run)
            bus = await Bus.connect(nats_url, name="test")
            st = HbStack(
                bus,
                agent_cfg,
                coordinator,
                catalog,
                dataset,
                f"http://127.0.0.1:{coordinator.http_port}",
                tg,
            )
            try:
                await st.start_agent()
                yield st
            finally:
                await bus.aclose()
                tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


async def get(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def status(st: HbStack, query: str = "") -> BackupStatusDoc:
    return msgspec.json.decode(
        await get(f"{st.http_url}/api/v1/backup/status{query}"), type=BackupStatusDoc
    )


async def firing(st: HbStack) -> dict[str, Alert]:
    body = await get(f"{st.http_url}/api/v1/alerts")
    found = msgspec.json.decode(body, type=dict[str, list[Alert]])["alerts"]
    return {a.fingerprint: a for a in found}


async def until(what: str, check: Any) -> Any:
    """Poll ``check`` (async, returns a truthy value when done) for up to WAIT_S."""
    with anyio.move_on_after(WAIT_S):
        while True:
            if found := await check():
                return found
            await anyio.sleep(0.05)
    raise AssertionError(f"not seen within {WAIT_S:.0f}s: {what}")


def metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_silent_agent_alerts_and_resolves_and_low_storage_alerts(
    private_nats_url: str, tmp_path: Path
) -> None:
    nats_url = private_nats_url  # its silent agent must not alert in later tests
    # Any real disk has less than 99.9 % free: the storage rule must fire for "t".
    cfg = AlertsConfig(interval_s=0.1, storage_min_free=0.999, disabled=["not_compliant"])
    async with hb_stack(nats_url, tmp_path, alerts_cfg=cfg) as st:
        name = st.agent.name

        async def seen() -> BackupStatusDoc | None:
            doc = await status(st)
            return doc if any(a.agent == name and a.last_heartbeat for a in doc.agents) else None

        doc = await until("the agent's first heartbeat", seen)
        [me] = [a for a in doc.agents if a.agent == name]
        assert me.hostname == socket.gethostname() and me.version and not me.lost
        targets = {t.target: t for t in doc.targets if t.agent == name}
        assert set(targets) == {"t", "off"}
        t = targets["t"]
        assert (t.kind, t.media, t.location, t.tier) == ("local", "disk", "onsite", "local")
        assert t.total and t.free is not None and 0 < t.free < t.total
        assert t.used_percent is not None and 0 < t.used_percent < 100
        assert (targets["off"].media, targets["off"].location) == ("tape", "offsite")
        assert doc.storage_free_bytes is not None and doc.storage_free_bytes >= t.free

        low = alerts.fingerprint("storage_low", name, "t")
        fired = await until("storage_low", lambda: _has(st, low))
        assert "free" in fired.summary and fired.severity == "warning"

        m = metrics((await get(f"{st.http_url}/metrics")).decode())
        assert m["backup_agent_last_heartbeat_timestamp"][(("agent", name),)] > 0
        assert 0 < m["backup_storage_used_percent"][(("agent", name), ("target", "t"))] < 100

        lost = alerts.fingerprint("heartbeat_lost", name)
        assert lost not in await firing(st)
        st.stop_agent()
        alert = await until("heartbeat_lost after the agent stopped", lambda: _has(st, lost))
        assert name in alert.summary and alert.severity == "critical"
        [me] = [a for a in (await status(st)).agents if a.agent == name]
        assert me.lost

        await st.start_agent()  # back: the alert resolves

        async def resolved() -> bool:
            return lost not in await firing(st)

        await until("heartbeat_lost resolved after the agent came back", resolved)


async def _has(st: HbStack, fingerprint: str) -> Alert | None:
    return (await firing(st)).get(fingerprint)


async def test_status_shows_next_backup_replication_lag_and_321(
    private_nats_url: str, tmp_path: Path
) -> None:
    nats_url = private_nats_url  # its agent's last heartbeat must not reach later tests
    async with hb_stack(nats_url, tmp_path, alerts_cfg=AlertsConfig(interval_s=0.1)) as st:
        name, ds = st.agent.name, st.dataset
        done = await operator.backup(st.bus, ds, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        await until("agent tags", lambda: _tags_known(st))

        doc = await status(st)
        [row] = doc.datasets
        now = utcnow()
        expected_next = (now + timedelta(days=1 if now.hour >= 2 else 0)).replace(
            hour=2, minute=0, second=0, microsecond=0
        )
        assert row.next_backup == expected_next == doc.next_backup
        assert row.last_backup is not None and row.last_backup.backup_id == done.backup_id
        assert row.storage_used == done.summary.bytes_stored
        assert row.storage_free is not None and row.storage_free > 0
        assert [(c.target, c.primary, c.backups) for c in row.targets] == [("t", True, 1)]
        # production + one onsite disk: 2 copies, 1 medium, nothing offsite
        assert row.compliance is not None and row.compliance.compliant is False
        assert row.compliance.reasons == ["only 2 copies", "one medium", "no offsite copy"]
        assert doc.datasets_not_compliant == 1
        not_321 = alerts.fingerprint("not_compliant", ds)
        await until("not_compliant", lambda: _has(st, not_321))

        # A replication to the offsite tape target, recorded as the maintenance job does.
        async def replicated(behind: float, at: datetime) -> None:
            ev = ReplicateCompleted(
                job_id=unique("repl"),
                agent=name,
                target="t",
                to_target="off",
                lag_s={ds: behind},
                at=at,
            )
            await st.catalog.record_maintenance(
                MaintenanceRecord(
                    job_id=ev.job_id,
                    kind="replicate",
                    agent=name,
                    target="t",
                    outcome="passed",
                    started_at=at,
                    finished_at=at,
                    detail=encode(ev).decode(),
                )
            )

        await replicated(0.0, utcnow())
        [row] = (await status(st)).datasets
        assert row.compliance is not None and row.compliance.compliant is True
        assert (row.compliance.copies, row.compliance.media) == (3, ["disk", "tape"])
        assert {c.target: c.lag_s for c in row.targets} == {"t": None, "off": 0.0}

        async def resolved() -> bool:
            return not_321 not in await firing(st)

        await until("not_compliant resolved", resolved)

        # The next run finds the copy two hours behind: lag alert and metric.
        await replicated(7200.0, utcnow())
        lag = alerts.fingerprint("replication_lag", ds, "off")
        await until("replication_lag", lambda: _has(st, lag))
        m = metrics((await get(f"{st.http_url}/metrics")).decode())
        assert m["backup_replication_lag_seconds"][(("dataset", ds), ("target", "off"))] >= 7200
        assert m["backup_321_compliant"][(("dataset", ds),)] == 0.0  # no longer holds it

        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{st.http_url}/api/v1/backup/status?limit=0") as resp,
        ):
            assert resp.status == 400
            assert "limit=0 must be between 1" in (await resp.json())["error"]["message"]


async def _tags_known(st: HbStack) -> bool:
    doc = await status(st)
    return any(t.agent == st.agent.name and t.media for t in doc.targets)


# --- pure rules ---------------------------------------------------------------------------

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def test_heartbeat_lost_after_three_intervals() -> None:
    since = T0 - timedelta(hours=1)
    assert alerts.heartbeat_lost("a", T0, 30, T0 + timedelta(seconds=90), since) is None
    f = alerts.heartbeat_lost("a", T0, 30, T0 + timedelta(seconds=91), since)
    assert f is not None and f.fingerprint == "heartbeat_lost/a/"
    # never heard from: counted from when the coordinator started listening
    assert alerts.heartbeat_lost("a", None, 30, since + timedelta(seconds=60), since) is None
    f = alerts.heartbeat_lost("a", None, 30, since + timedelta(seconds=100), since)
    assert f is not None and "no heartbeat yet" in f.summary


def test_not_compliant_names_the_reasons() -> None:
    assert alerts.not_compliant("db", []) is None
    f = alerts.not_compliant("db", ["only 2 copies", "no offsite copy"])
    assert f is not None and "only 2 copies, no offsite copy" in f.summary


def test_replica_lag_from_a_replication_result() -> None:
    primary = TargetSummary(
        dataset="d", target="t", backup_id="b", finished_at=T0, backups=1, bytes_stored=1
    )
    # in sync when the newest backup was already there
    assert _replica_since(primary, 0.0, T0 + timedelta(minutes=5)) == (True, None)
    # in sync before the newest backup finished: behind since that backup
    assert _replica_since(primary, 0.0, T0 - timedelta(minutes=5)) == (True, T0)
    # behind then: since the oldest missing backup finished
    assert _replica_since(primary, 600.0, T0) == (True, T0 - timedelta(seconds=600))
    assert _replica_since(primary, None, T0) == (False, None)
    assert _replica_since(None, 0.0, T0) == (False, None)


def test_next_runs_are_cached_until_they_pass() -> None:
    runs = NextRuns({"d": [ScheduleConfig(cron="0 2 * * *", backup_type="full")], "e": []})
    first = runs.get("d", T0)
    assert first == datetime(2025, 1, 2, 2, 0, tzinfo=UTC)
    assert runs.get("d", T0 + timedelta(hours=1)) == first
    assert runs.get("d", first) == first + timedelta(days=1)
    assert runs.get("e", T0) is None and runs.soonest(T0) == first + timedelta(days=1)
