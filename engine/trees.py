"""Compare the file trees of two backups of one dataset: what was added, removed,
modified, or changed only in its metadata (the "configuration history" of a dataset:
``repo diff`` between the backups of two dates).

Two nodes at the same path hold the same content when they have the same type, size
and chunk ids (chunk ids are keyed hashes of the content, so equal ids are equal bytes)
and, for a symlink, the same target. Metadata is the mode, mtime, owner and group,
extended attributes, and a hard link's first name. A folder whose only change is its
mtime is left out when an entry directly inside it is listed: adding, removing or
renaming an entry is what moved that mtime, and the entry says more.

Secret files (the ``secret`` globs either backup's manifest recorded) are compared like
any other, but named as restore and verify name them (``conf/<secret>``, see
engine.backup.walk.shown), their sizes are withheld and their content is never read;
entries that show under one name (everything inside a secret folder) become one row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

from engine.backup.walk import Globs, shown
from engine.format.manifest import Manifest, Node
from engine.repository import Repository
from shared.errors import ConfigError, IntegrityError
from shared.wire.sources import FilesSource, Source

ChangeKind = Literal["added", "removed", "modified", "metadata", "changed"]
TEXT_LIMIT = 1 << 20  # --content shows files up to 1 MiB each


@dataclass(frozen=True, slots=True)
class Change:
    """One row of a diff. ``kind`` is "changed" for a secret that was modified or only
    had its metadata changed (which of the two is not shown); ``what`` names the fields
    that differ (empty for added and removed entries, and for secrets)."""

    path: bytes
    shown: str
    kind: ChangeKind
    old: Node | None
    new: Node | None
    what: tuple[str, ...] = ()
    secret: bool = False


@dataclass(frozen=True, slots=True)
class BackupDiff:
    old: Manifest
    new: Manifest
    changes: list[Change]


class SecretNames:
    """How paths of backups of the given sources may be shown: secret by the globs of
    any of them (a glob added between two backups hides the name in both)."""

    def __init__(self, *sources: Source) -> None:
        globs = [g for s in sources if isinstance(s, FilesSource) for g in s.secret]
        self._globs = Globs(sorted(set(globs)))

    def is_secret(self, path: bytes) -> bool:
        if self._globs.empty:
            return False
        parts = os.fsdecode(path).split("/")
        return any(self._globs.match("/".join(parts[: i + 1]), True) for i in range(len(parts)))

    def shown(self, path: bytes) -> str:
        rel = os.fsdecode(path)
        return rel if self._globs.empty else shown(rel, self._globs)


def _content_differs(a: Node, b: Node) -> list[str]:
    what = []
    if a.type != b.type:
        what.append("type")
    if a.size != b.size:
        what.append("size")
    if a.chunks != b.chunks:
        what.append("content")
    if a.type == b.type == "symlink" and a.target != b.target:
        what.append("target")
    return what


def _metadata_differs(a: Node, b: Node) -> list[str]:
    what = []
    if a.mode & 0o7777 != b.mode & 0o7777:
        what.append("mode")
    if a.mtime_ns != b.mtime_ns:
        what.append("mtime")
    if (a.uid, a.gid) != (b.uid, b.gid):
        what.append("owner")
    if a.xattrs != b.xattrs:
        what.append("xattrs")
    if a.type == b.type == "hardlink" and a.target != b.target:
        what.append("link")
    return what


def under(path: bytes, prefix: bytes) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + b"/")


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def diff_trees(
    old: list[Node], new: list[Node], names: SecretNames, prefix: bytes = b""
) -> list[Change]:
    """The differences between two trees (at or under ``prefix``), sorted by path."""
    before = {n.path: n for n in old if under(n.path, prefix)}
    after = {n.path: n for n in new if under(n.path, prefix)}
    raw: list[Change] = []
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a is None or b is None:
            kind: ChangeKind = "added" if a is None else "removed"
            raw.append(Change(path=path, shown="", kind=kind, old=a, new=b))
            continue
        content = _content_differs(a, b)
        meta = _metadata_differs(a, b)
        if content or meta:
            kind = "modified" if content else "metadata"
            raw.append(Change(path=path, shown="", kind=kind, old=a, new=b, what=(*content, *meta)))
    touched = {_parent(c.path) for c in raw}
    kept = [
        c
        for c in raw
        if not (c.what == ("mtime",) and c.new is not None and c.new.type == "dir")
        or c.path not in touched
    ]
    return _named(kept, names)


def _named(changes: list[Change], names: SecretNames) -> list[Change]:
    """Each change with its shown name; secrets withheld, one row per shown name."""
    out: list[Change] = []
    seen: set[tuple[str, str]] = set()
    for c in changes:
        if not names.is_secret(c.path):
            out.append(replace(c, shown=os.fsdecode(c.path)))
            continue
        kind: ChangeKind = c.kind if c.kind in ("added", "removed") else "changed"
        name = names.shown(c.path)
        if (name, kind) in seen:
            continue
        seen.add((name, kind))
        out.append(
            Change(path=c.path, shown=name, kind=kind, old=None, new=None, what=(), secret=True)
        )
    return out


async def diff_backups(repo: Repository, old_id: str, new_id: str, prefix: str = "") -> BackupDiff:
    """Compare backup ``old_id`` with ``new_id`` (both of one dataset)."""
    old = await repo.load_manifest(old_id)
    new = await repo.load_manifest(new_id)
    if old.dataset != new.dataset:
        raise ConfigError(
            f"BACKUP_B: backup {new_id} is of dataset '{new.dataset}', BACKUP_A {old_id} of "
            f"'{old.dataset}'; diff compares two backups of one dataset: choose both from "
            f"`mosaic-backup repo find --dataset {old.dataset} PATTERN` or `repo list`"
        )
    names = SecretNames(old.source, new.source)
    changes = diff_trees(
        await repo.read_tree(old),
        await repo.read_tree(new),
        names,
        os.fsencode(prefix.strip("/")),
    )
    return BackupDiff(old=old, new=new, changes=changes)


async def read_text(
    repo: Repository, node: Node, where: str, limit: int = TEXT_LIMIT
) -> str | None:
    """A file's content as text, or None when it is not a file, is over ``limit`` bytes
    or is not UTF-8 text (a NUL byte counts as binary). Never call it for a secret."""
    if node.type not in ("file", "hardlink") or node.size > limit:
        return None
    await repo.find_missing(node.chunks)
    data = b"".join([await repo.read_blob(c) for c in node.chunks])
    if len(data) != node.size:
        raise IntegrityError(
            f"{where}: the manifest says {node.size} bytes, its chunks hold {len(data)}"
        )
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
