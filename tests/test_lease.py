"""Leases: a running backup is visible to garbage collection, a crashed one expires by
itself, and nothing ever waits on a lease."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec
import pytest

from engine import lease as lease_module
from engine.backup.dataset import BackupSpec, backup_dataset
from engine.keys.files import create_key_file, load_key_file
from engine.lease import LeaseInfo, lease, live_leases, liveness, read_leases
from engine.repository import Repository
from engine.storage.local import LocalTarget
from shared.config.targets import LocalTargetConfig
from shared.errors import SourceError
from shared.wire.sources import FilesSource
from tests.harness import REPO_ROOT, agent_toml, cli, make_tree


async def _repo(tmp_path: Path) -> Repository:
    return await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)


async def test_lease_is_live_while_held_and_gone_after(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    async with lease(repo.target, repo.keys, holder="a@h", purpose="backup x") as info:
        live, dead = await live_leases(repo.target, repo.keys)
        assert [x.lease_id for x in live] == [info.lease_id] and dead == []
    assert await live_leases(repo.target, repo.keys) == ([], [])


async def test_lease_is_renewed_while_held(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    ttl = timedelta(seconds=0.6)
    async with lease(repo.target, repo.keys, holder="a@h", purpose="p", ttl=ttl) as info:
        await anyio.sleep(1.0)
        live, _ = await live_leases(repo.target, repo.keys)
        assert live and live[0].expires > info.expires


async def test_crashed_holders_lease_expires_by_itself(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    ttl = timedelta(minutes=15)
    with anyio.CancelScope() as scope:  # the holder dies without renewing
        async with lease(repo.target, repo.keys, holder="a@h", purpose="p", ttl=ttl):
            # simulate a kill -9: put the lease back after the context's cleanup
            keys = [o.key async for o in repo.target.list("locks/")]
            data = await repo.target.get(keys[0])
            scope.cancel()
    await repo.target.put(keys[0], data)
    live, dead = await live_leases(repo.target, repo.keys)
    assert len(live) == 1
    later = datetime.now(UTC) + ttl + timedelta(seconds=1)
    live, dead = await live_leases(repo.target, repo.keys, now=later)
    assert live == [] and dead == keys


async def test_backup_holds_a_lease_and_releases_it_even_on_failure(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    src = make_tree(tmp_path / "src", big_mib=1)
    seen: list[int] = []

    async def report(_: object) -> None:
        seen.append(len((await live_leases(repo.target, repo.keys))[0]))

    spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    await backup_dataset(repo, spec, report=report)
    assert seen and all(n == 1 for n in seen)
    assert await live_leases(repo.target, repo.keys) == ([], [])

    bad = BackupSpec(
        backup_id="b2", dataset="d", agent="a", source=FilesSource(path=str(tmp_path / "missing"))
    )
    with pytest.raises(SourceError):
        await backup_dataset(repo, bad)
    assert await live_leases(repo.target, repo.keys) == ([], [])


async def test_a_stale_lease_never_blocks_a_backup(tmp_path: Path) -> None:
    repo = await _repo(tmp_path)
    await repo.target.put("locks/stale", b"garbage from a crashed writer")
    src = make_tree(tmp_path / "src", big_mib=1)
    spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    m = await backup_dataset(repo, spec)
    assert m.summary.files == 7
    assert (await live_leases(repo.target, repo.keys))[1] == ["locks/stale"]


# --- liveness, `repo locks`, and GC past a dead holder (issue 16) -------------------

_HOLD = """
import sys, anyio
from engine.lease import lease
from engine.repository import Repository
from engine.storage.local import LocalTarget

async def main() -> None:
    repo = await Repository.open(LocalTarget("t", sys.argv[1]), bytes.fromhex(sys.argv[2]))
    async with lease(repo.target, repo.keys, holder="w@h", purpose="backup killed"):
        print("held", flush=True)
        await anyio.sleep(3600)

anyio.run(main)
"""


@dataclass
class Locks:
    repo: Repository
    config: Path


@pytest.fixture
async def locks(tmp_path: Path) -> Locks:
    key_file = tmp_path / "repo.key"
    key = create_key_file(key_file)
    repo_dir = tmp_path / "repo"
    repo = await Repository.open(LocalTarget("t", repo_dir), key, create=True)
    config = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=key_file,
        targets={"t": LocalTargetConfig(path=str(repo_dir))},
    )
    return Locks(repo, config)


def _killed_writer(repo: Repository, key: bytes) -> int:
    """A real process that takes a lease and is SIGKILLed holding it; returns its pid."""
    root = str(repo.target.root)  # type: ignore[attr-defined]
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD, root, key.hex()],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        proc.kill()
        proc.wait()
        return proc.pid


async def _cli(*args: str) -> tuple[int, str]:
    proc = await anyio.to_thread.run_sync(lambda: cli("repo", *args))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout + proc.stderr


def _line(text: str, word: str) -> str:
    return next(line for line in text.splitlines() if word in line)


def test_liveness_is_dead_only_when_provably_gone() -> None:
    now = datetime.now(UTC)
    me = lease_module._host_identity()
    base = LeaseInfo(lease_id="x", holder="h", purpose="p", started=now, expires=now)
    assert liveness(base)[0] == "unknown"  # an old lease that names no process
    ours = msgspec.structs.replace(
        base,
        host=me[0],
        machine_id=me[1],
        boot_id=me[2],
        pid_ns=me[3],
        pid=os.getpid(),
        pid_start=lease_module._pid_start(os.getpid()) or 0,
    )
    assert liveness(ours)[0] == "alive"
    reused = msgspec.structs.replace(ours, pid_start=ours.pid_start + 1)
    assert liveness(reused) == (
        "dead",
        f"pid {os.getpid()} is now another process (different start time)",
    )
    elsewhere = msgspec.structs.replace(ours, host="other-host", pid=999_999)
    assert liveness(elsewhere)[0] == "unknown"
    rebooted = msgspec.structs.replace(ours, boot_id="another-boot", pid=999_999)
    assert liveness(rebooted)[0] == "unknown"


async def test_repo_locks_shows_a_killed_holder_dead_and_clears_only_it(locks: Locks) -> None:
    key = load_key_file(str(locks.config.parent / "repo.key"), None)
    pid = _killed_writer(locks.repo, key)
    async with lease(locks.repo.target, locks.repo.keys, holder="l@h", purpose="backup live"):
        rc, text = await _cli("locks", "--config", str(locks.config))
        assert rc == 0, text
        assert f"dead: pid {pid} is not running on this host" in _line(text, "backup killed")
        assert "alive" in _line(text, "backup live") and "1 alive, 1 dead" in text, text
        rc, text = await _cli("locks", "--clear-dead", "--config", str(locks.config))
        assert rc == 0 and "cleared 1 dead leases" in text, text
        found, _ = await read_leases(locks.repo.target, locks.repo.keys)
        assert [r.info.purpose for r in found] == ["backup live"]


async def test_gc_treats_a_dead_holders_lease_as_gone(locks: Locks) -> None:
    key = load_key_file(str(locks.config.parent / "repo.key"), None)
    pid = _killed_writer(locks.repo, key)
    rc, text = await _cli(
        "prune", "--keep-last", "1", "--margin", "0.1", "--config", str(locks.config)
    )
    assert rc == 0, text
    assert "lease of backup killed by w@h" in text and f"pid {pid} is not running" in text
    assert "treated as gone" in text and "running since" not in text and "deferred" not in text
    assert (await read_leases(locks.repo.target, locks.repo.keys))[0] == []
