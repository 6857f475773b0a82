"""LVM, ZFS and btrfs snapshots around a files backup, always removed afterwards.

A files source with ``snapshot`` set is read from a snapshot taken for this one backup:

- LVM: ``lvcreate -s -n NAME -L SIZE VG/LV``, then ``mount -o ro /dev/VG/NAME
  MOUNT_POINT/NAME``; removed with ``umount`` and ``lvremove -f VG/NAME``.
- ZFS: ``zfs snapshot DATASET@NAME``, read from ``MOUNTPOINT/.zfs/snapshot/NAME`` (ZFS
  mounts it read-only on access); removed with ``zfs destroy DATASET@NAME``.
- btrfs: ``btrfs subvolume snapshot -r SUBVOLUME DIR/NAME`` (read-only);
  removed with ``btrfs subvolume delete DIR/NAME``.

The source path must lie inside the snapshotted volume; the backup reads the same
relative path inside the snapshot, and records paths as if read from the live source, so
a restore has the usual layout. NAME is ``mosaic-<backup id>``, unique per job, so a
leftover never blocks the next run.

Removal is guaranteed three ways: the snapshot is removed when the backup ends however it
ends (error, cancellation); if the agent dies first, a small state file
(``<state_dir>/snapshots/<agent>/NAME.json``, written *before* creating, updated after
each step, deleted after removal) lets :func:`cleanup_leftovers` remove it at the next
start; and a removal that fails keeps its state file, so the next start (or the next
snapshot backup of this agent, which may be the same job retried) tries again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread
import msgspec

from shared.errors import ConfigError, SourceError
from shared.wire.sources import BtrfsSnapshot, FilesSource, LvmSnapshot, Source, ZfsSnapshot

log = logging.getLogger(__name__)

Stage = Literal["creating", "created", "mounted"]
COMMAND_TIMEOUT_S = 600.0
PACKAGES = {
    "lvcreate": "lvm2",
    "lvremove": "lvm2",
    "mount": "mount",
    "umount": "mount",
    "zfs": "zfsutils-linux",
    "btrfs": "btrfs-progs",
}


class SnapshotState(msgspec.Struct, kw_only=True):
    """What cleanup needs, kept on disk while a snapshot may exist."""

    name: str
    stage: Stage = "creating"
    create: list[str]
    mount: list[str] | None = None
    mount_dir: str | None = None
    umount: list[str] | None = None
    remove: list[str]
    read_root: str = ""  # where the backup reads the source's tree


def snapshot_name(backup_id: str) -> str:
    """``mosaic-<backup id>`` with only characters LVM, ZFS and btrfs all accept."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", backup_id)[:80]
    if safe != backup_id:
        safe += "-" + hashlib.blake2b(backup_id.encode(), digest_size=4).hexdigest()
    return f"mosaic-{safe}"


def _inside(path: str, volume: str, what: str) -> str:
    """``path`` relative to ``volume``; an error when it is not inside."""
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(volume))
    if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        raise ConfigError(
            f"files source {path}: not inside the snapshotted {what} {volume}; "
            f"set the snapshot's volume to the one holding {path}"
        )
    return "" if rel == "." else rel


def plan(source: FilesSource, backup_id: str) -> SnapshotState:
    """The commands for this source's snapshot (may ask ``zfs`` for a mountpoint)."""
    snap = source.snapshot
    name = snapshot_name(backup_id)
    if isinstance(snap, LvmSnapshot):
        rel = _inside(source.path, snap.origin or source.path, "logical volume mounted at")
        vg, lv = snap.volume_group, snap.logical_volume
        mount_dir = os.path.join(snap.mount_point, name)
        return SnapshotState(
            name=name,
            create=["lvcreate", "-s", "-n", name, "-L", snap.size, f"{vg}/{lv}"],
            mount=["mount", "-o", "ro", f"/dev/{vg}/{name}", mount_dir],
            mount_dir=mount_dir,
            umount=["umount", mount_dir],
            remove=["lvremove", "-f", f"{vg}/{name}"],
            read_root=os.path.join(mount_dir, rel),
        )
    if isinstance(snap, ZfsSnapshot):
        mountpoint = (
            snap.mountpoint
            or _run(["zfs", "get", "-H", "-o", "value", "mountpoint", snap.dataset]).strip()
        )
        if not mountpoint.startswith("/"):
            raise ConfigError(
                f"ZFS dataset {snap.dataset} has mountpoint {mountpoint!r}, not a folder; "
                "mount it or set the snapshot's mountpoint"
            )
        rel = _inside(source.path, mountpoint, "ZFS dataset mounted at")
        tag = f"{snap.dataset}@{name}"
        return SnapshotState(
            name=name,
            create=["zfs", "snapshot", tag],
            remove=["zfs", "destroy", tag],
            read_root=os.path.join(mountpoint, ".zfs", "snapshot", name, rel),
        )
    if isinstance(snap, BtrfsSnapshot):
        rel = _inside(source.path, snap.subvolume, "btrfs subvolume")
        parent = snap.snapshot_dir or os.path.dirname(os.path.normpath(snap.subvolume))
        dest = os.path.join(parent, name)
        return SnapshotState(
            name=name,
            create=["btrfs", "subvolume", "snapshot", "-r", snap.subvolume, dest],
            remove=["btrfs", "subvolume", "delete", dest],
            read_root=os.path.join(dest, rel),
        )
    raise TypeError(f"no snapshot configured for {source.path}")


