"""Restore of a backed-up tree into a destination folder.

Safety first: every path of the tree is checked before anything is written (no absolute
paths, no ``..``, every parent must be a directory of the same tree, so nothing can be
written through a symlink), the destination must be new or empty, files are created with
O_EXCL|O_NOFOLLOW, and symlinks are created last. Every blob is authenticated and its id
re-hashed, and each file's size is checked against the manifest.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import anyio.to_thread

from agent.progress import Progress, ProgressFn, no_progress
from shared.errors import IntegrityError, RepositoryError, UnsafePathError
from shared.repository.manifest import Manifest, Node
from shared.repository.repository import Repository


def check_paths(nodes: list[Node], backup_id: str) -> None:
    """Refuse the whole tree if any path could land outside the destination."""
    dirs: set[bytes] = set()
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
                f"backup {backup_id}: path {os.fsdecode(p)!r} would be written outside the "
                "destination or through a link; refusing to restore anything from this manifest"
            )
        seen.add(p)
        if node.type == "dir":
            dirs.add(p)


def _prepare_destination(dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir() or dest.is_symlink():
            raise RepositoryError(f"restore destination {dest} exists and is not a folder")
        if any(dest.iterdir()):
            raise RepositoryError(
                f"restore destination {dest} is not empty; choose a new or empty folder"
            )
    dest.mkdir(parents=True, exist_ok=True)


def _set_meta(path: bytes, node: Node, *, link: bool = False) -> None:
    if os.geteuid() == 0:
        with contextlib.suppress(PermissionError):
            os.lchown(path, node.uid, node.gid)
    if not link:
        os.chmod(path, node.mode)
    os.utime(path, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=not link)


async def restore_tree(
    repo: Repository,
    manifest: Manifest,
    destination: str | Path,
    *,
    report: ProgressFn = no_progress,
) -> tuple[int, int]:
    """Restore a whole backup; return (files, bytes written)."""
    nodes = await repo.read_tree(manifest)
    check_paths(nodes, manifest.backup_id)
    dest = Path(destination)
    await anyio.to_thread.run_sync(_prepare_destination, dest)
    root = os.fsencode(dest)
    files = [n for n in nodes if n.type == "file"]
    progress = Progress(bytes_total=sum(n.size for n in files), files_total=len(files))

    def full(node: Node) -> bytes:
        return os.path.join(root, node.path)

    for node in nodes:
        if node.type == "dir":
            await anyio.to_thread.run_sync(os.mkdir, full(node), 0o700)
    for node in files:
        path = full(node)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        written = 0
        with os.fdopen(fd, "wb") as f:
            for chunk_id in node.chunks:
                data = await repo.read_blob(chunk_id)
                await anyio.to_thread.run_sync(f.write, data)
                written += len(data)
                progress.bytes_done += len(data)
                await report(progress)
        if written != node.size:
            raise IntegrityError(
                f"backup {manifest.backup_id}: {os.fsdecode(node.path)} restored {written} "
                f"bytes, manifest says {node.size}"
            )
        await anyio.to_thread.run_sync(_set_meta, path, node)
        progress.files_done += 1
    for node in nodes:
        if node.type == "symlink":
            path = full(node)
            await anyio.to_thread.run_sync(os.symlink, node.target, path)
            with contextlib.suppress(NotImplementedError, OSError):
                _set_meta(path, node, link=True)
    for node in reversed(nodes):
        if node.type == "dir":
            await anyio.to_thread.run_sync(_set_meta, full(node), node)
    await report(progress)
    return len(files), progress.bytes_done
