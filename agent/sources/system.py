"""System state: what it takes to rebuild a host around its data, captured as files.

Each item of :data:`ITEMS` is one file of the backup's tree, made by a command (package
lists, crontab, timers, firewall rules, addresses and routes, ``docker inspect``) or copied
from a plain file (``/etc/crontab``, ``/etc/cron.d/*``, ``resolv.conf``, ``hosts``,
``os-release``). Restore needs nothing special: the files come back as files.

Items fail independently. Whether an item can run at all (its tool on PATH, systemd as
PID 1, a docker daemon answering on its socket) is probed cheaply when the stream list is
built, so an unavailable item gets no file. A command's output is captured to a temporary
file before any byte enters the backup, so one that exits non-zero (``nft`` without
CAP_NET_ADMIN, say) leaves an empty file instead of a partial one and cannot abort the
items after it. With ``optional_missing`` (the default) every such item is listed, with
the reason, the tool's Debian package and its stderr tail, in ``MISSING.txt``, the last
stream, written after all the others ran; without it the job fails naming the tool and
the package.

Secrets are not captured: the file list is a fixed allowlist of world-readable settings
(never ``/etc/shadow``, SSH host keys, WireGuard or NetworkManager connection files,
docker's registry credentials), and in ``docker inspect`` the values of environment
variables whose names look secret (``*PASSWORD*``, ``*TOKEN*``, ``*KEY*``…) are replaced by
``<redacted>``. Commands in crontabs are stored as written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.sources.command import STDERR_TAIL
from engine.backup.stream import CompleteStream, Stream, StreamHandle
from shared.errors import SourceError
from shared.wire.sources import SystemSource

MISSING = b"MISSING.txt"
TIMEOUT_S = 120  # a tool that hangs (systemctl waiting for D-Bus) must not hang the job
DOCKER_SOCKET = "/var/run/docker.sock"
SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH|PRIVATE", re.IGNORECASE)


def _systemd_booted() -> str | None:
    if os.path.isdir("/run/systemd/system"):  # sd_booted(): systemd is PID 1
        return None
    return "systemd is not PID 1 on this host (no /run/systemd/system)"


def _docker_up() -> str | None:
    """None if the daemon answers ``GET /_ping`` on its unix socket (1 s at most)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return None  # tcp:// or ssh://: let the docker CLI find out
    path = host.removeprefix("unix://") or DOCKER_SOCKET
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status = s.recv(64)
    except OSError as exc:
        return f"no docker daemon answers on {path}: {exc.strerror or exc}"
    if not status.startswith(b"HTTP/1.") or b" 200 " not in status:
        return f"the docker daemon on {path} answered {status[:40]!r}"
    return None


@dataclass(frozen=True, slots=True)
class Item:
    name: str  # path of its file in the backup's tree
    package: str  # the Debian package that provides the tool or the file
    argv: tuple[str, ...] = ()  # a command's stdout…
    path: str = ""  # …or a plain file
    probe: Callable[[], str | None] | None = None  # why the item cannot run here, or None
    empty_ok: str = ""  # exit 1 with this in stderr means "nothing to capture"

    @property
    def tool(self) -> str:
        return self.argv[0] if self.argv else self.path


ITEMS: tuple[Item, ...] = (
    Item("packages/dpkg-selections.txt", "dpkg", ("dpkg", "--get-selections")),
    Item("packages/apt-manual.txt", "apt", ("apt-mark", "showmanual")),
    Item("cron/crontab-root.txt", "cron", ("crontab", "-l", "-u", "root"), empty_ok="no crontab"),
    Item("cron/etc-crontab.txt", "cron", path="/etc/crontab"),
    Item(
        "systemd/timers.txt",
        "systemd",
        ("systemctl", "list-timers", "--all", "--no-pager"),
        probe=_systemd_booted,
    ),
    Item("firewall/nft-ruleset.txt", "nftables", ("nft", "list", "ruleset")),
    Item("firewall/iptables-save.txt", "iptables", ("iptables-save",)),
    Item("network/ip-addr.json", "iproute2", ("ip", "-j", "addr")),
    Item("network/ip-route.json", "iproute2", ("ip", "-j", "route")),
    Item("network/resolv.conf", "libc-bin", path="/etc/resolv.conf"),
    Item("network/hosts", "netbase", path="/etc/hosts"),
    Item("containers/docker-inspect.json", "docker.io", ("docker", "inspect"), probe=_docker_up),
    Item("host/os-release", "base-files", path="/etc/os-release"),
    Item("host/uname.txt", "coreutils", ("uname", "-a")),
)


