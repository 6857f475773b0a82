"""Notifications reach real local receivers (issue 12): Apprise routes to an HTTP receiver
(ntfy and JSON-webhook URLs) and to an SMTP server (aiosmtpd), dead-man's-switch pings to
a Healthchecks-like and an Uptime-Kuma-like receiver. A failed backup notifies once, its
resolution once; a 200-dataset outage is one message; a rate-limited route holds what
comes later and sends it together; a token in a URL never reaches the logs."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from rich.console import Console

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import open_catalog
from coordinator.notify import AppriseSink
from coordinator.service import Coordinator
from engine.storage.open import open_target
from mosaic import operator
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import AlertsConfig, CatalogConfig, CoordinatorConfig, DatasetConfig
from shared.config.load import load
from shared.config.notify import NotifyRoute, PingConfig
from shared.config.targets import LocalTargetConfig
from shared.errors import ConfigError, OperatorError
from shared.natsserver import free_port
from shared.wire.events import BackupCompleted
from shared.wire.monitoring import Alert
from shared.wire.sources import FilesSource
from tests.harness import make_tree, unique, write_toml

QUIET = Console(quiet=True)
SECRET = "tok3n-s3cr3t-42"


@dataclass
class Hit:
    method: str
    path: str
    query: dict[str, str]
    body: bytes


@dataclass
class HttpReceiver:
    """Records every request; ``wait(pred)`` until one matches."""

    hits: list[Hit] = field(default_factory=list)
    base: str = ""
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(
            Hit(request.method, request.path, dict(request.query), await request.read())
        )
        self._arrived.set()
        self._arrived = anyio.Event()
        return web.Response(text="OK")

    def of(self, prefix: str) -> list[Hit]:
        """The hits on paths under ``prefix``; ``ntfy:`` + topic: ntfy's JSON posts."""
        if prefix.startswith("ntfy:"):
            topic = f'"topic": "{prefix[5:]}"'.encode()
            return [h for h in self.hits if h.path == "/" and topic in h.body]
        return [h for h in self.hits if h.path.startswith(prefix)]

    async def wait(self, count: int, prefix: str, timeout: float = 30) -> list[Hit]:
        with anyio.fail_after(timeout):
            while len(found := self.of(prefix)) < count:
                await self._arrived.wait()
        return found


@asynccontextmanager
async def http_receiver() -> AsyncIterator[HttpReceiver]:
    rec = HttpReceiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        rec.base = f"127.0.0.1:{runner.addresses[0][1]}"
        yield rec
    finally:
        await runner.cleanup()


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[bytes] = []

        self.arrived = threading.Event()  # set by the SMTP server's own thread

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.mails.append(envelope.content)  # type: ignore[attr-defined]
        self.arrived.set()
        return "250 OK"


@asynccontextmanager
async def smtp_server() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield box, port
    finally:
        ctl.stop()


