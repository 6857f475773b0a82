"""Replication: a replica on S3 or SFTP opens with the same key and restores every backup
byte-identical; objects travel as the source's ciphertext; only missing objects are
copied; another repository is refused; a replication cut anywhere leaves only restorable
manifests behind."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format import spec as fmt
from engine.keys.files import create_key_file
from engine.keys.ops import rotate
from engine.maintenance.replicate import ReplicationError, lag, replicate
from engine.progress import Progress
from engine.repository import Repository, WriteOptions
from engine.restore.tree import restore_tree
from engine.storage.base import Target
from engine.storage.local import LocalTarget
from engine.storage.open import open_target
from mosaic.compare import tree_differences
from shared.config.targets import LocalTargetConfig, S3TargetConfig, SftpTargetConfig
from shared.wire.sources import FilesSource
from tests.harness import agent_toml, cli, snapshot

PACK_SIZE = 1 << 16  # one chunk per pack: many packs to copy and to cut between
OPTIONS = WriteOptions(pack_size=PACK_SIZE)


@dataclass
class Env:
    tmp: Path
    key: bytes
    key_file: Path
    src: LocalTarget
    sources: dict[str, Path] = field(default_factory=dict)

    async def open(self, target: Target | None = None) -> Repository:
        return await Repository.open(target or self.src, self.key, options=OPTIONS)

    def tree(self, name: str, seed: int, files: int) -> Path:
        root = self.tmp / "src" / name
        (root / "sub").mkdir(parents=True)
        rnd = random.Random(seed)
        for i in range(files):
            (root / "sub" / f"f{i}.bin").write_bytes(rnd.randbytes(200_000 + i * 777))
        (root / "shared.bin").write_bytes(random.Random(99).randbytes(300_000))
        (root / "note.txt").write_text(f"tree {name}\n")
        return root

    async def backup(self, backup_id: str, dataset: str, seed: int, files: int = 3) -> None:
        root = self.tree(backup_id, seed, files)
        spec = BackupSpec(
            backup_id=backup_id, dataset=dataset, agent="a", source=FilesSource(path=str(root))
        )
        await backup_dataset(await self.open(), spec)
        self.sources[backup_id] = root

    async def assert_restores(self, target: Target, backup_ids: list[str] | None = None) -> None:
        repo = await self.open(target)
        ids = backup_ids if backup_ids is not None else await repo.list_manifests()
        for backup_id in ids:
            dest = self.tmp / "restore" / f"{target.name}-{backup_id}-{random.random()}"
            await restore_tree(repo, await repo.load_manifest(backup_id), dest)
            assert tree_differences(self.sources[backup_id], dest) == [], backup_id


async def objects(target: Target) -> dict[str, bytes]:
    """Every object but locks/, with its bytes."""
    return {
        o.key: await target.get(o.key)
        async for o in target.list()
        if not o.key.startswith(fmt.LOCKS_PREFIX)
    }


@pytest.fixture
async def env(tmp_path: Path) -> Env:
    key_file = tmp_path / "repo.key"
    key = create_key_file(key_file)
    src = LocalTarget("primary", tmp_path / "primary")
    await Repository.open(src, key, create=True, options=OPTIONS)
    e = Env(tmp_path, key, key_file, src)
    await e.backup("b1", "db", 1)
    await e.backup("b2", "files", 2)
    return e


async def _check_replica(env: Env, dst: Target) -> None:
    before = await lag(env.src, dst, repo=await env.open())
    assert before["db"].missing == ("b1",) and before["files"].missing == ("b2",)
    assert before["db"].lag_s is not None and before["db"].lag_s > 0

    seen: list[int] = []

    async def report(p: Progress) -> None:
        seen.append(p.bytes_done)

    rep = await replicate(env.src, dst, report=report)
    ours = await objects(env.src)
    assert rep.copied == len(ours)
    assert rep.copied_bytes == sum(len(v) for v in ours.values()) == seen[-1]
    # Ciphertext copied as is: every object byte-identical, nothing extra.
    assert await objects(dst) == ours
    await env.assert_restores(dst, ["b1", "b2"])

    again = await replicate(env.src, dst)
    assert again.copied == 0 and sum(s.skipped for s in again.prefixes.values()) == len(ours)
    after = await lag(env.src, dst, repo=await env.open())
    assert {d: (i.missing, i.lag_s) for d, i in after.items()} == {
        "db": ((), 0.0),
        "files": ((), 0.0),
    }


async def test_replica_on_s3_restores_byte_identical(env: Env, s3_bucket: S3TargetConfig) -> None:
    dst = open_target("offsite", s3_bucket)
    try:
        await _check_replica(env, dst)
    finally:
        await dst.aclose()


async def test_replica_on_sftp_restores_byte_identical(
    env: Env, sftp_target_cfg: SftpTargetConfig
) -> None:
    dst = open_target("remote", sftp_target_cfg)
    try:
        await _check_replica(env, dst)
    finally:
        await dst.aclose()


async def test_incremental_copies_only_new_objects(env: Env) -> None:
    dst = LocalTarget("copy", env.tmp / "copy")
    await replicate(env.src, dst)
    old = await objects(env.src)
    await env.backup("b3", "db", 3)
    new = {k: v for k, v in (await objects(env.src)).items() if k not in old}
    assert any(k.startswith(fmt.DATA_PREFIX) for k in new)

    pending = await lag(env.src, dst, repo=await env.open())
    assert pending["db"].missing == ("b3",) and pending["files"].lag_s == 0.0
    later = datetime.now(UTC) + timedelta(hours=2)
    aged = await lag(env.src, dst, repo=await env.open(), now=lambda: later)
    assert aged["db"].lag_s is not None and aged["db"].lag_s >= 7200
    assert (await lag(env.src, dst))["*"].missing == ("b3",)  # without the key

    dry = await replicate(env.src, dst, dry_run=True)
    assert dry.copied == len(new) and await objects(dst) == old
    rep = await replicate(env.src, dst)
    copied = {p: s.copied for p, s in rep.prefixes.items() if s.copied}
    expected: dict[str, int] = {}
    for key in new:
        prefix = key.split("/")[0] + "/"
        expected[prefix] = expected.get(prefix, 0) + 1
    assert copied == expected
    assert rep.copied_bytes == sum(len(v) for v in new.values())
    await env.assert_restores(dst)


async def test_destination_with_another_repository_is_refused_untouched(env: Env) -> None:
    other_dir = env.tmp / "other"
    other = LocalTarget("other", other_dir)
    await Repository.open(other, env.key, create=True)  # same key, another repository
    before = snapshot(other_dir)
    with pytest.raises(ReplicationError) as exc:
        await replicate(env.src, other)
    assert env.src.describe() in str(exc.value) and other.describe() in str(exc.value)
    assert "another repository" in str(exc.value)
    assert snapshot(other_dir) == before


async def test_key_rotation_on_source_replaces_the_replica_config(env: Env) -> None:
    dst = LocalTarget("copy", env.tmp / "copy")
    await replicate(env.src, dst)
    await rotate(await env.open(), env.key)
    await env.backup("b3", "db", 3)  # sealed with the new data key
    rep = await replicate(env.src, dst)
    assert rep.prefixes[fmt.CONFIG_KEY].copied == 1 and rep.prefixes[fmt.KEYS_PREFIX].copied == 1
    assert await objects(dst) == await objects(env.src)
    await env.assert_restores(dst)


@pytest.mark.parametrize("cut_after", [1, 2, 5, 12, 25, 44, 47])
async def test_cut_midway_leaves_only_restorable_manifests(env: Env, cut_after: int) -> None:
    dst = LocalTarget("copy", env.tmp / "copy")
    # An earlier replica holds b1 and b2; the cut run brings b3 and b4.
    await replicate(env.src, dst)
    await env.backup("b3", "db", 3, files=20)
    await env.backup("b4", "files", 4, files=20)
    total = len(await objects(env.src)) - len(await objects(dst))
    assert total > 45

    with anyio.CancelScope() as scope:

        async def report(p: Progress) -> None:
            if p.files_done >= cut_after:
                scope.cancel()

        await replicate(env.src, dst, report=report)
    assert scope.cancelled_caught
    assert len(await objects(dst)) < len(await objects(env.src))  # really cut short
    names = await (await env.open(dst)).list_manifests()
    assert {"b1", "b2"} <= set(names)
    await env.assert_restores(dst)

    await replicate(env.src, dst)  # the next run finishes the job
    await env.assert_restores(dst, ["b1", "b2", "b3", "b4"])


async def test_cut_before_config_leaves_no_repository(env: Env) -> None:
    dst = LocalTarget("fresh", env.tmp / "fresh")
    with anyio.CancelScope() as scope:

        async def report(p: Progress) -> None:
            scope.cancel()

        await replicate(env.src, dst, report=report)
    assert not await dst.exists(fmt.CONFIG_KEY)
    assert [o.key async for o in dst.list(fmt.MANIFESTS_PREFIX)] == []


async def test_cli_replicate_prints_copies_and_lag(env: Env) -> None:
    config = agent_toml(
        env.tmp / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=env.key_file,
        targets={
            "primary": LocalTargetConfig(path=str(env.tmp / "primary")),
            "copy": LocalTargetConfig(path=str(env.tmp / "copy")),
        },
    )
    args = ("repo", "replicate", "--config", str(config), "--from", "primary", "--to", "copy")
    dry = cli(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would copy" in dry.stdout and "db" in dry.stdout and "b1" in dry.stdout
    assert not (env.tmp / "copy" / "config").exists()
    run = cli(*args)
    assert run.returncode == 0, run.stderr
    assert "copied" in run.stdout and "manifests/" in run.stdout
    assert await objects(LocalTarget("copy", env.tmp / "copy")) == await objects(env.src)
    again = cli(*args)
    assert "copied 0 objects" in again.stdout, again.stdout
    same = cli("repo", "replicate", "--config", str(config), "--from", "copy", "--to", "copy")
    assert same.returncode != 0 and "both 'copy'" in same.stderr, same.stderr
    assert "Traceback" not in same.stderr
