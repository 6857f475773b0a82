"""Process and file-system helpers for the benchmark: timed commands with per-child peak RSS,
warm-up reads, ``du``, byte-for-byte tree comparison and machine information."""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1 << 20


@dataclass(frozen=True)
class Cmd:
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    def show(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        cd = f"cd {shlex.quote(str(self.cwd))} && " if self.cwd else ""
        return f"{cd}{env + ' ' if env else ''}{shlex.join(self.argv)}"


@dataclass(frozen=True)
class Result:
    seconds: float
    peak_rss_mib: float


class CommandFailed(RuntimeError):
    pass


def run(cmd: Cmd, log: Path) -> Result:
    """Run ``cmd`` (stdout and stderr appended to ``log``); its wall time and the peak RSS of
    that child alone (``wait4`` on its pid, not ``RUSAGE_CHILDREN``). Raise on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n$ {cmd.show()}\n".encode())
        out.flush()
        t0 = time.perf_counter()
        p = subprocess.Popen(
            list(cmd.argv),
            env={**os.environ, **cmd.env},
            cwd=cmd.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen quiet
    if p.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise CommandFailed(
            f"exit {p.returncode}: {cmd.show()}\n--- last lines of {log} ---\n" + "\n".join(tail)
        )
    return Result(seconds, usage.ru_maxrss / 1024)  # ru_maxrss is KiB on Linux


def output(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """First line of a command's output (or the error), for version strings."""
    try:
        p = subprocess.run(
            list(argv),
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as e:
        return f"unavailable ({e})"
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0] if text else f"exit {p.returncode}"


def sync() -> None:
    """Flush dirty pages so one step's write-back is not charged to the next step."""
    os.sync()


def warm(root: Path) -> int:
    """Read every file once (untimed), so every tool starts from a warm page cache."""
    total = 0
    for d, _, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            if os.path.islink(p):
                continue
            with open(p, "rb", buffering=0) as f:
                while chunk := f.read(MIB):
                    total += len(chunk)
    return total


def du_bytes(path: Path) -> int:
    """Disk usage (allocated blocks) of a folder, as ``du -s --block-size=1``."""
    out = subprocess.run(
        ["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[0])


def fresh(path: Path) -> Path:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path)
    return path


def copy_tree(src: Path, dst: Path) -> None:
    fresh(dst)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def _entries(root: Path) -> dict[str, str]:
    """Relative path → kind ('d', 'f' or 'l:<target>') of everything under ``root``."""
    out: dict[str, str] = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "l:" + os.readlink(p)
            else:
                out[rel] = "d" if os.path.isdir(p) else "f"
    return out


def _same_bytes(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MIB), fb.read(MIB)
            if x != y:
                return False
            if not x:
                return True


def compare_trees(source: Path, restored: Path) -> list[str]:
    """Differences between two trees (names, kinds, symlink targets, file bytes); [] if
    identical."""
    if not restored.is_dir():
        return [f"{restored} does not exist"]
    a, b = _entries(source), _entries(restored)
    diffs = [f"missing in restore: {p}" for p in sorted(a.keys() - b.keys())]
    diffs += [f"extra in restore: {p}" for p in sorted(b.keys() - a.keys())]
    for rel in sorted(a.keys() & b.keys()):
        if a[rel] != b[rel]:
            diffs.append(f"kind differs: {rel} ({a[rel]} vs {b[rel]})")
        elif a[rel] == "f" and not _same_bytes(str(source / rel), str(restored / rel)):
            diffs.append(f"content differs: {rel}")
    return diffs


def machine_info(workdir: Path) -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kib / MIB:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    df = subprocess.run(
        ["df", "--output=fstype", str(workdir)], capture_output=True, text=True, check=False
    )
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "workdir filesystem": (df.stdout.split() or ["unknown"])[-1],
    }
