"""End to end: operator → coordinator → NATS → agent → repository (disk, S3) → catalog,
then restore byte-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from mosaic import operator
from mosaic.compare import tree_differences
from shared.config.targets import LocalTargetConfig, S3TargetConfig, TargetConfig
from shared.wire.api import BackupList, ListRequest
from shared.wire.events import BackupCompleted, RestoreCompleted
from tests.harness import make_tree, running_stack

QUIET = Console(quiet=True)


@pytest.fixture(params=["local", "s3"])
def target_cfg(request: pytest.FixtureRequest, tmp_path: Path) -> TargetConfig:
    if request.param == "local":
        return LocalTargetConfig(path=str(tmp_path / "repo"))
    cfg: S3TargetConfig = request.getfixturevalue("s3_bucket")
    return cfg


async def test_backup_restore_byte_identical(
    nats_url: str, tmp_path: Path, target_cfg: TargetConfig
) -> None:
    src = make_tree(tmp_path / "src")
    async with running_stack(nats_url, tmp_path, target_cfg, src) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        assert done.summary.files == 7
        assert done.summary.symlinks == 3
        # big-copy.bin deduplicates against big.bin
        assert done.summary.bytes_new < done.summary.bytes_read - (4 << 20)
        assert done.summary.chunks_total > done.summary.chunks_new >= 5

        dest = tmp_path / "restored"
        res = await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60)
        assert isinstance(res, RestoreCompleted)
        assert tree_differences(src, dest) == []
        assert res.files == 7
        assert res.bytes_written == sum(
            p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink()
        )

        part = tmp_path / "partial"
        await operator.restore(
            st.bus, done.backup_id, str(part), QUIET, QUIET, timeout=60, paths=["a/b/c"]
        )
        assert sorted(str(p.relative_to(part)) for p in part.rglob("*")) == [
            "a",
            "a/b",
            "a/b/c",
            "a/b/c/deep.json",
        ]

        listed = await st.bus.request("list", ListRequest(days=1, dataset=st.dataset))
        assert isinstance(listed, BackupList)
        assert [b.backup_id for b in listed.backups] == [done.backup_id]


async def test_incremental_reads_only_changed_files(nats_url: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_url, tmp_path, target, src) as st:
        first = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(first, BackupCompleted)
        (src / "a" / "hello.txt").write_text("changed\n")
        (src / "new.txt").write_text("new file\n")
        second = await operator.backup(st.bus, st.dataset, "incremental", QUIET, QUIET, timeout=60)
        assert isinstance(second, BackupCompleted)
        # only the two changed files were read, the 10 MiB of big files were not
        assert second.summary.bytes_read == len("changed\n") + len("new file\n")
        dest = tmp_path / "restored"
        await operator.restore(st.bus, second.backup_id, str(dest), QUIET, QUIET, timeout=60)
        assert tree_differences(src, dest) == []
        # the first backup still restores its own version
        dest1 = tmp_path / "restored1"
        await operator.restore(st.bus, first.backup_id, str(dest1), QUIET, QUIET, timeout=60)
        assert (dest1 / "a" / "hello.txt").read_text() == "hello world\n" * 100
        assert not (dest1 / "new.txt").exists()


async def test_stack_with_postgres_catalog(
    nats_url: str, tmp_path: Path, fresh_postgres_url: str
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_url, tmp_path, target, src, catalog_url=fresh_postgres_url) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        status = await operator.status(st.bus, QUIET)
        assert status.status == "healthy" and status.backups_total == 1
        row = status.datasets[0]
        assert row.last_backup is not None and row.last_backup.backup_id == done.backup_id
        dest = tmp_path / "restored"
        await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60)
        assert tree_differences(src, dest) == []
