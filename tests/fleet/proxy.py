"""A userspace TCP proxy the fleet harness owns: latency, resets, stalls, truncation.

This kernel has no ``netem`` qdisc, so network faults between two hosts are made here:
the client connects to the proxy, the proxy to the server. The knobs (``Knobs``, which
may be replaced while the proxy runs) act per direction or per new connection:

- ``latency_up_s`` / ``latency_down_s``: every piece of data client→server (up) or
  server→client (down) is delivered that much later (order kept);
- ``reset_share``: that share of new connections (seeded) is aborted with a TCP reset
  right after accept, before any byte reaches the server; ``reset_all()`` aborts every
  open connection now;
- ``stall_s`` (with ``stall_share``): the first server→client bytes of a chosen
  connection are held that long;
- ``truncate_after`` (with ``truncate_share``): a chosen connection is closed after that
  many server→client bytes (a response cut short).

``counts`` says what it did (connections, reset, reset_now, stalled, truncated,
bytes_up, bytes_down), so a test asserts that the faults it relies on happened. The
proxy runs its own event loop in a thread — optionally inside a network namespace
(``netns``), so its listening and outgoing sockets live on that host.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Self

from tests.fleet.netns import setns

_PIECE = 64 * 1024


@dataclass(frozen=True)
class Knobs:
    latency_up_s: float = 0.0
    latency_down_s: float = 0.0
    reset_share: float = 0.0
    stall_s: float = 0.0
    stall_share: float = 1.0
    truncate_after: int | None = None
    truncate_share: float = 1.0


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class _Plan:
    stall: bool
    truncate: bool


class Proxy:
    """``Proxy(upstream_host, upstream_port)``; ``with proxy:`` listens on
    ``listen_host`` (a free port unless ``listen_port``) until the block ends."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        knobs: Knobs | None = None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        netns: str | None = None,
        seed: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.knobs = knobs or Knobs()
        self.listen_host = listen_host
        self.port = listen_port
        self.netns = netns
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()  # the client side of each
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _serve(self, ready: threading.Event) -> None:
        try:
            if self.netns:
                setns(self.netns)
            asyncio.run(self._main(ready))
        except BaseException as exc:  # handed to __enter__ (before ready) or kept
            self._error = exc
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._accepted, self.listen_host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        await self._stop.wait()
        self._server.close()
        for w in list(self._open):
            w.transport.abort()
        if self._tasks:  # their streams are aborted: they end on their own
            await asyncio.wait(list(self._tasks), timeout=10)

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def reset_all(self) -> int:
        """Abort every open connection with a reset now; how many there were."""
        assert self._loop is not None

        async def now() -> int:
            victims = list(self._clients)
            for w in victims:
                _rst(w)
            self.counts["reset_now"] += len(victims)
            return len(victims)

        return asyncio.run_coroutine_threadsafe(now(), self._loop).result(30)

    # --- one connection ----------------------------------------------------------------

    def _chance(self, share: float) -> bool:
        return share > 0 and self._rng.random() < share

    async def _accepted(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.counts["connections"] += 1
        k = self.knobs
        try:
            if self._chance(k.reset_share):
                self.counts["reset"] += 1
                _rst(cwriter)
                return
            plan = _Plan(
                stall=k.stall_s > 0 and self._chance(k.stall_share),
                truncate=k.truncate_after is not None and self._chance(k.truncate_share),
            )
            try:
                sreader, swriter = await asyncio.open_connection(*self.upstream)
            except OSError:
                self.counts["upstream_refused"] += 1
                _rst(cwriter)
                return
            self._open.update((cwriter, swriter))
            self._clients.add(cwriter)
            try:
                await asyncio.gather(
                    self._pipe(creader, swriter, "up", None),
                    self._pipe(sreader, cwriter, "down", plan),
                )
            finally:
                self._open.difference_update((cwriter, swriter))
                swriter.transport.abort()
        finally:
            self._open.discard(cwriter)
            self._clients.discard(cwriter)
            cwriter.close()
            self._tasks.discard(task)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        way: str,
        plan: _Plan | None,
    ) -> None:
        """Copy one direction with its latency, stall and truncation; at the end (or a
        fault) close both ends of this direction so the other one ends too."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            sent = 0
            first = True
            while (item := await queue.get()) is not None:
                due, data = item
                if first and plan is not None and plan.stall:
                    self.counts["stalled"] += 1
                    due = max(due, loop.time() + self.knobs.stall_s)
                first = False
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                limit = self.knobs.truncate_after
                if plan is not None and plan.truncate and limit is not None:
                    if sent + len(data) >= limit:
                        writer.write(data[: limit - sent])
                        await writer.drain()
                        self.counts["truncated"] += 1
                        writer.transport.abort()
                        return
                sent += len(data)
                self.counts[f"bytes_{way}"] += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.create_task(deliver())
        try:
            while data := await reader.read(_PIECE):
                delay = self.knobs.latency_up_s if way == "up" else self.knobs.latency_down_s
                await queue.put((loop.time() + delay, data))
                if sender.done():
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            await queue.put(None)
            with contextlib.suppress(ConnectionError, OSError):
                await sender
