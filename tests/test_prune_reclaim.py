"""Prune reclaims everything (issue 16): duplicate packs of a killed first backup or of
two writers that did not see each other are deleted, half-used packs are repacked down
to ``--max-unused``, unfinished uploads older than the lease ttl go, a damaged tree in
one backup holds GC back without blocking the forgetting of others — and after every
step the repository verifies clean and restores byte-identical."""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.backup.dataset import backup_tree
from engine.format import spec as fmt
from engine.maintenance.prune import (
    GcReport,
    collect_garbage,
    drop_old_segments,
    forget,
    plan_gc,
    repack,
    write_kept_index,
)
from engine.repository import Repository
from engine.storage.open import open_target
from shared.config.targets import S3TargetConfig, SftpTargetConfig
from shared.wire.sources import FilesSource
from tests.fixtures.prune_repo import PruneRepo, new_prune_repo
from tests.fixtures.s3 import s3_client

PACK_SIZE = 1 << 20  # a few 300 KB chunks per pack: packs can be partly used
MARGIN = timedelta(seconds=0.1)


class Env(PruneRepo):
    def source(self, name: str, seeds: range) -> Path:
        """Files of ~300 KB (one chunk each) whose content depends only on the seed."""
        root = self.tmp / name
        root.mkdir()
        for s in seeds:
            (root / f"f{s}.bin").write_bytes(random.Random(s).randbytes(300_000 + s))
        return root


@pytest.fixture
async def env(tmp_path: Path) -> Env:
    return await new_prune_repo(Env, tmp_path, PACK_SIZE)


def figures(what: str, before: int, after: int) -> None:
    print(f"\n{what}: {before:,} bytes before, {after:,} after ({before - after:,} reclaimed)")


async def settled(env: Env) -> None:
    """A second look finds nothing left to reclaim, even at --max-unused 0."""
    plan = await plan_gc(await env.open(), now=datetime.now(UTC), margin=MARGIN, max_unused=0)
    assert plan.garbage == [] and plan.repack == [] and plan.unused_kept == 0


async def test_duplicates_of_a_killed_first_backup_are_reclaimed(env: Env) -> None:
    src = env.source("src", range(12))
    # The killed first backup: packs uploaded, the index checkpoint and the manifest
    # never written (as if SIGKILLed before its commit), the last pack still open.
    killed = await env.open(index_every=1_000_000)
    await backup_tree(killed, FilesSource(path=str(src)))
    killed_bytes = env.data_bytes()
    assert killed_bytes > 2_000_000 and not (env.repo_dir / "index").exists()
    await env.backup("b1", src)  # the retry stores everything again
    before = env.data_bytes()
    rc, text = env.cli("prune", "--keep-last", "1", "--margin", "0.1")
    assert rc == 0, text
    after = env.data_bytes()
    figures("killed first backup", before, after)
    assert "reclaimed" in text and f"{before - after:,} bytes" in text, text
    # what stays is one copy, within --max-unused's default 5 % (plus pack headers)
    assert after <= (before - killed_bytes) * 1.06, text
    env.verify_clean()
    await env.assert_restores("b1", src)


async def test_two_writers_that_did_not_see_each_other_are_deduplicated(env: Env) -> None:
    src = env.source("src", range(10))
    r1, r2 = await env.open(), await env.open()

    async def as_opened() -> None:  # r2 read the index before r1 committed, and never again
        return None

    r2.reload_index = as_opened  # type: ignore[method-assign]
    await env.backup("b1", src, repo=r1)
    await env.backup("b2", src, repo=r2)
    before = env.data_bytes()
    rep = await collect_garbage(await env.open(), margin=MARGIN)
    after = env.data_bytes()
    figures("two concurrent writers", before, after)
    assert rep.deferred is None and rep.deleted and rep.bytes_freed == before - after
    assert after <= before / 2 * 1.06
    await settled(env)
    env.verify_clean()
    await env.assert_restores("b1", src)
    await env.assert_restores("b2", src)


async def test_half_used_packs_are_repacked_down_to_max_unused(env: Env) -> None:
    old = env.source("old", range(9))
    new = env.source("new", range(5, 14))
    await env.backup("b1", old)
    await env.backup("b2", new)
    repo = await env.open()
    await forget(repo, ["b1"])
    never = await plan_gc(repo, now=datetime.now(UTC), margin=MARGIN, max_unused=None)
    assert never.repack == [] and never.unused_kept > 0  # unlimited: only delete
    plan = await plan_gc(repo, now=datetime.now(UTC), margin=MARGIN, max_unused=0)
    assert plan.repack, "a pack holding old and new files is partly used"
    before = env.data_bytes()
    rc, text = env.cli("prune", "--keep-last", "1", "--dry-run", "--max-unused", "0%")
    assert rc == 0 and "would be repacked" in text, text
    assert env.data_bytes() == before
    rep = await collect_garbage(await env.open(), margin=MARGIN, max_unused=0)
    after = env.data_bytes()
    figures("forgotten backup, repacked at --max-unused 0", before, after)
    assert rep.repacked and rep.new_packs and rep.bytes_freed == before - after > 0
    await settled(env)
    env.verify_clean()
    await env.assert_restores("b2", new)
    rc, text = env.cli("prune", "--keep-last", "1", "--max-unused", "200")
    assert rc == 2 and "percentage from 0 to 100" in text, text