async def test_failed_backup_notifies_and_pings_then_resolves_once(
    nats_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    src = tmp_path / "src"  # missing: the first backup fails
    name, dataset = unique("agent"), unique("ds")
    async with http_receiver() as rec, smtp_server() as (mailbox, smtp_port):
        url_file = tmp_path / "kuma.url"
        url_file.write_text(f"# the push monitor\nhttp://{rec.base}/api/push/{SECRET}\n")
        cfg = CoordinatorConfig(
            name=unique("coord"),
            nats_url=nats_url,
            catalog=CatalogConfig(url=f"sqlite:///{tmp_path / 'catalog.db'}"),
            datasets={
                dataset: DatasetConfig(agent=name, target="t", source=FilesSource(path=str(src)))
            },
            alerts=AlertsConfig(interval_s=0.1, disabled=["not_compliant"]),
            notify=[
                NotifyRoute(
                    name="phone", url=f"ntfy://{rec.base}/backups-{SECRET}", rules=["backup_failed"]
                ),
                NotifyRoute(
                    name="hook",
                    url=f"json://{rec.base}/hook/{SECRET}",
                    title="{status} {rule} on {dataset}",
                    datasets=["ds-*"],
                    rules=["backup_failed"],
                ),
                NotifyRoute(
                    name="mail",
                    url=f"mailto://127.0.0.1:{smtp_port}?from=mosaic@example.org"
                    "&to=ops@example.org&mode=insecure",
                    resolved=False,
                    severities=["critical"],
                    rules=["backup_failed"],
                ),
            ],
            pings=[
                PingConfig(kind="healthchecks", url=f"http://{rec.base}/hc/{{dataset}}"),
                PingConfig(kind="uptime_kuma", url_file=str(url_file)),
            ],
        )
        agent_cfg = AgentConfig(
            name=name,
            nats_url=nats_url,
            key_file=str(tmp_path / "repo.key"),
            targets={"t": LocalTargetConfig(path=str(tmp_path / "repo"))},
            ack_wait_s=5.0,
        )
        catalog = await open_catalog(cfg.catalog.url)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(Coordinator(cfg, catalog).run)
                targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
                key, _ = await prepare_key(agent_cfg, targets)
                runner = AgentRunner(agent_cfg, key, targets)
                await tg.start(runner.run)
                bus = await Bus.connect(nats_url, name="test")
                try:
                    with pytest.raises(OperatorError):
                        await operator.backup(bus, dataset, "full", QUIET, QUIET, timeout=60)
                    [phone] = await rec.wait(1, f"ntfy:backups-{SECRET}")
                    assert dataset.encode() in phone.body and b"backup_failed" in phone.body
                    [hook] = await rec.wait(1, "/hook/")
                    assert f"FIRING backup_failed on {dataset}".encode() in hook.body
                    hc = await rec.wait(2, f"/hc/{dataset}")  # start, then fail
                    assert [h.path for h in hc] == [f"/hc/{dataset}/start", f"/hc/{dataset}/fail"]
                    assert b"source" in hc[1].body or b":" in hc[1].body  # the error, one line
                    [down] = await rec.wait(1, "/api/push/")
                    assert down.query["status"] == "down" and down.method == "GET"
                    assert await anyio.to_thread.run_sync(mailbox.arrived.wait, 30)
                    assert dataset.encode() in mailbox.mails[0]

                    make_tree(src, big_mib=1)
                    done = await operator.backup(bus, dataset, "full", QUIET, QUIET, timeout=60)
                    assert isinstance(done, BackupCompleted)
                    resolved = (await rec.wait(2, f"ntfy:backups-{SECRET}"))[1]
                    assert b"RESOLVED" in resolved.body and dataset.encode() in resolved.body
                    assert b"RESOLVED" in (await rec.wait(2, "/hook/"))[1].body
                    hc = await rec.wait(4, f"/hc/{dataset}")
                    assert [h.path for h in hc[2:]] == [f"/hc/{dataset}/start", f"/hc/{dataset}"]
                    up = (await rec.wait(2, "/api/push/"))[1]
                    assert up.query["status"] == "up" and int(up.query["ping"]) >= 0
                finally:
                    await bus.aclose()
                    await runner.aclose()
                    tg.cancel_scope.cancel()
        finally:
            await catalog.aclose()
    # resolutions went out once each; the mail route takes no resolutions
    assert len(rec.of(f"ntfy:backups-{SECRET}")) == 2
    assert len(mailbox.mails) == 1
    assert SECRET not in caplog.text


def _alert(i: int, status: str = "firing") -> Alert:
    now = datetime.now(UTC)
    return Alert(
        status=status,  # type: ignore[arg-type]
        rule="backup_missing",
        dataset=f"ds-{i:03d}",
        fingerprint=f"backup_missing/ds-{i:03d}/",
        summary=f"ds-{i:03d} has no backup since yesterday",
        starts_at=now,
        ends_at=now if status == "resolved" else None,
    )


async def test_an_outage_of_200_datasets_is_one_message_and_the_limit_holds_the_rest() -> None:
    async with http_receiver() as rec:
        now = [0.0]
        sink = AppriseSink(
            [NotifyRoute(name="hook", url=f"json://{rec.base}/hook", max_per_hour=1)],
            clock=lambda: now[0],
        )
        await sink.send([_alert(i) for i in range(200)])
        [one] = await rec.wait(1, "/hook")
        assert b"ds-000" in one.body and b"and 190 more" in one.body
        assert b"and 170 more" in one.body  # 30 lines, then the count of the rest

        now[0] = 60.0  # within the hour: held, not sent, not dropped
        await sink.send([_alert(0, "resolved")])
        assert sink.messages == 1 and len(sink.routes[0].held) == 1
        now[0] = 3601.0  # the hour is over: the next evaluation sends what was held
        await sink.send([_alert(1, "resolved")])
        second = (await rec.wait(2, "/hook"))[1]
        assert b"ds-000" in second.body and b"ds-001" in second.body and b"RESOLVED" in second.body
        assert sink.messages == 2 and sink.routes[0].held == []


def test_bad_routes_are_refused_at_load_without_their_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = 'name = "c"\n[catalog]\nurl = "sqlite:///x.db"\n'
    cases = {
        f'[[notify]]\nname = "r"\nurl = "nosuchscheme://{SECRET}@host/x"\n': (
            "field 'notify[0]' (r).url: Apprise cannot send to nosuchscheme://…"
        ),
        '[[notify]]\nname = "r"\nurl = "json://h/x"\ntitle = "{nope}"\n': (
            "field 'notify[0]' (r).title: unknown template field {nope}"
        ),
        '[[notify]]\nname = "r"\nurl = "json://h/x"\ncolour = "red"\n': "colour",
        '[[notify]]\nname = "r"\n': "set exactly one of url and url_file",
        f'[[pings]]\nurl = "ftp://{SECRET}@h/x"\n': "field 'pings[0]': ftp://… is not an http",
        f'[[pings]]\nurl_file = "{tmp_path}/missing"\n': "url_file: cannot read",
    }
    for i, (text, expected) in enumerate(cases.items()):
        path = write_toml(tmp_path / f"c{i}.toml", base + text)
        with pytest.raises(ConfigError) as err:
            load(path, CoordinatorConfig)
        line = str(err.value)
        assert expected in line and SECRET not in line and "\n" not in line, line
    assert SECRET not in caplog.text
