"""Restore of a backed-up tree into a destination folder.

Secret files (a files backup's ``secret`` globs, recorded in its manifest) are restored
like any other, but errors name them as ``conf/<secret>`` (engine.backup.walk.shown).

Safety first: every path of the tree is checked before anything is written (no absolute
paths, no ``..``, every parent must be a directory of the same tree, so nothing can be
written through a symlink), the destination must be new or empty, files are created with
O_EXCL|O_NOFOLLOW, and symlinks are created last. Every blob is authenticated and its id
re-hashed; a damaged one never stops the other files (engine.restore.fetch).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio.to_thread
import msgspec

from engine.backup.walk import shown_names
from engine.format.manifest import Manifest, Node
from engine.progress import Progress, ProgressFn, no_progress
from engine.repository import Repository
from engine.restore.fetch import Damage, fetch_and_write, write_error
from shared.errors import IntegrityError, PartialRestoreError, RepositoryError, UnsafePathError
from shared.tasks import task_group

log = logging.getLogger(__name__)


def check_paths(
    nodes: list[Node], backup_id: str, name: Callable[[bytes], str] = os.fsdecode
) -> None:
    """Refuse the whole tree if any path could land outside the destination; ``name``
    shows a stored path in the error."""
    dirs: set[bytes] = set()
    files: set[bytes] = set()
    seen: set[bytes] = set()
    for node in nodes:
        p = node.path
        parts = p.split(b"/")
        bad = (
            not p
            or p.startswith(b"/")
            or b"\0" in p
            or any(part in (b"", b".", b"..") for part in parts)
        )
        parent = b"/".join(parts[:-1])
        if not bad and parent and parent not in dirs:
            bad = True  # parent missing or not a directory (e.g. a symlink): refuse
        if bad or p in seen:
            raise UnsafePathError(
                f"backup {backup_id}: path {name(p)!r} would be written outside the "
                "destination or through a link; refusing to restore anything from this manifest"
            )
        if node.type == "hardlink" and node.target not in files:
            raise UnsafePathError(
                f"backup {backup_id}: hard link {name(p)!r} points at "
                f"{name(node.target)!r}, which is not an earlier file of this backup; "
                "refusing to restore anything from this manifest"
            )
        seen.add(p)
        if node.type == "dir":
            dirs.add(p)
        elif node.type == "file":
            files.add(p)


def _prepare_destination(dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir() or dest.is_symlink():
            raise RepositoryError(f"restore destination {dest} exists and is not a folder")
        if any(dest.iterdir()):
            raise RepositoryError(
                f"restore destination {dest} is not empty; choose a new or empty folder"
            )
    dest.mkdir(parents=True, exist_ok=True)


@dataclass(slots=True)
class XattrFailures:
    """Extended attributes that could not be set (a file system without support, a
    ``security.*`` name needing privileges): counted, reported once, never fatal."""

    count: int = 0
    first: str = ""


def _set_xattrs(path: bytes, node: Node, failures: XattrFailures) -> None:
    for name, value in node.xattrs.items():
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as exc:
            failures.count += 1
            if not failures.first:
                failures.first = f"{name} ({exc.strerror})"


def _set_meta(
    path: bytes, node: Node, *, link: bool = False, xattrs: XattrFailures | None = None
) -> None:
    if os.geteuid() == 0:
        with contextlib.suppress(PermissionError):
            os.lchown(path, node.uid, node.gid)
    if xattrs is not None and node.xattrs:
        # after chown (which drops security.capability), before chmod (a read-only mode
        # would refuse an unprivileged user's user.* attributes)
        _set_xattrs(path, node, xattrs)
    if not link:
        os.chmod(path, node.mode)
    os.utime(path, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=not link)


def select(nodes: list[Node], include: list[str] | None) -> list[Node]:
    """Only the nodes at or under the ``include`` paths, plus the folders above them."""
    if not include:
        return nodes
    wanted = [os.fsencode(p.strip("/")) for p in include]
    keep: set[bytes] = set()
    for node in nodes:
        if any(node.path == w or node.path.startswith(w + b"/") for w in wanted):
            keep.add(node.path)
            parts = node.path.split(b"/")
            keep.update(b"/".join(parts[:i]) for i in range(1, len(parts)))
    return [n for n in nodes if n.path in keep]


def _resolve_links(nodes: list[Node]) -> list[Node]:
    """A hard link whose first name is not being restored becomes a plain copy."""
    files = {n.path for n in nodes if n.type == "file"}
    return [
        msgspec.structs.replace(n, type="file", target=b"")
        if n.type == "hardlink" and n.target not in files
        else n
        for n in nodes
    ]


def _create_layout(root: bytes, nodes: list[Node]) -> None:
    for node in nodes:
        path = os.path.join(root, node.path)
        if node.type == "dir":
            os.mkdir(path, 0o700)
        elif node.type == "file":
            # every file exists before its content arrives (all-zero chunks are never
            # written, and a damaged file still gets its size and metadata)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)


DamagedFiles = Literal["rename", "omit"]
DAMAGED_SUFFIX = b".damaged"


def _shown_as(name: Callable[[bytes], str], path: bytes, new: bytes) -> str:
    """The new name as messages show it: the stored name shown as usual (a secret file
    stays ``<secret>``), then the suffix."""
    return name(path) + os.fsdecode(new[len(path) :])


def _damaged_name(path: bytes, taken: set[bytes]) -> bytes:
    new, n = path + DAMAGED_SUFFIX, 1
    while new in taken:
        new, n = path + DAMAGED_SUFFIX + b".%d" % n, n + 1
    taken.add(new)
    return new


def _finish(
    root: bytes,
    nodes: list[Node],
    name: Callable[[bytes], str],
    damage: Damage,
    damaged: DamagedFiles,
) -> tuple[XattrFailures, list[str]]:
    """Sizes set (holes of sparse files stay holes), damaged files renamed or removed,
    then metadata for everything written; symlinks last, folders' times after their
    content. Returns the xattr failures and one line per damaged file."""
    xf = XattrFailures()
    lines: list[str] = []
    taken = {n.path for n in nodes}
    moved: dict[bytes, bytes | None] = {}  # damaged file → its new name (None: removed)
    for node in nodes:
        if node.type == "file":
            path = os.path.join(root, node.path)
            try:
                os.truncate(path, node.size)
            except OSError as exc:
                raise write_error(path, exc) from exc
            if path in damage.ranges:
                line = damage.describe(path, name(node.path))
                if damaged == "omit":
                    os.unlink(path)
                    moved[node.path] = None
                    lines.append(f"{line}; left out")
                    continue
                new = _damaged_name(node.path, taken)
                os.rename(path, os.path.join(root, new))
                moved[node.path] = new
                lines.append(f"{line}; written as {_shown_as(name, node.path, new)}")
                path = os.path.join(root, new)
            _set_meta(path, node, xattrs=xf)
    for node in nodes:
        if node.type == "hardlink":
            if node.target in moved:
                first = moved[node.target]
                if first is None:
                    lines.append(f"{name(node.path)}: hard link to a damaged file; left out")
                    continue
                link = _damaged_name(node.path, taken)
                os.link(os.path.join(root, first), os.path.join(root, link))
                shown = _shown_as(name, node.path, link)
                lines.append(f"{name(node.path)}: hard link to a damaged file; written as {shown}")
                continue
            os.link(os.path.join(root, node.target), os.path.join(root, node.path))
    for node in nodes:
        if node.type == "symlink":
            path = os.path.join(root, node.path)
            os.symlink(node.target, path)
            with contextlib.suppress(NotImplementedError, OSError):
                _set_meta(path, node, link=True, xattrs=xf)
    for node in reversed(nodes):
        if node.type == "dir":
            _set_meta(os.path.join(root, node.path), node, xattrs=xf)
    return xf, lines


async def restore_tree(
    repo: Repository,
    manifest: Manifest,
    destination: str | Path,
    *,
    include: list[str] | None = None,
    report: ProgressFn = no_progress,
    damaged: DamagedFiles = "rename",
) -> tuple[int, int]:
    """Restore a backup (or the ``include`` paths of it); return (files, bytes written).

    Damage never stops the restore: every intact file is written byte-identical, every
    file gets its metadata, and a file with damaged content is written as
    ``NAME.damaged`` (holding what could be read, zeros elsewhere) or, with ``damaged
    = "omit"``, left out; then PartialRestoreError lists them (nonzero exit)."""
    try:
        nodes = await repo.read_tree(manifest)
    except IntegrityError as exc:
        raise IntegrityError(
            f"backup {manifest.backup_id}: its file tree cannot be read, so nothing of it "
            f"can be restored from {repo.target.describe()} ({exc}); restore it from a "
            "replica, and run `mosaic-backup repo repair packs` then `repo repair snapshots`"
        ) from exc
    name = shown_names(manifest.source)
    check_paths(nodes, manifest.backup_id, name)
    nodes = _resolve_links(select(nodes, include))
    dest = Path(destination)
    await anyio.to_thread.run_sync(_prepare_destination, dest)
    root = os.fsencode(dest)
    files = [(os.path.join(root, n.path), n) for n in nodes if n.type == "file"]
    progress = Progress(bytes_total=sum(n.size for _, n in files), files_total=len(files))
    await anyio.to_thread.run_sync(_create_layout, root, nodes)

    async def report_every() -> None:
        while True:
            await anyio.sleep(0.25)
            await report(progress)

    async with task_group() as tg:
        tg.start_soon(report_every)
        damage = await fetch_and_write(repo, files, progress, name)
        tg.cancel_scope.cancel()
    xf, lines = await anyio.to_thread.run_sync(_finish, root, nodes, name, damage, damaged)
    if xf.count:
        log.warning(
            "restore to %s: %d extended attribute(s) could not be set, e.g. %s; "
            "the file system may not support them",
            dest,
            xf.count,
            xf.first,
        )
    progress.files_done = len(files)
    await report(progress)
    if lines:
        shown = "; ".join(lines[:3]) + (f"; and {len(lines) - 3} more" if len(lines) > 3 else "")
        what = (
            f"restore of backup {manifest.backup_id} into {dest}: {len(lines)} of "
            f"{len(files)} files damaged, every other file restored intact"
        )
        fix = (
            f"check with `mosaic-backup repo verify {manifest.backup_id} --read-data`; "
            "`repo repair packs` salvages what is left"
        )
        raise PartialRestoreError(f"{what}: {shown}; {fix}", lines, f"{what}; {fix}")
    return len(files), progress.bytes_done