def _run(argv: list[str]) -> str:
    """Run one snapshot command; its failure names it with the tail of its stderr."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise SourceError(
            f"snapshot command {argv[0]} not found on PATH: install the "
            f"{PACKAGES.get(argv[0], argv[0])} package"
        ) from None
    except subprocess.TimeoutExpired as exc:
        raise SourceError(
            f"snapshot command `{' '.join(argv)}` did not finish in {COMMAND_TIMEOUT_S:.0f} s"
        ) from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-500:]
        raise SourceError(
            f"snapshot command `{' '.join(argv)}` exited with {done.returncode}: {tail}"
        )
    return done.stdout


def is_mounted(path: str) -> bool:
    """Whether something is mounted on ``path`` (per /proc/self/mounts, which also sees
    bind mounts that ``os.path.ismount`` misses)."""
    want = os.path.realpath(path)
    try:
        with open("/proc/self/mounts", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return os.path.ismount(path)
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 1:
            where = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[1])
            if os.fsdecode(where) == want:
                return True
    return False


def _state_dir(state_dir: str, agent: str) -> Path:
    return Path(state_dir) / "snapshots" / agent


def _save(folder: Path, state: SnapshotState) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = folder / f".{state.name}.tmp"
    tmp.write_bytes(msgspec.json.encode(state))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / f"{state.name}.json")


def take(state: SnapshotState, folder: Path) -> None:
    """Create (and mount) the snapshot, recording each step before the next one.

    On failure whatever was made is removed again before the error propagates."""
    _save(folder, state)
    try:
        _run(state.create)
        state.stage = "created"
        _save(folder, state)
        log.info("snapshot %s created", state.name)
        if state.mount is not None and state.mount_dir is not None:
            os.makedirs(state.mount_dir, mode=0o700, exist_ok=True)
            _run(state.mount)
            state.stage = "mounted"
            _save(folder, state)
            log.info("snapshot %s mounted read-only at %s", state.name, state.mount_dir)
    except BaseException:
        try:
            release(state, folder)
        except SourceError as exc:
            log.error("%s (the state file stays; the next agent start retries)", exc)
        raise


def release(state: SnapshotState, folder: Path) -> None:
    """Unmount and remove the snapshot, then forget it. Safe to repeat."""
    if state.stage == "mounted" and state.umount is not None:
        try:
            _run(state.umount)
        except SourceError:
            if state.mount_dir is not None and is_mounted(state.mount_dir):
                raise
            # not mounted any more (e.g. after a reboot): nothing to unmount
        state.stage = "created"
        _save(folder, state)
    if state.mount_dir is not None:
        with contextlib.suppress(OSError):
            os.rmdir(state.mount_dir)
    try:
        _run(state.remove)
    except SourceError:
        if state.stage != "creating":
            raise
        # the crash or failure came before the snapshot existed: nothing to remove
    (folder / f"{state.name}.json").unlink(missing_ok=True)
    log.info("snapshot %s removed", state.name)


def cleanup_leftovers(state_dir: str, agent: str) -> list[str]:
    """At agent start: remove every snapshot a previous run left behind; return their
    names. A snapshot that cannot be removed is logged and retried at the next start."""
    folder = _state_dir(state_dir, agent)
    if not folder.is_dir():
        return []
    removed: list[str] = []
    for path in sorted(folder.glob("*.json")):
        try:
            state = msgspec.json.decode(path.read_bytes(), type=SnapshotState)
        except (OSError, msgspec.DecodeError) as exc:
            log.error("snapshot state file %s is unreadable (%s); remove it by hand", path, exc)
            continue
        log.warning("snapshot %s was left behind by an earlier run: removing it", state.name)
        try:
            release(state, folder)
        except SourceError as exc:
            log.error("%s (the next agent start retries)", exc)
            continue
        removed.append(state.name)
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return removed


@asynccontextmanager
async def snapshot_root(
    source: Source, backup_id: str, *, state_dir: str | None, agent: str
) -> AsyncIterator[str | None]:
    """The folder to read ``source`` from: a fresh snapshot of it, removed on exit
    (also on error or cancellation), or None when the source has no snapshot."""
    if not isinstance(source, FilesSource) or source.snapshot is None:
        yield None
        return
    if state_dir is None:
        raise ConfigError(
            f"files source {source.path} asks for a snapshot, which needs the agent's "
            "state_dir; run it through an agent (agent.toml state_dir)"
        )
    folder = _state_dir(state_dir, agent)
    state = await anyio.to_thread.run_sync(plan, source, backup_id)
    # a removal that failed earlier is retried now, so a retried job (same name) can run
    await anyio.to_thread.run_sync(cleanup_leftovers, state_dir, agent)
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(take, state, folder)
    failed = True
    try:
        yield state.read_root
        failed = False
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(release, state, folder)
            except SourceError as exc:
                if not failed:
                    raise
                # the backup's own error is the one to report; this one is logged
                log.error("%s (the next agent start retries)", exc)
