"""Snapshots around a files backup: create, mount read-only, back up, always remove.

LVM, ZFS and btrfs need block devices this machine lacks, so the tools are stand-ins
(tests/standins/, listed in docs/testing.md, "Where a mock stands in") that log their
argv and emulate a volume with folders; ``mount`` is a real read-only bind mount."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from agent.runner import AgentRunner
from engine.backup.dataset import BackupSpec, backup_dataset
from engine.backup.snapshot import is_mounted, plan, take
from engine.format.manifest import Manifest
from engine.progress import Progress
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import LocalTarget
from mosaic.compare import tree_differences
from shared.config.agent import AgentConfig
from shared.config.targets import LocalTargetConfig
from shared.errors import ConfigError, SourceError
from shared.wire.sources import BtrfsSnapshot, FilesSource, LvmSnapshot, ZfsSnapshot
from tests.harness import make_tree, unique

STANDINS = Path(__file__).parent / "standins"


class Standins:
    def __init__(self, root: Path) -> None:
        self.root = root

    def calls(self) -> list[list[str]]:
        log = self.root / "calls.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Standins:
    root = tmp_path / "standin"
    root.mkdir()
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MOSAIC_STANDIN_ROOT", str(root))
    monkeypatch.setenv("MOSAIC_STANDIN_PYTHON", sys.executable)
    monkeypatch.delenv("MOSAIC_STANDIN_FAIL", raising=False)
    return Standins(root)


def _volume(standins: Standins, tmp_path: Path) -> tuple[Path, Path]:
    """A live tree and the LVM volume that holds it (its state when the snapshot is taken)."""
    live = tmp_path / "live"
    make_tree(live / "app", big_mib=1)
    volume = standins.root / "lvm" / "vg0" / "data"
    volume.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(live), str(volume)], check=True)
    return live, volume


def _lvm_source(tmp_path: Path, live: Path) -> FilesSource:
    snap = LvmSnapshot(
        volume_group="vg0",
        logical_volume="data",
        size="2G",
        mount_point=str(tmp_path / "snapmnt"),
        origin=str(live),
    )
    return FilesSource(path=str(live / "app"), snapshot=snap)


async def _backup(
    tmp_path: Path, source: FilesSource, report: object = None, backup_id: str = "b1"
) -> tuple[Repository, Manifest]:
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
    spec = BackupSpec(
        backup_id=backup_id,
        dataset="d",
        agent="a",
        source=source,
        state_dir=str(tmp_path / "state"),
    )
    if report is None:
        return repo, await backup_dataset(repo, spec)
    return repo, await backup_dataset(repo, spec, report=report)  # type: ignore[arg-type]


def _state_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "state").rglob("*.json"))


async def test_lvm_order_read_only_and_restored_bytes(tmp_path: Path, standins: Standins) -> None:
    live, volume = _volume(standins, tmp_path)
    # the live tree moves on after the snapshot: the backup must hold the snapshot's state
    (live / "app" / "a" / "hello.txt").write_text("changed after the snapshot\n")
    (live / "app" / "new-file.txt").write_text("new\n")
    mount_dir = tmp_path / "snapmnt" / "mosaic-b1"
    seen: list[tuple[int, bool, bool]] = []

    async def report(_: Progress) -> None:
        try:
            (mount_dir / "probe").write_text("x")
            writable = True
        except OSError:
            writable = False
        seen.append((len(standins.calls()), is_mounted(str(mount_dir)), writable))

    repo, manifest = await _backup(tmp_path, _lvm_source(tmp_path, live), report)

    assert standins.calls() == [
        ["lvcreate", "-s", "-n", "mosaic-b1", "-L", "2G", "vg0/data"],
        ["mount", "-o", "ro", "/dev/vg0/mosaic-b1", str(mount_dir)],
        ["umount", str(mount_dir)],
        ["lvremove", "-f", "vg0/mosaic-b1"],
    ]
    # while the backup read, exactly create + mount had run, and the mount was read-only
    assert seen and all(s == (2, True, False) for s in seen)
    assert not mount_dir.exists() and not (volume.parent / "mosaic-b1").exists()
    assert _state_files(tmp_path) == []
    assert manifest.source.path == str(live / "app")  # recorded as the live source

    dest = tmp_path / "restored"
    await restore_tree(repo, manifest, dest)
    assert tree_differences(volume / "app", dest) == []
    assert not (dest / "new-file.txt").exists()


async def test_zfs_and_btrfs_snapshots_are_read_then_removed(
    tmp_path: Path, standins: Standins
) -> None:
    live = make_tree(tmp_path / "live", big_mib=1)
    zfs_state = standins.root / "zfs" / "tank%data"
    zfs_state.mkdir(parents=True)
    (zfs_state / "mountpoint").write_text(str(live))
    zfs = FilesSource(path=str(live / "a"), snapshot=ZfsSnapshot(dataset="tank/data"))
    repo, m1 = await _backup(tmp_path, zfs, backup_id="z1")
    assert standins.calls() == [
        ["zfs", "get", "-H", "-o", "value", "mountpoint", "tank/data"],
        ["zfs", "snapshot", "tank/data@mosaic-z1"],
        ["zfs", "destroy", "tank/data@mosaic-z1"],
    ]
    assert not (live / ".zfs").exists()

    btrfs = FilesSource(path=str(live), snapshot=BtrfsSnapshot(subvolume=str(live)))
    repo, m2 = await _backup(tmp_path, btrfs, backup_id="r1")
    snap_path = str(tmp_path / "mosaic-r1")
    assert standins.calls()[3:] == [
        ["btrfs", "subvolume", "snapshot", "-r", str(live), snap_path],
        ["btrfs", "subvolume", "delete", snap_path],
    ]
    assert not os.path.exists(snap_path) and _state_files(tmp_path) == []

    for manifest, src in ((m1, live / "a"), (m2, live)):
        dest = tmp_path / f"out-{manifest.backup_id}"
        await restore_tree(repo, manifest, dest)
        assert tree_differences(src, dest) == []


async def test_failure_in_the_middle_of_the_backup_still_removes(
    tmp_path: Path, standins: Standins
) -> None:
    live, volume = _volume(standins, tmp_path)

    async def report(_: Progress) -> None:
        raise SourceError("simulated failure while reading")

    with pytest.raises(SourceError, match="simulated failure"):
        await _backup(tmp_path, _lvm_source(tmp_path, live), report)
    assert [c[0] for c in standins.calls()] == ["lvcreate", "mount", "umount", "lvremove"]
    assert not (tmp_path / "snapmnt" / "mosaic-b1").exists()
    assert not (volume.parent / "mosaic-b1").exists()
    assert _state_files(tmp_path) == []
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32))
    assert not await repo.has_manifest("b1")  # a failed backup is never recorded


async def test_failing_tools_name_the_command_and_leave_a_retry(
    tmp_path: Path, standins: Standins, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, volume = _volume(standins, tmp_path)
    source = _lvm_source(tmp_path, live)
    outside = FilesSource(path=str(tmp_path / "elsewhere"), snapshot=source.snapshot)
    with pytest.raises(ConfigError, match=r"elsewhere: not inside the snapshotted logical"):
        await _backup(tmp_path, outside)
    assert standins.calls() == []  # refused before anything was created
    monkeypatch.setenv("MOSAIC_STANDIN_FAIL", "lvcreate")
    with pytest.raises(SourceError, match=r"`lvcreate -s .*` exited with 5: .*injected failure"):
        await _backup(tmp_path, source)
    assert [c[0] for c in standins.calls()] == ["lvcreate", "lvremove"]  # nothing to remove
    assert _state_files(tmp_path) == []

    # the backup succeeds but removal fails: the job fails, the state file stays ...
    monkeypatch.setenv("MOSAIC_STANDIN_FAIL", "lvremove")
    with pytest.raises(SourceError, match=r"`lvremove -f vg0/mosaic-b2` exited with 5"):
        await _backup(tmp_path, source, backup_id="b2")
    assert [p.name for p in _state_files(tmp_path)] == ["mosaic-b2.json"]
    assert not is_mounted(str(tmp_path / "snapmnt" / "mosaic-b2"))
    # ... and the retried job (same backup id, same snapshot name) removes it, then runs
    monkeypatch.delenv("MOSAIC_STANDIN_FAIL")
    before = len(standins.calls())
    await _backup(tmp_path, source, backup_id="b2")
    retried = [c[0] for c in standins.calls()[before:]]
    assert retried == ["lvremove", "lvcreate", "mount", "umount", "lvremove"]
    assert not (volume.parent / "mosaic-b2").exists() and _state_files(tmp_path) == []


async def test_a_crashed_agents_snapshot_is_removed_at_its_next_start(
    tmp_path: Path, standins: Standins, nats_url: str
) -> None:
    live, volume = _volume(standins, tmp_path)
    name = unique("agent")
    state_dir = tmp_path / "state"
    # what a backup does before it reads; then the agent "dies" (no cleanup runs)
    state = plan(_lvm_source(tmp_path, live), "crashed-1")
    take(state, state_dir / "snapshots" / name)
    mount_dir = tmp_path / "snapmnt" / "mosaic-crashed-1"
    try:
        assert is_mounted(str(mount_dir))
        assert len(list((state_dir / "snapshots" / name).glob("*.json"))) == 1

        cfg = AgentConfig(
            name=name,
            nats_url=nats_url,
            key_file=str(tmp_path / "key"),
            targets={"t": LocalTargetConfig(path=str(tmp_path / "repo"))},
            state_dir=str(state_dir),
        )
        runner = AgentRunner(cfg, bytes(32))
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)  # ready: leftovers are gone before any job runs
            assert [c[0] for c in standins.calls()][-2:] == ["umount", "lvremove"]
            assert standins.calls()[-1] == ["lvremove", "-f", "vg0/mosaic-crashed-1"]
            assert not is_mounted(str(mount_dir)) and not mount_dir.exists()
            assert not (volume.parent / "mosaic-crashed-1").exists()
            assert list(state_dir.rglob("*.json")) == []
            tg.cancel_scope.cancel()
        await runner.aclose()
    finally:
        if is_mounted(str(mount_dir)):
            subprocess.run(["umount", str(mount_dir)], check=False)
        shutil.rmtree(volume.parent / "mosaic-crashed-1", ignore_errors=True)
