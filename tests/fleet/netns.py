"""Hosts as Linux network namespaces on one machine, joined by a bridge (needs root).

``Network(prefix)`` makes a "switch" namespace holding a bridge; ``add_host(name)`` makes
a namespace with one veth (``eth0``) whose peer sits on that bridge, and an address from
``10.251.0.0/24`` — an address that exists only inside these namespaces, never on the
machine's own interfaces. Veths are created directly inside their namespaces, so no
interface name ever appears in the root namespace (parallel runs cannot collide there);
namespace names carry a per-run prefix (``mfl-<creator pid>-<6 hex>-``) so parallel or
crashed runs never meet, and ``sweep_stale()`` deletes what a crashed run left behind
(namespaces whose creator process is gone).

``Host.run(argv)`` starts a process inside the host (``ip netns exec``) and keeps it, so
``Network.close()`` can kill every process and delete every namespace — also after a
failed test. ``Host.link_down()``/``link_up()`` cut and heal the host's only link (a
partition). ``Host.call(fn)`` runs a Python function in a thread that joined the host's
namespace: sockets it opens live on that host (how the harness's own proxy, servers and
checks take part without becoming processes).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

PREFIX_ROOT = "mfl"
SUBNET = "10.251.0"
NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """An ``ip`` command failed (its stderr is in the message)."""


def ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def setns(name: str) -> None:
    """Move the calling thread into network namespace ``name``."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_namespace(name: str, fn: Callable[[], T]) -> T:
    """``fn()`` in a new thread inside namespace ``name``; its result or its exception."""
    out: list[T] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            setns(name)
            out.append(fn())
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    t = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _kill_pids_in(name: str) -> None:
    proc = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    for pid in proc.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(prefix: str = PREFIX_ROOT) -> list[str]:
    """Kill the processes in, and delete, every namespace named ``PREFIX-PID-…`` whose
    creating process ``PID`` is gone (what crashed runs left; a live run's namespaces
    are never touched). Returns the names deleted."""
    gone = []
    for name in namespaces():
        parts = name.split("-")
        if parts[0] == prefix and len(parts) > 2 and parts[1].isdigit():
            if _alive(int(parts[1])):
                continue
            _kill_pids_in(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            gone.append(name)
    return gone


@dataclass
class Host:
    """One namespace with one link to the switch."""

    network: Network
    short: str
    netns: str
    address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        log: Path | None = None,
        cwd: Path | str | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this host; stdout+stderr go to ``log`` (or nowhere).
        The handle can be killed (``.kill()`` is a SIGKILL) and waited on."""
        out: int | IO[bytes] = subprocess.DEVNULL
        if log is not None:
            out = log.open("ab")
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                env={**os.environ, **(env or {})},
                cwd=cwd,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self.procs.append(proc)
        return proc

    def check(
        self, argv: Sequence[str], env: dict[str, str] | None = None, *, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this host to its end; output captured as text."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def call(self, fn: Callable[[], T]) -> T:
        return in_namespace(self.netns, fn)

    def link_down(self) -> None:
        ip("-n", self.netns, "link", "set", "eth0", "down")

    def link_up(self) -> None:
        ip("-n", self.netns, "link", "set", "eth0", "up")

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


class Network:
    """A switch namespace with a bridge, and hosts on it. A context manager: leaving it
    kills every process started through a host and deletes every namespace."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"{PREFIX_ROOT}-{os.getpid()}-{uuid.uuid4().hex[:6]}-"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        self.switch = self._netns("sw")
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        ip("-n", self.switch, "link", "set", "lo", "up")

    def _netns(self, short: str) -> str:
        name = f"{self.prefix}{short}"
        ip("netns", "add", name)
        self._made.append(name)
        return name

    def add_host(self, short: str) -> Host:
        """A new host ``short`` with address ``10.251.0.N`` on ``eth0``."""
        if short in self.hosts or short == "sw" or len(short) > 10:
            raise ValueError(f"host name {short!r}: taken, reserved or longer than 10")
        name = self._netns(short)
        address = f"{SUBNET}.{len(self.hosts) + 1}"
        port = f"p-{short}"
        ip("link", "add", "eth0", "netns", name, "type", "veth",
           "peer", "name", port, "netns", self.switch)  # fmt: skip
        ip("-n", self.switch, "link", "set", port, "master", "br0")
        ip("-n", self.switch, "link", "set", port, "up")
        ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        ip("-n", name, "link", "set", "lo", "up")
        host = Host(self, short, name, address)
        self.hosts[short] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.kill_all()
        for name in reversed(self._made):
            _kill_pids_in(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._made.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
