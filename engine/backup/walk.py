"""The directory source: walks a tree without following symlinks.

Yields entries in a stable order (sorted by name, parents before children) so trees of
unchanged folders produce identical tree streams and deduplicate. Sockets, FIFOs and
device nodes are skipped (they hold no data to restore), each named in a warning.

Damage never spreads: a folder or file that cannot be listed, stat'ed or read
(permission denied, I/O error, vanished) is left out with a warning naming it, and the
rest is backed up — unless the source says ``on_unreadable = "fail"``. Warnings are
collected in :class:`WalkStats` (the reader in engine/backup/dataset.py adds the files that could
not be read or changed while read); every one is logged, the first
:data:`~shared.vocab.WARNINGS_SHOWN` travel in the backup's summary.

Filters (``FilesSource``): globs are matched against the '/'-separated path relative to
the source root. A glob without '/' matches an entry's name at any depth (``*.log``);
one with '/' matches the whole relative path (``etc/nginx/*.conf``, a leading '/' is
ignored); ``*``, ``?`` and ``[...]`` stay inside one name, ``**`` as a whole segment spans
any number of folders (``var/**/*.log``); a glob ending in '/' matches folders only.
``exclude`` wins over ``include``, and an excluded folder is not descended. With
``include``, an entry is kept when it matches or lies under a matching folder; the
folders above kept entries are kept too (so restore has their modes and owners), and
folders that cannot lead to a match are not descended.

Secrets: an entry matching a ``secret`` glob (or under a matching folder) is backed up
like any other, but its name is replaced by ``<secret>`` in every log line and error
(see :func:`shown`); no code path here or in the backup ever prints file contents.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import SourceError
from shared.vocab import WARNINGS_SHOWN, FileWarning, FileWarningKind
from shared.wire.sources import FilesSource, Source

log = logging.getLogger(__name__)

_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA)


@dataclass(frozen=True, slots=True)
class Entry:
    rel: bytes  # '/'-separated path relative to the source root
    abspath: bytes
    st: os.stat_result
    xattrs: dict[str, bytes] | None = None
    secret: bool = False


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def special_kind(mode: int) -> str:
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), "special file")


@dataclass(slots=True)
class WalkStats:
    skipped_special: int = 0
    excluded: int = 0
    skipped: list[str] = field(default_factory=list)
    mount_points: list[str] = field(default_factory=list)  # not crossed (shown names)
    xattr_errors: int = 0
    unreadable: int = 0  # files and folders left out
    changed: int = 0  # files that changed while read (stored as read)
    warnings: list[FileWarning] = field(default_factory=list)  # the first WARNINGS_SHOWN

    def warn(self, path: str, kind: FileWarningKind, detail: str) -> None:
        """Count and log one file warning; keep it by name while there is room."""
        if kind == "skipped":
            self.skipped_special += 1
            log.info("skipped %s: %s", path, detail)
        else:
            if kind == "unreadable":
                self.unreadable += 1
            else:
                self.changed += 1
            log.warning("%s %s: %s", kind, path, detail)
        if len(self.warnings) < WARNINGS_SHOWN:
            self.warnings.append(FileWarning(path=path, kind=kind, detail=detail))


def why(exc: OSError) -> str:
    """The reason of an OSError without its file name (which may be a secret's)."""
    return exc.strerror or type(exc).__name__


def unreadable_error(path: str, doing: str, exc: OSError) -> SourceError:
    """The one-line error of ``on_unreadable = "fail"``: what, where, how to fix."""
    return SourceError(
        f"cannot {doing} {path}: {why(exc)}; fix its permissions, exclude it, "
        'or set on_unreadable = "warn" on the source to back up the rest'
    )


def _segment_regex(seg: str) -> str:
    """One path segment of a glob as a regex that never crosses '/'."""
    out: list[str] = []
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (j := seg.find("]", i + 2)) != -1:
            body = seg[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _path_regex(segs: list[str]) -> str:
    parts: list[str] = []
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if seg == "**":
            parts.append(".*" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment_regex(seg) + ("" if last else "/"))
    return "".join(parts)


def _either(regexes: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{r})" for r in regexes), re.S) if regexes else None


class Globs:
    """A compiled list of globs with the semantics in the module docstring; a glob
    ending in '/' matches folders only."""

    def __init__(self, patterns: list[str]) -> None:
        self.empty = not patterns
        names: tuple[list[str], list[str]] = ([], [])  # (any kind, folders only)
        paths: tuple[list[str], list[str]] = ([], [])
        self._prefixes: list[list[re.Pattern[str] | None]] = []  # None = "**"
        for raw in patterns:
            pat = raw.strip("/")
            if not pat:
                continue
            dir_only = int(raw.endswith("/"))
            if "/" not in pat and pat != "**":
                names[dir_only].append(_segment_regex(pat))
                continue
            segs = pat.split("/")
            paths[dir_only].append(_path_regex(segs))
            self._prefixes.append(
                [None if s == "**" else re.compile(_segment_regex(s), re.S) for s in segs]
            )
        self._any_name = bool(names[0] or names[1])
        self._names = (_either(names[0]), _either(names[1]))
        self._paths = (_either(paths[0]), _either(paths[1]))

    def match(self, rel: str, is_dir: bool = False) -> bool:
        name = rel.rsplit("/", 1)[-1]
        for kind in (0, 1) if is_dir else (0,):
            by_name, by_path = self._names[kind], self._paths[kind]
            if by_name is not None and by_name.fullmatch(name):
                return True
            if by_path is not None and by_path.fullmatch(rel):
                return True
        return False

    def may_match_below(self, rel_dir: str) -> bool:
        """Whether an entry under the folder ``rel_dir`` could match (include pruning)."""
        if self._any_name:
            return True
        dir_segs = rel_dir.split("/")
        for segs in self._prefixes:
            ok = True
            for i, d in enumerate(dir_segs):
                if i >= len(segs) - 1:  # the pattern's last segment names this level
                    ok = segs[-1] is None
                    break
                seg = segs[i]
                if seg is None:
                    break  # "**" can span the rest
                if not seg.fullmatch(d):
                    ok = False
                    break
            if ok:
                return True
        return False


def shown(rel: str, secret: Globs) -> str:
    """``rel`` as it may appear in logs and errors: from the first component that is a
    secret on, the name is withheld (``conf/<secret>``)."""
    parts = rel.split("/")
    for i in range(len(parts)):
        if secret.match("/".join(parts[: i + 1]), True):
            return "/".join([*parts[:i], "<secret>"])
    return rel


def shown_names(source: Source) -> Callable[[bytes], str]:
    """How a path stored in a backup of ``source`` may appear in restore and verify
    output: :func:`shown` with the secret globs the manifest recorded for a files
    backup; other sources have no secret globs."""
    if not isinstance(source, FilesSource) or not source.secret:
        return os.fsdecode
    secret = Globs(source.secret)
    return lambda path: shown(os.fsdecode(path), secret)


def read_xattrs(path: bytes, stats: WalkStats) -> dict[str, bytes] | None:
    """Every readable extended attribute of ``path`` (never following a symlink)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_XATTRS:
            stats.xattr_errors += 1
        return None
    out: dict[str, bytes] = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            stats.xattr_errors += 1
    return out or None


def display_name(source: FilesSource, rel: bytes, secrets: Globs) -> str:
    """How a file of ``source`` is named in warnings and errors: its path where the
    user knows it (the source path, even when read from a snapshot), secrets withheld."""
    return os.path.join(source.path, shown(os.fsdecode(rel), secrets))


_FAR = 1 << 62  # "to the end of the file, however long it grows"


def file_region(fd: int, pos: int) -> tuple[bool, int]:
    """(whether offset ``pos`` of the open file ``fd`` is in a hole, where that hole or
    data region ends), from SEEK_DATA/SEEK_HOLE; a hole reads as zeros. Where the file
    system cannot tell, everything is data."""
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
        if data > pos:
            return True, data
        return False, os.lseek(fd, pos, os.SEEK_HOLE)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            return False, _FAR  # no SEEK_DATA here (EINVAL): read it all
        size = os.fstat(fd).st_size  # no data after pos: a hole up to the end
        return (True, size) if pos < size else (False, _FAR)


class _Walker:
    def __init__(self, source: FilesSource, stats: WalkStats, root_dev: int) -> None:
        self.source = source
        self.exclude = Globs(source.exclude)
        self.include = Globs(source.include)
        self.secret = Globs(source.secret)
        self.one_fs = source.one_file_system
        self.xattrs = source.xattrs
        self.strict = source.on_unreadable == "fail"
        self.stats = stats
        self.root_dev = root_dev

    def unreadable(self, rel: bytes, doing: str, exc: OSError) -> None:
        """Leave ``rel`` out with a warning, or fail the backup when the source is strict."""
        name = display_name(self.source, rel, self.secret)
        if self.strict:
            raise unreadable_error(name, doing, exc) from exc
        self.stats.warn(name, "unreadable", f"cannot {doing}: {why(exc)}")

    def entry(self, rel: bytes, path: bytes, st: os.stat_result, secret: bool) -> Entry:
        xattrs = read_xattrs(path, self.stats) if self.xattrs else None
        return Entry(rel, path, st, xattrs, secret)

    def walk_dir(
        self, absdir: bytes, reldir: bytes, included: bool, secret_dir: bool
    ) -> Iterator[Entry]:
        try:
            with os.scandir(absdir) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            if not reldir:
                raise SourceError(f"cannot list {self.source.path}: {exc.strerror}") from exc
            self.unreadable(reldir, "list", exc)  # kept as an empty folder
            return
        for name in names:
            rel = reldir + b"/" + name if reldir else name
            rels = os.fsdecode(rel)
            path = os.path.join(absdir, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # vanished between listing and stat: as if never there
            except OSError as exc:
                self.unreadable(rel, "stat", exc)
                continue
            mode = st.st_mode
            is_dir = stat.S_ISDIR(mode)
            if not self.exclude.empty and self.exclude.match(rels, is_dir):
                self.stats.excluded += 1
                continue
            secret = secret_dir or self.secret.match(rels, is_dir)
            inc = included or self.include.empty or self.include.match(rels, is_dir)
            if self.one_fs and st.st_dev != self.root_dev:
                if stat.S_ISDIR(mode) and inc:
                    yield self.entry(rel, path, st, secret)  # the empty mount point
                if inc or stat.S_ISDIR(mode):
                    name_shown = shown(rels, self.secret)
                    self.stats.mount_points.append(name_shown)
                    log.info("one_file_system: not crossing into the mount at %s", name_shown)
                continue
            if stat.S_ISDIR(mode):
                if inc:
                    yield self.entry(rel, path, st, secret)
                    yield from self.walk_dir(path, rel, True, secret)
                elif self.include.may_match_below(rels):
                    below = list(self.walk_dir(path, rel, False, secret))
                    if below:
                        yield self.entry(rel, path, st, secret)
                        yield from below
            elif stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                if inc:
                    yield self.entry(rel, path, st, secret)
            elif inc:
                name_shown = display_name(self.source, rel, self.secret)
                self.stats.warn(name_shown, "skipped", f"{special_kind(mode)}, no data to store")


def walk(
    source: FilesSource, stats: WalkStats | None = None, *, root: str | None = None
) -> Iterator[Entry]:
    """Every directory, regular file and symlink under ``source.path`` (not the root).

    ``root`` reads the same tree from elsewhere (a snapshot of it); the relative paths,
    and so the backup, look as if read from ``source.path``."""
    stats = stats if stats is not None else WalkStats()
    top = os.fsencode(Path(root if root is not None else source.path))
    try:
        st = os.stat(top)
    except OSError as exc:
        raise SourceError(f"source path {source.path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"source path {source.path}: not a directory")
    yield from _Walker(source, stats, st.st_dev).walk_dir(top, b"", False, False)
