"""Dead-man's-switch pings (``[[pings]]`` in coordinator.toml): each backup job tells an
outside service that it started, succeeded or failed, so that service raises the alarm
when the pings stop — even when the coordinator itself is what died.

- ``healthchecks`` (Healthchecks.io and its self-hosted form): ``<url>/start`` when the
  backup starts (the check measures the run time), ``<url>`` on success, ``<url>/fail``
  on failure, each a POST whose body is one line for people (bytes, or the error).
- ``uptime_kuma`` (a push monitor): ``<url>?status=up&msg=OK&ping=<ms>`` on success,
  ``status=down&msg=<error>`` on failure; no start ping.

The pings come from the events the coordinator records (coordinator/jobs/record.py calls
:meth:`Pinger.on_event`), are queued, and are sent by one task with a timeout and two
attempts: a slow receiver never holds up the recording of events, and a full queue drops
pings (logged) rather than memory. Only backup jobs ping. URLs are never logged: a failed
ping names the dataset and the URL's scheme.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp
import anyio
import yarl
from anyio.streams.memory import MemoryObjectSendStream

from shared.config.notify import PingConfig, read_urls, scheme
from shared.wire.events import BackupCompleted, Event, JobFailed, JobStarted

log = logging.getLogger(__name__)

QUEUE = 1000
TIMEOUT_S = 10.0
ATTEMPTS = 2


class Ping:
    """One configured check: its kind, URL template and datasets."""

    def __init__(self, cfg: PingConfig, index: int) -> None:
        self.cfg = cfg
        self.urls = read_urls(f"field 'pings[{index}]'", cfg.url, cfg.url_file)

    def covers(self, dataset: str) -> bool:
        return not self.cfg.datasets or any(
            fnmatch.fnmatchcase(dataset, g) for g in self.cfg.datasets
        )

    def request(self, url: str, what: str, dataset: str, text: str, ms: int | None) -> yarl.URL:
        base = yarl.URL(url.replace("{dataset}", dataset), encoded=False)
        if self.cfg.kind == "uptime_kuma":
            query = {"status": "up" if what == "success" else "down", "msg": text[:200]}
            if ms is not None:
                query["ping"] = str(ms)
            return base.update_query(query)
        suffix = {"start": "/start", "fail": "/fail"}.get(what, "")
        return base.with_path(base.path.rstrip("/") + suffix) if suffix else base

    def wants(self, what: str) -> bool:
        if what == "start":
            return self.cfg.kind == "healthchecks" and self.cfg.start
        return True


Queued = tuple["Ping", yarl.URL, str, str]  # the check, its request, dataset, text


class Pinger:
    """Queues and sends the pings of backup jobs."""

    def __init__(self, pings: Sequence[PingConfig], catalog: Any) -> None:
        self.pings = [Ping(p, i) for i, p in enumerate(pings)]
        self.catalog = catalog
        self._send: MemoryObjectSendStream[Queued] | None = None  # while run() runs
        self.sent = 0  # delivered pings (tests, metrics)

    async def on_event(self, ev: Event) -> None:
        if not self.pings or not isinstance(ev, JobStarted | BackupCompleted | JobFailed):
            return
        if isinstance(ev, JobStarted | JobFailed) and ev.job_kind != "backup":
            return
        if isinstance(ev, BackupCompleted):
            dataset, what = ev.dataset, "success"
            text = f"backup {ev.backup_id}: {ev.summary.bytes_read} bytes read"
            ms: int | None = int(ev.summary.duration_s * 1000)
        else:
            job = await self.catalog.get_job(ev.job_id)
            if job is None or job.dataset is None:
                return
            dataset, ms = job.dataset, None
            what, text = ("start", "started") if isinstance(ev, JobStarted) else ("fail", "")
            if isinstance(ev, JobFailed):
                text = f"{ev.code}: {ev.message}"
        for ping in self.pings:
            if ping.covers(dataset) and ping.wants(what):
                for url in ping.urls:
                    req = ping.request(url, what, dataset, text, ms)
                    if self._send is None:  # not running (a coordinator being built)
                        return
                    try:
                        self._send.send_nowait((ping, req, dataset, text))
                    except anyio.WouldBlock:
                        log.error("ping of %s dropped: %d pings queued", dataset, QUEUE)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        send, receive = anyio.create_memory_object_stream[Queued](QUEUE)
        async with send, receive, aiohttp.ClientSession(timeout=timeout) as session:
            self._send = send
            try:
                task_status.started()
                async for ping, url, dataset, text in receive:
                    await self._post(session, ping, url, dataset, text)
            finally:
                self._send = None

    async def _post(
        self, session: aiohttp.ClientSession, ping: Ping, url: yarl.URL, dataset: str, text: str
    ) -> None:
        problem = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                await anyio.sleep(1.0)
            try:
                call = (
                    session.get(url)
                    if ping.cfg.kind == "uptime_kuma"
                    else session.post(url, data=text.encode())
                )
                async with call as r:
                    if r.status < 300:
                        self.sent += 1
                        return
                    problem = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
        log.error("ping of %s to %s failed: %s", dataset, scheme(str(url)), problem)
