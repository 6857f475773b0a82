"""What a drill checks without a server: restored tars and Redis files, and the
running of a check tool (its exit status and the tail of its output become a check)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shared.wire.events import DrillCheck

TOOL_TIMEOUT_S = 600.0
ERROR_TAIL = 400  # characters of a tool's output kept in a failed check


def one_line(text: str) -> str:
    return " ".join(text.split())[-ERROR_TAIL:]


def run_tool(argv: list[str], *, as_user: str | None = None) -> subprocess.CompletedProcess[str]:
    if as_user is not None and os.geteuid() == 0:
        argv = ["runuser", "-u", as_user, "--", *argv]
    try:
        return subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 127, f"{argv[0]}: {exc}")


def tool_check(
    name: str, argv: list[str], *, as_user: str | None = None, quiet: str = "ok"
) -> DrillCheck:
    proc = run_tool(argv, as_user=as_user)
    if proc.returncode != 0:
        why = one_line(proc.stdout) or "no output"
        return DrillCheck(name=name, ok=False, detail=f"exit {proc.returncode}: {why}")
    lines = proc.stdout.strip().splitlines()
    return DrillCheck(name=name, ok=True, detail=one_line(lines[-1]) if lines else quiet)


@contextlib.contextmanager
def socket_dir() -> Iterator[Path]:
    """A short folder for a throwaway server's unix socket: a socket path must stay below
    108 bytes, which a scratch folder deep in the file system would exceed."""
    sock = Path(tempfile.mkdtemp(prefix="mosaic-sock-", dir="/tmp"))
    try:
        yield sock
    finally:
        shutil.rmtree(sock, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_aof(folder: Path) -> list[DrillCheck]:
    """``redis-check-aof`` on a multi-part AOF's manifest (it checks every file the
    manifest names); nothing when the backup holds no AOF."""
    if not folder.is_dir():
        return []
    found = sorted(folder.glob("*.manifest"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        return [
            DrillCheck(
                name="redis-check-aof",
                ok=False,
                detail=f"{folder.name}/ needs exactly one AOF manifest, found {names}",
            )
        ]
    return [tool_check("redis-check-aof", ["redis-check-aof", str(found[0])])]


def check_tar(path: Path) -> DrillCheck:
    """List a tar and check that every member's data, as long as its header says, is in
    the file: ``tarfile`` alone stops quietly at a truncated member."""
    name = f"tar {path.name}"
    size = path.stat().st_size
    members = nbytes = 0
    try:
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                members += 1
                if not m.isreg():
                    continue
                nbytes += m.size
                end = m.offset_data + m.size
                if end > size:
                    return DrillCheck(
                        name=name,
                        ok=False,
                        detail=f"member {m.name!r} is cut short: its header says {m.size} "
                        f"bytes, the file holds {max(size - m.offset_data, 0)}",
                    )
    except (tarfile.TarError, OSError) as exc:
        return DrillCheck(name=name, ok=False, detail=f"unreadable after {members} members: {exc}")
    if members == 0:
        return DrillCheck(name=name, ok=False, detail="no members: an empty archive")
    return DrillCheck(name=name, ok=True, detail=f"{members} members, {nbytes} bytes listed")