def _items(include: list[str]) -> list[Item]:
    """The selected items; ``/etc/cron.d`` is expanded to one item per file found now."""
    cron_d = Path("/etc/cron.d")
    found = sorted(p.name for p in cron_d.iterdir() if p.is_file()) if cron_d.is_dir() else []
    extra = [Item(f"cron/cron.d/{n}", "cron", path=str(cron_d / n)) for n in found]
    items = [*ITEMS[:4], *extra, *ITEMS[4:]]
    if not include:
        return items
    wanted = [i.strip("/") for i in include]
    unknown = [w for w in wanted if not any(_under(it.name, w) for it in items)]
    if unknown:
        groups = sorted({it.name.split("/")[0] for it in items})
        raise SourceError(f"system source: unknown include {unknown}; groups are {groups}")
    return [it for it in items if any(_under(it.name, w) for w in wanted)]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + "/")


def _unavailable(item: Item) -> str | None:
    if item.argv and shutil.which(item.argv[0]) is None:
        return f"{item.argv[0]} is not on PATH"
    if item.path and not os.path.isfile(item.path):
        return f"{item.path} does not exist"
    return item.probe() if item.probe else None


def _run(argv: list[str], out: IO[bytes], empty_ok: str = "") -> None:
    """Run ``argv`` to completion with stdout into ``out``; SourceError if it failed."""
    exe = shutil.which(argv[0]) or argv[0]
    env = {**os.environ, "LC_ALL": "C"}  # stable, parseable output
    try:
        done = subprocess.run(
            [exe, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
            env=env,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SourceError(f"{argv[0]} timed out after {TIMEOUT_S} s") from exc
    except OSError as exc:
        raise SourceError(f"{argv[0]} could not start: {exc.strerror or exc}") from exc
    tail = done.stderr.decode(errors="replace").strip()[-STDERR_TAIL:].replace("\n", " | ")
    if done.returncode == 1 and empty_ok and empty_ok in tail:
        out.seek(0)
        out.truncate()
        return
    if done.returncode != 0:
        raise SourceError(f"{argv[0]} failed (exit {done.returncode}): {tail or 'no output'}")


def _docker_inspect(out: IO[bytes]) -> None:
    """``docker inspect $(docker ps -aq)``, with secret-looking env values redacted."""
    with tempfile.TemporaryFile() as ids_file:
        _run(["docker", "ps", "-aq", "--no-trunc"], ids_file)
        ids_file.seek(0)
        ids = ids_file.read().decode().split()
    containers: list[dict[str, Any]] = []
    if ids:
        with tempfile.TemporaryFile() as raw:
            _run(["docker", "inspect", *ids], raw)
            raw.seek(0)
            containers = json.load(raw)
    for c in containers:
        cfg = c.get("Config") or {}
        cfg["Env"] = [_redact(e) for e in cfg.get("Env") or []]
    out.write(json.dumps(containers, indent=2).encode() + b"\n")


def _redact(var: str) -> str:
    name, sep, _ = var.partition("=")
    return f"{name}=<redacted>" if sep and SECRET_NAME.search(name) else var


def _capture(item: Item) -> IO[bytes]:
    if item.path:
        try:
            return open(item.path, "rb")  # closed by the handle
        except OSError as exc:
            raise SourceError(f"cannot read {item.path}: {exc.strerror}") from exc
    out = tempfile.TemporaryFile()
    try:
        if item.name == "containers/docker-inspect.json":
            _docker_inspect(out)
        else:
            _run(list(item.argv), out, item.empty_ok)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def streams(src: SystemSource) -> list[Stream]:
    items = _items(src.include)
    missing: list[str] = []  # filled as items are read, in order; MISSING.txt comes last
    runnable: list[Item] = []
    for item in items:
        why = _unavailable(item)
        if why is None:
            runnable.append(item)
        elif src.optional_missing:
            missing.append(f"{item.name}: {why} (Debian package '{item.package}')")
        else:
            raise SourceError(
                f"system item {item.name}: {why}: install the Debian package '{item.package}'"
            )

    def opener(item: Item) -> Callable[[], StreamHandle]:
        def open_item() -> StreamHandle:
            try:
                return CompleteStream(_capture(item))
            except SourceError as exc:
                if not src.optional_missing:
                    raise SourceError(
                        f"system item {item.name}: {exc} (Debian package '{item.package}')"
                    ) from exc
                missing.append(f"{item.name}: {exc} (Debian package '{item.package}')")
                return CompleteStream(tempfile.TemporaryFile())

        return open_item

    result = [Stream(it.name.encode(), opener(it)) for it in runnable]
    if src.optional_missing:

        def open_missing() -> StreamHandle:
            out = tempfile.TemporaryFile()
            out.write("".join(f"{line}\n" for line in missing).encode())
            out.seek(0)
            return CompleteStream(out)

        result.append(Stream(MISSING, open_missing))
    return result
