"""The process table as the probes need it: command lines, folders, listening sockets.

Read from ``proc_root`` (``/proc``; configurable so a containerised agent can be given
the host's). A process that ends while it is read, or one the agent may not look into,
is skipped or reported with what could be read: the table changes under our feet.
Listening sockets are found the way ``ss -lp`` does: the process's socket inodes
(``fd/* -> socket:[N]``) looked up in its network namespace's ``net/tcp``, ``net/tcp6``
(state 0A, LISTEN) and ``net/unix`` (flag __SO_ACCEPTCON).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LISTEN = "0A"
SO_ACCEPTCON = 0x00010000


@dataclass(frozen=True)
class Process:
    pid: int
    argv: tuple[str, ...]
    cwd: str | None  # None: not readable
    root: Path = field(repr=False)

    @property
    def name(self) -> str:
        """The program's base name as its command line shows it (``postgres``)."""
        return os.path.basename(self.argv[0]) if self.argv else ""

    def option(self, *names: str) -> str | None:
        """The value of ``--name=V``, ``--name V`` or ``-D V`` in its command line."""
        args = self.argv[1:]
        for i, arg in enumerate(args):
            for n in names:
                if arg.startswith(n + "=") and n.startswith("--"):
                    return arg[len(n) + 1 :]
                if arg == n and i + 1 < len(args):
                    return args[i + 1]
                if not n.startswith("--") and arg.startswith(n) and len(arg) > len(n):
                    return arg[len(n) :]  # -D/path
        return None

    def _socket_inodes(self) -> set[str]:
        fd_dir = self.root / str(self.pid) / "fd"
        out: set[str] = set()
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return out
        for n in names:
            try:
                target = os.readlink(fd_dir / n)
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
        return out

    def listening(self) -> tuple[list[int], list[str]]:
        """Its listening TCP ports and unix socket paths (sorted, no duplicates)."""
        inodes = self._socket_inodes()
        if not inodes:
            return [], []
        net = self.root / str(self.pid) / "net"
        ports: set[int] = set()
        for table in ("tcp", "tcp6"):
            for cols in _rows(net / table):
                if len(cols) > 9 and cols[3] == LISTEN and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        sockets: set[str] = set()
        for cols in _rows(net / "unix"):
            if len(cols) > 7 and cols[6] in inodes and int(cols[3], 16) & SO_ACCEPTCON:
                sockets.add(cols[7])
        return sorted(ports), sorted(sockets)


def _rows(path: Path) -> Iterator[list[str]]:
    try:
        lines = path.read_text(errors="replace").splitlines()[1:]
    except OSError:
        return
    for line in lines:
        yield line.split()


def processes(root: str | Path) -> Iterator[Process]:
    """Every process of ``root`` whose command line can be read."""
    base = Path(root)
    for entry in os.listdir(base):
        if not entry.isdigit():
            continue
        try:
            raw = (base / entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
        if not argv:
            continue  # a kernel thread
        try:
            cwd: str | None = os.readlink(base / entry / "cwd")
        except OSError:
            cwd = None
        yield Process(int(entry), argv, cwd, base)


def resolve(path: str, cwd: str | None) -> str:
    """``path`` made absolute against the process's folder, normalised (no symlinks
    resolved: the agent may see another mount namespace)."""
    if not os.path.isabs(path) and cwd:
        path = os.path.join(cwd, path)
    return os.path.normpath(path)
