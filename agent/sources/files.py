"""The directory source: walks a tree without following symlinks.

Yields entries in a stable order (sorted by name, parents before children) so trees of
unchanged folders produce identical tree streams and deduplicate. Sockets, FIFOs and
device nodes are counted and skipped: they hold no data to restore.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import SourceError
from shared.messages import FilesSource


@dataclass(frozen=True, slots=True)
class Entry:
    rel: bytes  # '/'-separated path relative to the source root
    abspath: bytes
    st: os.stat_result


@dataclass(slots=True)
class WalkStats:
    skipped_special: int = 0
    excluded: int = 0
    skipped: list[str] = field(default_factory=list)


def _excluded(rel: str, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def walk(source: FilesSource, stats: WalkStats | None = None) -> Iterator[Entry]:
    """Every directory, regular file and symlink under ``source.path`` (not the root)."""
    stats = stats if stats is not None else WalkStats()
    root = os.fsencode(Path(source.path))
    try:
        st = os.stat(root)
    except OSError as exc:
        raise SourceError(f"source path {source.path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"source path {source.path}: not a directory")
    yield from _walk_dir(root, b"", source.exclude, stats)


def _walk_dir(
    absdir: bytes, reldir: bytes, exclude: list[str], stats: WalkStats
) -> Iterator[Entry]:
    try:
        with os.scandir(absdir) as it:
            names = sorted(e.name for e in it)
    except OSError as exc:
        raise SourceError(f"cannot list {os.fsdecode(absdir)}: {exc.strerror}") from exc
    for name in names:
        rel = reldir + b"/" + name if reldir else name
        if exclude and _excluded(os.fsdecode(rel), exclude):
            stats.excluded += 1
            continue
        path = os.path.join(absdir, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # vanished while we walked
        except OSError as exc:
            raise SourceError(f"cannot stat {os.fsdecode(path)}: {exc.strerror}") from exc
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            yield Entry(rel, path, st)
            yield from _walk_dir(path, rel, exclude, stats)
        elif stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            yield Entry(rel, path, st)
        else:
            stats.skipped_special += 1
