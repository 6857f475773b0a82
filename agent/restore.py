"""Restore of a backed-up tree into a destination folder.

Secret files (a files backup's ``secret`` globs, recorded in its manifest) are restored
like any other, but errors name them as ``conf/<secret>`` (agent.sources.files.shown).

Safety first: every path of the tree is checked before anything is written (no absolute
paths, no ``..``, every parent must be a directory of the same tree, so nothing can be
written through a symlink), the destination must be new or empty, files are created with
O_EXCL|O_NOFOLLOW, and symlinks are created last. Every blob is authenticated and its id
re-hashed, and each file's size is checked against the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import msgspec

from agent.fetch import fetch_and_write
from agent.progress import Progress, ProgressFn, no_progress
from agent.sources import after_restore
from agent.sources.files import shown_names
from shared.errors import IntegrityError, RepositoryError, UnsafePathError
from shared.repository.manifest import Manifest, Node
from shared.repository.repository import Repository
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
        elif node.type == "file" and not node.chunks:
            # empty files; the others are created by their first chunk's write
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)


def _finish(root: bytes, nodes: list[Node], name: Callable[[bytes], str]) -> XattrFailures:
    """Sizes checked, then metadata; symlinks last, folders' times after their content."""
    xf = XattrFailures()
    for node in nodes:
        if node.type == "file":
            path = os.path.join(root, node.path)
            size = os.lstat(path).st_size
            if size != node.size:
                raise IntegrityError(
                    f"{name(node.path)}: restored {size} bytes, manifest says {node.size}"
                )
            _set_meta(path, node, xattrs=xf)
    for node in nodes:
        if node.type == "hardlink":
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
    return xf


async def restore_tree(
    repo: Repository,
    manifest: Manifest,
    destination: str | Path,
    *,
    include: list[str] | None = None,
    report: ProgressFn = no_progress,
) -> tuple[int, int]:
    """Restore a backup (or the ``include`` paths of it); return (files, bytes written)."""
    nodes = await repo.read_tree(manifest)
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
        await fetch_and_write(repo, files, progress, name)
        tg.cancel_scope.cancel()
    xf = await anyio.to_thread.run_sync(_finish, root, nodes, name)
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
    return len(files), progress.bytes_done


async def restore_backup(
    repo: Repository,
    manifest: Manifest,
    destination: str | Path,
    *,
    include: list[str] | None = None,
    report: ProgressFn = no_progress,
) -> tuple[int, int]:
    """Restore the tree, then let the source make it usable (e.g. a PostgreSQL data
    directory from the base-backup tar). Returns (files, bytes written)."""
    result = await restore_tree(repo, manifest, destination, include=include, report=report)
    await anyio.to_thread.run_sync(
        lambda: after_restore(manifest.source, Path(destination), partial=bool(include))
    )
    return result
