"""Prune and garbage collection: forgotten backups' packs go, every other backup still
restores byte-identical, and nothing a running (or just-starting) backup uses is deleted."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from msgspec.structs import replace

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format import spec as fmt
from engine.format.manifest import Manifest
from engine.lease import lease, live_leases
from engine.maintenance.prune import (
    GcReport,
    collect_garbage,
    delete_packs,
    drop_old_segments,
    forget,
    plan_gc,
    write_kept_index,
)
from engine.progress import Progress
from engine.repository import Repository, WriteOptions
from engine.storage.s3 import S3Target
from shared.config.targets import S3TargetConfig
from shared.wire.sources import FilesSource
from tests.fixtures.prune_repo import PruneRepo, new_prune_repo
from tests.fixtures.s3 import s3_client
from tests.harness import snapshot

PACK_SIZE = 1 << 16  # below the smallest chunk: one chunk per pack, many packs
MARGIN = timedelta(seconds=0.1)


class Env(PruneRepo):
    def source(self, name: str, seed: int, files: int = 3, shared: bool = True) -> Path:
        root = self.tmp / name
        (root / "sub").mkdir(parents=True)
        rnd = random.Random(seed)
        for i in range(files):
            (root / "sub" / f"f{i}.bin").write_bytes(rnd.randbytes(300_000 + i * 1000))
        if shared:
            (root / "shared.bin").write_bytes(random.Random(99).randbytes(600_000))
        (root / "note.txt").write_text(f"source {name}\n")
        return root


@pytest.fixture
async def env(tmp_path: Path) -> Env:
    return await new_prune_repo(Env, tmp_path, PACK_SIZE)


async def _two_backups(env: Env) -> tuple[Path, Path]:
    a, b = env.source("a", 1), env.source("b", 2)
    await env.backup("b1", a)
    await env.backup("b2", b)
    return a, b


async def _gc(env: Env, forgotten: tuple[str, ...] = ()) -> GcReport:
    repo = await env.open()
    await forget(repo, forgotten)
    return await collect_garbage(repo, margin=MARGIN, forgotten=forgotten)


def _pack_files(env: Env) -> set[str]:
    # not the .tmp-* of an upload in flight: it becomes a pack under another name
    data = (env.repo_dir / "data").rglob("*")
    return {p.name for p in data if p.is_file() and not p.name.startswith(".tmp-")}


async def test_forget_frees_unique_packs_and_the_rest_restores(env: Env) -> None:
    _, b = await _two_backups(env)
    before = env.data_bytes()
    rc, text = env.cli("prune", "--forget", "b1", "--margin", "0.1")
    assert rc == 0, text
    assert "removed 1 backup" in text and "named by --forget" in text
    # a's unique files are gone (a pack shared with a chunk b2 still uses is repacked
    # once unused bytes pass --max-unused, 5 %)
    assert env.data_bytes() < before - 290_000, text
    assert not (env.repo_dir / "manifests" / "b1").exists()
    await env.assert_restores("b2", b)
    env.verify_clean()
    # nothing left to collect: a second run deletes nothing
    rep = await _gc(env)
    assert rep.deleted == [] and rep.deferred is None


async def test_shared_chunks_survive(env: Env) -> None:
    _, b = await _two_backups(env)
    rep = await _gc(env, ("b1",))
    assert rep.bytes_freed > 0 and rep.deferred is None
    repo = await env.open()
    shared = next(
        n for n in await repo.read_tree(await repo.load_manifest("b2")) if n.path == b"shared.bin"
    )
    for chunk in shared.chunks:
        entry = repo.index[chunk]
        assert (env.repo_dir / fmt.pack_key(entry.pack_id)).exists()
    await env.assert_restores("b2", b)


async def test_dry_run_changes_nothing_and_says_why(env: Env) -> None:
    await _two_backups(env)
    before = snapshot(env.repo_dir)
    rc, text = env.cli("prune", "--forget", "b1", "--dry-run")
    assert rc == 0, text
    assert "would remove 1 backup" in text and "named by --forget" in text
    assert "would be deleted" in text and "KiB freed" in text
    rc, text = env.cli("prune", "--retention", "daily", "--dry-run")
    assert rc == 0 and "would remove 0 backups" in text and "always kept" in text, text
    rc, text = env.cli("prune", "--keep-last", "1", "--dry-run")
    assert rc == 0 and "would remove 1 backup" in text and "older than the newest 1" in text
    assert snapshot(env.repo_dir) == before


async def test_a_live_lease_defers_gc(env: Env) -> None:
    _, b = await _two_backups(env)
    repo = await env.open()
    await forget(repo, ["b1"])
    before = {k: v for k, v in snapshot(env.repo_dir).items() if not k.startswith("locks")}
    async with lease(repo.target, repo.keys, holder="x@h", purpose="backup sim"):
        rep = await collect_garbage(repo, margin=MARGIN)
        assert rep.deleted == [] and rep.deferred and "backup sim" in rep.deferred
    after = {k: v for k, v in snapshot(env.repo_dir).items() if not k.startswith("locks")}
    assert after == before
    rep = await _gc(env)
    assert rep.deferred is None and rep.bytes_freed > 0
    await env.assert_restores("b2", b)


async def test_gc_beside_a_running_backup(env: Env) -> None:
    """A real backup, held inside its lease (its last progress report waits), while GC
    runs: GC defers; once the backup is done GC collects and the backup restores."""
    _, b = await _two_backups(env)
    await forget(await env.open(), ["b1"])
    c = env.source("c", 3, files=40, shared=False)
    release = anyio.Event()
    inside = anyio.Event()
    result: list[Manifest] = []

    async def report(_: Progress) -> None:
        inside.set()
        await release.wait()

    async def run_backup() -> None:
        spec = BackupSpec(backup_id="b3", dataset="d", agent="a", source=FilesSource(path=str(c)))
        result.append(await backup_dataset(await env.open(), spec, report=report))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_backup)
            await inside.wait()
            packs = _pack_files(env)
            rep = await collect_garbage(await env.open(), margin=MARGIN)
            assert rep.deferred and "backup b3" in rep.deferred and rep.deleted == []
            assert packs <= _pack_files(env)
            release.set()
    assert result
    rep = await _gc(env)
    assert rep.deferred is None and rep.bytes_freed > 0
    await env.assert_restores("b3", c)
    await env.assert_restores("b2", b)
    env.verify_clean()


async def test_backup_starting_while_gc_holds_its_lease(env: Env) -> None:
    """The real race: a backup opened the repository (its index lists the garbage
    packs) before GC hid them. It re-reads the index under its lease, so it never
    depends on the garbage; GC still sees the new manifest appear and defers."""
    a, b = await _two_backups(env)
    await forget(await env.open(), ["b1"])
    stale = await env.open()  # loaded before GC runs: a's chunks look stored
    segments = len(list((env.repo_dir / "index").iterdir()))
    assert segments >= 2
    reports: list[GcReport] = []

    async def gc() -> None:
        reports.append(await collect_garbage(await env.open(), margin=timedelta(seconds=2)))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(gc)
            # the index swap is done (bounded by fail_after; no event to wait on)
            while len(list((env.repo_dir / "index").iterdir())) != 1:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            assert (await live_leases(stale.target, stale.keys))[0]  # GC's lease
            m3 = await env.backup("b3", a, repo=stale)
    # the backup re-read the index under its lease, so it never deduplicates against
    # packs GC has hidden: it uploads its own copy instead
    assert m3.summary.chunks_new > 0
    assert reports[0].deferred and "b3" in reports[0].deferred and reports[0].deleted == []
    await env.assert_restores("b3", a)
    rep = await _gc(env)  # now b3 references a's chunks: they stay
    assert rep.deferred is None
    await env.assert_restores("b3", a)
    await env.assert_restores("b2", b)
    env.verify_clean()


async def test_an_expired_lease_does_not_block_gc(env: Env) -> None:
    await _two_backups(env)
    repo = await env.open()
    ttl = timedelta(seconds=0.3)
    with anyio.CancelScope() as scope:  # a writer killed without releasing its lease
        async with lease(repo.target, repo.keys, holder="dead@h", purpose="backup x", ttl=ttl):
            key = next(iter([o.key async for o in repo.target.list(fmt.LOCKS_PREFIX)]))
            data = await repo.target.get(key)
            scope.cancel()
    await repo.target.put(key, data)
    await anyio.sleep(0.6)
    rep = await _gc(env, ("b1",))
    assert rep.deferred is None and rep.bytes_freed > 0
    assert not await repo.target.exists(key)


async def test_crash_between_steps_keeps_the_repository_consistent(env: Env) -> None:
    a, b = await _two_backups(env)
    saved_b1 = (env.repo_dir / "manifests" / "b1").read_bytes()
    repo = await env.open()
    await forget(repo, ["b1"])
    plan = await plan_gc(repo, now=datetime.now(UTC), margin=MARGIN)
    assert plan.garbage
    await write_kept_index(repo, plan)  # crash here: old and new segments both present
    await env.assert_restores("b2", b)
    env.verify_clean()
    await drop_old_segments(repo, plan)  # crash here: garbage packs unindexed, present
    await env.assert_restores("b2", b)
    env.verify_clean()
    # a late writer's manifest referencing the now unindexed packs is re-indexed
    (env.repo_dir / "manifests" / "b1").write_bytes(saved_b1)
    rep = await _gc(env)
    assert rep.deleted == [] and rep.plan.reindex
    await env.assert_restores("b1", a)
    # and without it, a later run deletes the orphans
    rep = await _gc(env, ("b1",))
    assert rep.bytes_freed > 0 and rep.deferred is None
    await env.assert_restores("b2", b)
    env.verify_clean()


async def test_delete_failure_of_a_locked_pack_is_reported_not_fatal(
    env: Env, s3_locked_bucket: S3TargetConfig
) -> None:
    """On a real Object-Lock bucket: the backups were written without retention (the
    target had no lock settings then), and one garbage pack was locked (GOVERNANCE, a
    day) behind the target's back; GC, with the lock now configured, deletes every
    other pack version by version and reports that one."""
    cfg = s3_locked_bucket
    unlocked = replace(cfg, object_lock_mode=None, object_lock_days=None)
    opts = WriteOptions(pack_size=PACK_SIZE)
    repo = await Repository.open(S3Target("vault", unlocked), env.key, create=True, options=opts)
    await env.backup("b1", env.source("a", 1), repo)
    await env.backup("b2", env.source("b", 2), repo)
    await repo.target.aclose()
    repo = await Repository.open(S3Target("vault", cfg), env.key, options=opts)
    await forget(repo, ["b1"])
    plan = await plan_gc(repo, now=datetime.now(UTC), margin=MARGIN)
    assert len(plan.garbage) > 1
    locked = plan.garbage[0].key
    raw = s3_client(cfg.endpoint_url or "")
    raw.put_object_retention(
        Bucket=cfg.bucket,
        Key=f"{cfg.prefix}/{locked}",
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(days=1)},
    )
    rep = GcReport(plan)
    await delete_packs(repo, plan, rep)
    assert [p.key for p, _ in rep.locked] == [locked] and "GOVERNANCE" in rep.locked[0][1]
    assert sorted(p.key for p in rep.deleted) == sorted(p.key for p in plan.garbage[1:])
    assert await repo.target.exists(locked)
    assert not any([await repo.target.exists(p.key) for p in rep.deleted])
    await repo.target.aclose()
