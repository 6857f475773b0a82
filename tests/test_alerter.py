"""Alerts end to end: real NATS, coordinator, agent and a real HTTP receiver as the
webhook. A backup that fails (its source folder is missing) must reach the receiver once,
in Alertmanager's format, and the NATS alerts stream once; a later successful backup
resolves it; a receiver answering 500 never stops the coordinator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web
from nats.js import api
from rich.console import Console

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import open_catalog
from coordinator.service import Coordinator
from engine.storage.open import open_target
from mosaic import operator
from mosaic.operator import OperatorError
from shared import subjects
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import (
    AlertsConfig,
    CatalogConfig,
    CoordinatorConfig,
    DatasetConfig,
    HttpConfig,
)
from shared.config.load import load
from shared.config.targets import LocalTargetConfig
from shared.errors import ConfigError
from shared.wire.api import StatusRequest
from shared.wire.events import BackupCompleted
from shared.wire.monitoring import Alert, alert_decoder
from shared.wire.sources import FilesSource
from shared.wire.status import StatusReply
from tests.harness import make_tree, unique, write_toml

QUIET = Console(quiet=True)


@dataclass
class Receiver:
    """An HTTP server that records the JSON bodies POSTed to it."""

    status: int = 200
    posts: list[list[dict[str, Any]]] = field(default_factory=list)
    url: str = ""
    _posted: anyio.Event = field(default_factory=anyio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append(await request.json())
        self._posted.set()
        self._posted = anyio.Event()
        return web.Response(status=self.status)

    async def wait_posts(self, n: int, timeout: float = 20) -> None:
        with anyio.fail_after(timeout):
            while len(self.posts) < n:
                await self._posted.wait()


@asynccontextmanager
async def receiver(status: int = 200) -> AsyncIterator[Receiver]:
    rec = Receiver(status=status)
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        yield rec
    finally:
        await runner.cleanup()


@dataclass
class AlertStack:
    bus: Bus
    dataset: str
    http_url: str
    other: str  # a second dataset of the same agent: its alerts are the later markers


@asynccontextmanager
async def alert_stack(
    nats_url: str, work: Path, source: Path, webhook_url: str
) -> AsyncIterator[AlertStack]:
    """A coordinator (HTTP on, alerts every 0.1 s to ``webhook_url``) and an agent; the
    second dataset backs up ``work / "other"`` (missing until a test creates it)."""
    name, dataset, other = unique("agent"), unique("ds"), unique("ds")
    agent_cfg = AgentConfig(
        name=name,
        nats_url=nats_url,
        key_file=str(work / "repo.key"),
        targets={"t": LocalTargetConfig(path=str(work / "repo"))},
        ack_wait_s=5.0,
        progress_interval_s=0.2,
    )
    cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={
            dataset: DatasetConfig(agent=name, target="t", source=FilesSource(path=str(source))),
            other: DatasetConfig(
                agent=name, target="t", source=FilesSource(path=str(work / "other"))
            ),
        },
        http=HttpConfig(port=0, anonymous=True),
        # one local target is not 3-2-1: that rule is tested in tests/test_heartbeat.py
        alerts=AlertsConfig(webhook_url=webhook_url, interval_s=0.1, disabled=["not_compliant"]),
    )
    catalog = await open_catalog(cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            coordinator = Coordinator(cfg, catalog)
            await tg.start(coordinator.run)
            targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
            key, _ = await prepare_key(agent_cfg, targets)
            runner = AgentRunner(agent_cfg, key, targets)
            await tg.start(runner.run)
            bus = await Bus.connect(nats_url, name="test")
            try:
                url = f"http://127.0.0.1:{coordinator.http_port}"
                yield AlertStack(bus, dataset, url, other)
            finally:
                await bus.aclose()
                await runner.aclose()
                tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


async def firing(http_url: str) -> list[Alert]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{http_url}/api/v1/alerts") as resp,
    ):
        assert resp.status == 200
        body = await resp.read()
    return msgspec.json.decode(body, type=dict[str, list[Alert]])["alerts"]


async def test_failed_backup_fires_once_and_resolves_after_success(
    nats_url: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"  # missing: the first backup fails
    async with receiver() as hook, alert_stack(nats_url, tmp_path, src, hook.url) as st:
        sub = await st.bus.js.subscribe(
            subjects.alert("backup_failed", st.dataset),
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        with pytest.raises(OperatorError):
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)

        await hook.wait_posts(1)
        [[doc]] = hook.posts
        assert doc["labels"] == {
            "alertname": "backup_failed",
            "dataset": st.dataset,
            "severity": "critical",
        }
        assert "endsAt" not in doc  # firing
        assert st.dataset in doc["annotations"]["summary"]
        assert "generatorURL" in doc and doc["generatorURL"].endswith("/api/v1/alerts")
        started = datetime.fromisoformat(doc["startsAt"])

        fired = alert_decoder.decode((await sub.next_msg(timeout=10)).data)
        assert (fired.status, fired.rule, fired.dataset) == ("firing", "backup_failed", st.dataset)
        assert fired.starts_at == started

        [listed] = await firing(st.http_url)
        assert listed.fingerprint == fired.fingerprint and listed.status == "firing"

        # A later alert, of the other dataset, is the marker: the evaluation that sends it
        # still sees the first one firing, and must not send that again.
        with pytest.raises(OperatorError):
            await operator.backup(st.bus, st.other, "full", QUIET, QUIET, timeout=60)
        await hook.wait_posts(2)
        assert [[a["labels"]["dataset"] for a in post] for post in hook.posts] == [
            [st.dataset],
            [st.other],
        ]

        make_tree(src, big_mib=1)
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        await hook.wait_posts(3)
        [resolved] = hook.posts[2]
        assert resolved["labels"]["alertname"] == "backup_failed"
        assert datetime.fromisoformat(resolved["startsAt"]) == started
        assert datetime.fromisoformat(resolved["endsAt"]) >= started

        again = alert_decoder.decode((await sub.next_msg(timeout=10)).data)
        assert again.status == "resolved" and again.ends_at is not None
        assert [a.dataset for a in await firing(st.http_url)] == [st.other]
        # the other dataset's resolution is the marker: nothing of the first sent between
        make_tree(tmp_path / "other", big_mib=1)
        done = await operator.backup(st.bus, st.other, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        await hook.wait_posts(4)
        [last] = hook.posts[3]
        assert (last["labels"]["dataset"], "endsAt" in last) == (st.other, True)
        assert len(hook.posts) == 4 and await firing(st.http_url) == []
        await sub.unsubscribe()


async def test_failing_webhook_does_not_stop_the_coordinator(nats_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    async with (
        receiver(status=500) as hook,
        alert_stack(nats_url, tmp_path, missing, hook.url) as st,
    ):
        with pytest.raises(OperatorError):
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        await hook.wait_posts(3)  # bounded retries (1 s, then 2 s apart)
        hook.status = 200
        # given up, and not repeated on later evaluations: the next post is the other
        # dataset's alert, sent by an evaluation that still sees the first one firing
        with pytest.raises(OperatorError):
            await operator.backup(st.bus, st.other, "full", QUIET, QUIET, timeout=60)
        await hook.wait_posts(4)
        assert [[a["labels"]["dataset"] for a in post] for post in hook.posts] == [
            [st.dataset],
            [st.dataset],
            [st.dataset],
            [st.other],
        ]

        # the coordinator still answers, over HTTP and NATS, and still knows the alert
        listed = await firing(st.http_url)
        assert [(a.rule, a.dataset) for a in listed] == [
            ("backup_failed", st.dataset),
            ("backup_failed", st.other),
        ]
        reply = await st.bus.request("status", StatusRequest())
        assert isinstance(reply, StatusReply) and reply.recent_failures


def test_webhook_url_is_validated_at_load(tmp_path: Path) -> None:
    ok = load(
        write_toml(
            tmp_path / "a.toml", '[alerts]\nwebhook_url = "https://am:9093/api/v2/alerts"\n'
        ),
        CoordinatorConfig,
    )
    assert ok.alerts.webhook_url == "https://am:9093/api/v2/alerts"
    assert ok.alerts.interval_s == 60 and ok.alerts.duration_factor == 2.0
    assert load(write_toml(tmp_path / "b.toml", ""), CoordinatorConfig).alerts == AlertsConfig()
    bad = write_toml(tmp_path / "c.toml", '[alerts]\nwebhook_url = "ftp://u:secret@host/x"\n')
    with pytest.raises(ConfigError, match=r"alerts\.webhook_url") as exc:
        load(bad, CoordinatorConfig)
    assert "secret" not in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"alerts\.interval_s"):
        load(write_toml(tmp_path / "d.toml", "[alerts]\ninterval_s = 0\n"), CoordinatorConfig)