async def test_a_repack_killed_at_any_step_leaves_a_valid_repository(env: Env) -> None:
    old = env.source("old", range(9))
    new = env.source("new", range(5, 14))
    await env.backup("b1", old)
    await env.backup("b2", new)
    repo = await env.open()
    await forget(repo, ["b1"])
    plan = await plan_gc(repo, now=datetime.now(UTC), margin=MARGIN, max_unused=0)
    rep = GcReport(plan)
    await repack(repo, plan, rep)  # killed here: new packs uploaded, not indexed
    assert rep.new_packs
    env.verify_clean()
    await env.assert_restores("b2", new)
    await write_kept_index(repo, plan, rep)  # killed here: old and new both indexed
    env.verify_clean()
    await env.assert_restores("b2", new)
    await drop_old_segments(repo, plan)  # killed here: repacked packs unindexed
    env.verify_clean()
    await env.assert_restores("b2", new)
    final = await collect_garbage(await env.open(), margin=MARGIN, max_unused=0)
    assert final.deferred is None and final.deleted
    await settled(env)
    env.verify_clean()
    await env.assert_restores("b2", new)


async def test_unfinished_uploads_older_than_the_ttl_go_younger_ones_stay(env: Env) -> None:
    src = env.source("src", range(3))
    await env.backup("b1", src)
    folder = env.repo_dir / "data" / "ab"
    folder.mkdir(exist_ok=True)
    stale, young = folder / ".tmp-killed", env.repo_dir / "manifests" / ".tmp-running"
    stale.write_bytes(b"x" * 5000)
    young.write_bytes(b"y" * 10)
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    rc, text = env.cli("prune", "--keep-last", "1", "--dry-run")
    assert rc == 0 and "would remove 1 unfinished upload" in text, text
    assert stale.exists()
    rc, text = env.cli("prune", "--keep-last", "1", "--margin", "0.1")
    assert rc == 0 and "removed 1 unfinished upload" in text, text
    assert not stale.exists() and young.exists()
    env.verify_clean()
    await env.assert_restores("b1", src)


async def test_incomplete_s3_multipart_uploads_are_aborted_after_the_ttl(
    s3_bucket: S3TargetConfig, s3_server: str, tmp_path: Path
) -> None:
    target = open_target("s", s3_bucket)
    repo = await Repository.open(target, bytes(32), create=True)
    client = s3_client(s3_server)
    key = f"{s3_bucket.prefix.strip('/')}/data/00/killed"
    client.create_multipart_upload(Bucket=s3_bucket.bucket, Key=key)

    def uploads() -> list[str]:
        found = client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", [])
        return [u["Key"] for u in found]

    # moto reports every upload as initiated in 2010, so only the "older than the ttl"
    # half can be shown on S3 here; the "younger stays" half is the local test above.
    assert uploads() == [key]
    rep = await collect_garbage(repo, margin=MARGIN)
    assert [t.key for t in rep.temporaries_removed] == ["data/00/killed"]
    assert uploads() == []
    await target.aclose()


async def test_a_damaged_tree_holds_gc_back_but_others_are_still_forgotten(env: Env) -> None:
    a1, a2 = env.source("a1", range(3)), env.source("a2", range(3, 6))
    broken = env.source("broken", range(6, 9))
    await env.backup("a-1", a1, dataset="a")
    await env.backup("a-2", a2, dataset="a")
    await env.backup("x-1", broken, dataset="x")
    repo = await env.open()
    tree_blob = (await repo.load_manifest("x-1")).tree[0]
    entry = repo.index[tree_blob]
    pack = env.repo_dir / fmt.pack_key(entry.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[entry.offset + entry.length // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    packs_before = sorted(p.name for p in (env.repo_dir / "data").rglob("*") if p.is_file())
    rc, text = env.cli("prune", "--keep-last", "1", "--margin", "0.1")
    assert rc == 0, text
    assert not (env.repo_dir / "manifests" / "a-1").exists()  # forgetting still works
    assert "backup x-1: tree unreadable, its chunks are kept; run `mosaic-backup repo " in text
    assert "repair snapshots`" in text and "garbage collection held back" in text, text
    packs_after = sorted(p.name for p in (env.repo_dir / "data").rglob("*") if p.is_file())
    assert packs_after == packs_before  # nothing deleted while x-1's chunks are unknown
    await env.assert_restores("a-2", a2)


async def test_sftp_unfinished_uploads_older_than_the_ttl_go(
    sftp_target_cfg: SftpTargetConfig,
) -> None:
    target = open_target("offsite", sftp_target_cfg)
    repo = await Repository.open(target, bytes(32), create=True)
    await target.put("data/ab/placeholder", b"made by the sftp user, so it may delete here")
    folder = Path(sftp_target_cfg.path) / "data" / "ab"  # the server runs on this host
    stale, young = folder / ".tmp-killed", folder / ".tmp-running"
    stale.write_bytes(b"x" * 5000)
    young.write_bytes(b"y" * 10)
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    rep = await collect_garbage(repo, margin=MARGIN)
    assert [(t.key, t.size) for t in rep.temporaries_removed] == [("data/ab/.tmp-killed", 5000)]
    assert not stale.exists() and young.exists()
    await target.aclose()
