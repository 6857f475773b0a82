"""Hosts as network namespaces (needs root): links that carry bytes and can be cut, a
cleanup that kills and deletes everything after a failure, a sweeper for crashed runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.fleet.netns import Network, namespaces, sweep_stale

SERVE = (
    "import socket; s = socket.create_server(('0.0.0.0', 7000))\n"
    "while True:\n    c, _ = s.accept(); c.sendall(b'hi'); c.close()"
)


def test_hosts_talk_over_their_link_and_a_cut_link_is_unreachable() -> None:
    with Network() as net:
        a, b = net.add_host("a"), net.add_host("b")
        server = b.run([sys.executable, "-c", SERVE])

        def fetch() -> bytes:
            while server.poll() is None:  # until it listens: a positive answer
                try:
                    with socket.create_connection((b.address, 7000), timeout=2) as s:
                        return s.recv(2)
                except ConnectionRefusedError:
                    continue
            raise AssertionError(f"server exited with {server.returncode}")

        assert a.call(fetch) == b"hi"
        probe = f"import socket; socket.create_connection(('{b.address}', 7000), 2).close()"
        assert a.check([sys.executable, "-c", probe]).returncode == 0
        a.link_down()
        res = a.check([sys.executable, "-c", probe])
        assert res.returncode != 0 and "Network is unreachable" in res.stderr
        a.link_up()
        assert a.check([sys.executable, "-c", probe]).returncode == 0
    # the addresses were never on the machine's own interfaces
    assert "10.251." not in subprocess.run(["ip", "addr"], capture_output=True, text=True).stdout


def test_close_after_a_failure_kills_processes_and_deletes_namespaces() -> None:
    with pytest.raises(RuntimeError), Network() as net:
        host = net.add_host("h")
        proc = host.run(["sleep", "600"])
        names = [net.switch, host.netns]
        raise RuntimeError("the test failed")
    assert proc.wait(10) == -9
    assert not set(names) & set(namespaces())


def test_sweeper_deletes_only_namespaces_of_runs_that_are_gone() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = Network(prefix=f"mfl-{gone.pid}-sweep-")
    stale.add_host("x")
    live = Network()  # this process's: must survive the sweep
    try:
        swept = sweep_stale()
        assert {stale.switch, f"{stale.prefix}x"} <= set(swept)
        assert live.switch in namespaces() and live.prefix.startswith(f"mfl-{os.getpid()}-")
    finally:
        live.close()
        stale.close()
