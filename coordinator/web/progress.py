"""Live job progress for the console: ONE NATS subscription per console process on the
job events (``mosaic.event.>`` as the events stream stores them), fanned out to every
browser by server-sent events (``GET /events/progress``).

The feed keeps the jobs it saw start or progress (bytes, rate, ETA) until a while
after they ended; a browser that connects gets the current jobs first, then every
change. A slow browser loses intermediate updates (its queue is bounded), never the
feed. The subscription is made on first use (the first page or SSE request), so the
process needs no task of its own: nats-py delivers to the callback.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec
from aiohttp import web
from anyio.streams.memory import MemoryObjectSendStream

from coordinator.catalog.base import Catalog
from coordinator.http import redact
from coordinator.web.guard import require
from shared import subjects
from shared.bus import Bus
from shared.vocab import utcnow
from shared.wire.events import (
    Event,
    JobFailed,
    JobProgress,
    JobStarted,
    LocalAction,
    event_decoder,
)

log = logging.getLogger(__name__)
KEEP_ENDED = timedelta(minutes=10)  # ended jobs stay on the page this long
KEEP_SILENT = timedelta(hours=1)  # a running job without any event this long is dropped
QUEUE = 64  # updates buffered per browser before it loses intermediate ones
KEEPALIVE_S = 15.0
CHECK_S = 1.0  # how often a stream looks whether its browser left or the feed closed


@dataclass
class JobView:
    """One job as the page shows it."""

    job_id: str
    agent: str
    kind: str = "backup"
    dataset: str = ""
    state: str = "running"  # running, completed, failed
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    percent: float = 0.0
    rate: float | None = None  # bytes per second since the first progress event
    eta_s: float | None = None
    started_at: str = ""
    updated_at: str = ""
    message: str = ""

    def json(self) -> str:
        return json.dumps(asdict(self))


class ProgressFeed:
    def __init__(self, bus: Bus, catalog: Catalog, clock: Callable[[], datetime] = utcnow):
        self.bus, self.catalog, self.clock = bus, catalog, clock
        self.jobs: dict[str, JobView] = {}
        self._first: dict[str, tuple[datetime, int]] = {}  # job → first progress (at, bytes)
        self._ended: dict[str, datetime] = {}
        self._browsers: set[MemoryObjectSendStream[str]] = set()
        self._sub: Any = None
        self._lock = anyio.Lock()
        self._closed = False

    async def start(self) -> None:
        """Subscribe once (idempotent)."""
        async with self._lock:
            if self._sub is None:
                self._sub = await self.bus.nc.subscribe(subjects.events_all(), cb=self._on_msg)

    async def close(self) -> None:
        """End every stream (within :data:`CHECK_S`) and the subscription: for the
        application's shutdown, so a connected browser does not hold it up."""
        self._closed = True
        for q in list(self._browsers):
            q.close()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def running(self) -> list[JobView]:
        self._expire()
        newest = sorted(self.jobs.values(), key=lambda j: j.updated_at, reverse=True)
        return sorted(newest, key=lambda j: j.state != "running")  # stable: running first

    def running_datasets(self) -> set[str]:
        return {j.dataset for j in self.jobs.values() if j.state == "running" and j.dataset}

    def _expire(self) -> None:
        now = self.clock()
        stale = (now - KEEP_SILENT).isoformat()  # updated_at: ISO text of the same clock
        for job_id in [j for j, at in self._ended.items() if at < now - KEEP_ENDED]:
            self.jobs.pop(job_id, None)
            self._first.pop(job_id, None)
            del self._ended[job_id]
        for job_id in [j for j, v in self.jobs.items() if v.state == "running"]:
            if self.jobs[job_id].updated_at < stale:  # its agent went quiet: not shown
                del self.jobs[job_id]
                self._first.pop(job_id, None)

    async def _on_msg(self, msg: Any) -> None:
        try:
            ev = event_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        view = await self.apply(ev)
        if view is not None:
            self._send(view.json())

    async def apply(self, ev: Event) -> JobView | None:
        """Fold one event into its job; the changed job, or None if not one we show."""
        if isinstance(ev, LocalAction):
            return None
        view = self.jobs.get(ev.job_id)
        if view is None:
            if not isinstance(ev, JobStarted | JobProgress):
                return None  # an end of a job we never saw running
            view = self.jobs[ev.job_id] = JobView(job_id=ev.job_id, agent=ev.agent)
            job = await self.catalog.get_job(ev.job_id)
            if job is not None:
                view.kind, view.dataset = job.job_kind, job.dataset or ""
        if isinstance(ev, JobStarted):
            view.kind, view.started_at = ev.job_kind, ev.at.isoformat()
        elif isinstance(ev, JobProgress):
            self._progress(view, ev)
        elif isinstance(ev, JobFailed):
            # redacted as the HTTP documents do: messages can name paths, hosts, URLs
            view.state, view.message = "failed", redact(f"{ev.code}: {ev.message}")[:300]
            self._ended[ev.job_id] = self.clock()
        else:  # the job's result event
            view.state, view.eta_s = "completed", 0.0
            view.percent = 100.0
            if view.bytes_total:
                view.bytes_done = view.bytes_total
            self._ended[ev.job_id] = self.clock()
        view.updated_at = self.clock().isoformat()
        return view

    def _progress(self, view: JobView, ev: JobProgress) -> None:
        view.bytes_done, view.bytes_total = ev.bytes_done, ev.bytes_total
        view.files_done, view.files_total = ev.files_done, ev.files_total
        view.percent = 100.0 * ev.bytes_done / ev.bytes_total if ev.bytes_total else 0.0
        first = self._first.setdefault(ev.job_id, (ev.at, ev.bytes_done))
        elapsed = (ev.at - first[0]).total_seconds()
        if elapsed > 0:
            view.rate = (ev.bytes_done - first[1]) / elapsed
            left = ev.bytes_total - ev.bytes_done
            view.eta_s = left / view.rate if view.rate > 0 else None
        if not view.started_at:
            view.started_at = ev.at.isoformat()

    def _send(self, data: str) -> None:
        for q in list(self._browsers):
            try:
                q.send_nowait(data)
            except anyio.WouldBlock:
                pass  # this browser is slow: it gets the next update
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._browsers.discard(q)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """The SSE answer: every known job, then every change, until the browser leaves."""
        await self.start()
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        send, receive = anyio.create_memory_object_stream[str](QUEUE)
        self._browsers.add(send)  # before the headers: nothing after "open" is missed
        try:
            await resp.prepare(request)
            for view in self.running():
                await resp.write(f"event: job\ndata: {view.json()}\n\n".encode())
            async with receive:
                quiet = 0.0
                while not self._closed and not _gone(request):
                    data = None
                    with anyio.move_on_after(CHECK_S):
                        data = await receive.receive()
                    quiet = 0.0 if data else quiet + CHECK_S
                    if data:
                        await resp.write(f"event: job\ndata: {data}\n\n".encode())
                    elif quiet >= KEEPALIVE_S:
                        quiet = 0.0
                        await resp.write(b": keepalive\n\n")
        except (ConnectionResetError, anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        finally:
            self._browsers.discard(send)
            send.close()
        return resp


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def feed_of(ctx: Any) -> ProgressFeed:
    """The process's one feed (in ``ctx.parts``)."""
    feed: ProgressFeed | None = ctx.parts.get("progress")
    if feed is None:
        feed = ctx.parts["progress"] = ProgressFeed(ctx.bus, ctx.catalog, ctx.clock)
    return feed


def routes(ctx: Any) -> list[web.RouteDef]:
    feed = feed_of(ctx)

    @require("viewer")
    async def events(request: web.Request) -> web.StreamResponse:
        return await feed.stream(request)

    return [web.get("/events/progress", events)]
