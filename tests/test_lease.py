"""Leases: a running backup is visible to garbage collection, a crashed one expires by
itself, and nothing ever waits on a lease."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from agent.backup import BackupSpec, backup_dataset
from shared.errors import SourceError
from shared.repository.lease import lease, live_leases
from shared.repository.repository import Repository
from shared.sources import FilesSource
from shared.targets.local import LocalTarget
from tests.harness import make_tree


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
    await backup_dataset(repo, spec, report=report)  # type: ignore[arg-type]
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
