"""What the command shows people, and how it names them: sizes, the backup summary
table, and who is asking (for the audit trail).

Light on purpose: the repository tools and the audit reporter import it, and importing
the operator module would pull in the NATS client for nothing.
"""

from __future__ import annotations

import getpass
import socket

from rich.console import Console
from rich.table import Table

from shared.errors import PartialRestoreError
from shared.vocab import BackupSummary


def print_partial(err: Console, exc: PartialRestoreError) -> int:
    """A restore, export or dump that kept going past damage: every damaged item on its
    own line, then the summary; returns the exit code (1)."""
    for line in exc.damaged:
        err.print(f"damaged: {line}", markup=False, highlight=False, soft_wrap=True)
    err.print(f"mosaic-backup: error: {exc.summary}", markup=False, highlight=False, soft_wrap=True)
    return 1


def who(name: str | None = None) -> str:
    """Who asks, for the coordinator's audit trail: ``name`` (``--as``) or
    ``user@host`` of this process. A claim, not a proof: the NATS credentials are what
    the bus checks."""
    if name:
        return name
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (containers)
        user = "uid-unknown"
    return f"{user}@{socket.gethostname()}"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def summary_table(title: str, s: BackupSummary, extra: dict[str, str] | None = None) -> Table:
    t = Table(title=title, show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    dedup = f"{s.bytes_read / s.bytes_new:.2f}x" if s.bytes_new else "— (nothing new)"
    comp = f"{s.bytes_new / s.bytes_stored:.2f}x" if s.bytes_new and s.bytes_stored else "—"
    for k, v in {
        **(extra or {}),
        "files": f"{s.files:,}",
        "directories": f"{s.dirs:,}",
        "symlinks": f"{s.symlinks:,}",
        "bytes read": size(s.bytes_read),
        "new bytes (after dedup)": size(s.bytes_new),
        "bytes stored (compressed, encrypted)": size(s.bytes_stored),
        "dedup ratio": dedup,
        "compression ratio": comp,
        "chunks (new / total)": f"{s.chunks_new:,} / {s.chunks_total:,}",
        "duration": f"{s.duration_s:.2f} s",
        "throughput": f"{size(s.bytes_read / s.duration_s) if s.duration_s else '—'}/s",
    }.items():
        t.add_row(k, v)
    return t
