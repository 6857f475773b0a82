"""Compare two directory trees byte for byte (used by quickstart and the tests)."""

from __future__ import annotations

import filecmp
import os
import stat
from pathlib import Path


def _entries(root: Path) -> dict[str, os.stat_result]:
    out: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = os.lstat(full)
    return out


def tree_differences(source: str | Path, restored: str | Path) -> list[str]:
    """Every difference in presence, type, content, symlink target, mode and mtime."""
    a, b = _entries(Path(source)), _entries(Path(restored))
    diffs = [f"missing in restore: {p}" for p in sorted(a.keys() - b.keys())]
    diffs += [f"extra in restore: {p}" for p in sorted(b.keys() - a.keys())]
    for rel in sorted(a.keys() & b.keys()):
        sa, sb = a[rel], b[rel]
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            diffs.append(f"type differs: {rel}")
            continue
        pa, pb = os.path.join(source, rel), os.path.join(restored, rel)
        if stat.S_ISLNK(sa.st_mode):
            if os.readlink(pa) != os.readlink(pb):
                diffs.append(f"symlink target differs: {rel}")
            continue
        if stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
            diffs.append(f"mode differs: {rel} {sa.st_mode:o} != {sb.st_mode:o}")
        if stat.S_ISREG(sa.st_mode):
            if sa.st_mtime_ns != sb.st_mtime_ns:
                diffs.append(f"mtime differs: {rel}")
            if sa.st_size != sb.st_size or not filecmp.cmp(pa, pb, shallow=False):
                diffs.append(f"content differs: {rel}")
    return diffs
