"""The fleet proxy against a real echo server over real sockets: every knob does what it
says, and its counters say what it did."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fleet.proxy import Knobs, Proxy


class Echo:
    """A threaded echo server on a free loopback port; ``sent`` counts bytes echoed."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                    with self.lock:
                        self.sent += len(data)
            except OSError:
                return


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.sock.close()


def connect(p: Proxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", p.port), timeout=10)


def recv_all(s: socket.socket, n: int) -> bytes:
    """Up to ``n`` bytes, fewer when the proxy ends the stream (EOF or reset) first."""
    out = b""
    try:
        while len(out) < n and (data := s.recv(n - len(out))):
            out += data
    except ConnectionResetError:
        pass
    return out


def until(pred: object, limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_passes_bytes_both_ways_with_latency_in_order(echo: Echo) -> None:
    knobs = Knobs(latency_up_s=0.05, latency_down_s=0.05)
    with Proxy("127.0.0.1", echo.port, knobs=knobs) as p, connect(p) as s:
        pieces = [bytes([i]) * 1000 for i in range(50)]
        for piece in pieces:
            s.sendall(piece)
        assert recv_all(s, 50_000) == b"".join(pieces)
        assert p.counts["bytes_up"] == p.counts["bytes_down"] == 50_000
        assert p.counts["connections"] == 1


def test_resets_a_seeded_share_of_new_connections(echo: Echo) -> None:
    with Proxy("127.0.0.1", echo.port, knobs=Knobs(reset_share=0.2), seed=3) as p:
        failed = 0
        for i in range(50):
            msg = b"ping %d" % i
            try:
                with connect(p) as s:
                    s.sendall(msg)
                    got = recv_all(s, len(msg))
            except (ConnectionResetError, BrokenPipeError):
                got = b""
            if got != msg:
                failed += 1
        assert p.counts["connections"] == 50
        assert 0 < p.counts["reset"] < 50
        assert failed == p.counts["reset"]


def test_reset_all_aborts_the_open_connections(echo: Echo) -> None:
    with Proxy("127.0.0.1", echo.port) as p, connect(p) as a, connect(p) as b:
        for s in (a, b):
            s.sendall(b"x")
            assert recv_all(s, 1) == b"x"
        assert p.reset_all() == 2
        with pytest.raises(ConnectionResetError):
            a.sendall(b"y")
            a.recv(1)
        assert p.counts["reset_now"] == 2
        with connect(p) as c:  # new connections still pass
            c.sendall(b"z")
            assert recv_all(c, 1) == b"z"


def test_truncates_a_response_after_k_bytes(echo: Echo) -> None:
    with Proxy("127.0.0.1", echo.port, knobs=Knobs(truncate_after=1000)) as p, connect(p) as s:
        s.sendall(b"a" * 5000)
        assert recv_all(s, 5000) == b"a" * 1000
        assert p.counts["truncated"] == 1


def test_stall_holds_the_first_bytes_then_delivers(echo: Echo) -> None:
    with Proxy("127.0.0.1", echo.port, knobs=Knobs(stall_s=3.0)) as p, connect(p) as s:
        s.sendall(b"hello")
        until(lambda: p.counts["stalled"] == 1)
        assert echo.sent == 5 and p.counts["bytes_down"] == 0  # echoed, but held
        assert recv_all(s, 5) == b"hello"
        assert p.counts["bytes_down"] == 5
