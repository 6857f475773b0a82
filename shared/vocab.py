"""Words both roles and the repository format use: backup types and tiers, the summary
a backup records, what a files backup could not store, and the clock.

The repository format (engine.format.manifest) stores :class:`BackupSummary` and
:class:`FileWarning` in every manifest, so the wire rules apply to them too: a new field
always has a default, none is renamed or retyped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

BackupType = Literal["full", "incremental"]
# The retention tier of a backup; the coordinator's tiers (coordinator.toml) use the same.
Tier = Literal["daily", "weekly", "monthly", "yearly", "config", "translog"]


def utcnow() -> datetime:
    return datetime.now(UTC)


FileWarningKind = Literal["skipped", "unreadable", "changed"]


class FileWarning(msgspec.Struct, frozen=True, kw_only=True):
    """One file a files backup did not store as it found it, by name (a secret file's
    name withheld): ``skipped`` a socket, FIFO or device (no data to store);
    ``unreadable`` left out (permission denied, vanished, I/O error); ``changed`` while
    it was read, stored as read (its content may be a mix of before and after)."""

    path: str
    kind: FileWarningKind
    detail: str = ""


# How many FileWarnings a summary names; the agent's log names every one.
WARNINGS_SHOWN = 20


class BackupSummary(msgspec.Struct, frozen=True, kw_only=True):
    files: int
    dirs: int
    symlinks: int
    bytes_read: int
    bytes_new: int
    bytes_stored: int
    chunks_total: int
    chunks_new: int
    packs_written: int
    duration_s: float
    # files backups: how many entries were skipped / left out / changed while read, and
    # the first WARNINGS_SHOWN of them by name (all of them are in the agent's log)
    files_skipped: int = 0
    files_unreadable: int = 0
    files_changed: int = 0
    warnings: list[FileWarning] = []

    def warning_lines(self) -> list[str]:
        """The file warnings as lines for people: a count, then each named one."""
        total = self.files_skipped + self.files_unreadable + self.files_changed
        if not total:
            return []
        kinds = [
            f"{n} {what}"
            for n, what in (
                (self.files_unreadable, "unreadable (left out)"),
                (self.files_changed, "changed while read (stored as read)"),
                (self.files_skipped, "skipped (socket, FIFO or device)"),
            )
            if n
        ]
        lines = [f"warning: {total} files not stored as found: {', '.join(kinds)}"]
        lines += [f"  {w.kind} {w.path}: {w.detail}" for w in self.warnings]
        if total > len(self.warnings):
            lines.append(f"  … and {total - len(self.warnings)} more (the log names every one)")
        return lines
