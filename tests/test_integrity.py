"""Damage and hostile manifests: a flipped byte is caught and named; a crafted manifest
cannot write outside the restore destination; a wrong key opens nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from engine.format import spec as fmt
from engine.format.manifest import Manifest, Node, encode_tree
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import LocalTarget
from mosaic import operator
from shared.config.targets import LocalTargetConfig
from shared.errors import IntegrityError, UnsafePathError, WrongKeyError
from shared.vocab import BackupSummary, utcnow
from shared.wire.events import BackupCompleted
from shared.wire.sources import FilesSource
from tests.harness import make_tree, running_stack, snapshot

QUIET = Console(quiet=True)
KEY = bytes(range(32))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


async def _repo_with_backup(tmp_path: Path) -> tuple[Repository, Manifest, Path]:
    src = make_tree(tmp_path / "src", big_mib=3)
    target = LocalTarget("t", tmp_path / "repo")
    repo = await Repository.open(target, KEY, create=True)
    from engine.backup.dataset import backup_tree

    tree, _, _ = await backup_tree(repo, FilesSource(path=str(src)))
    m = _manifest("b1", tree)
    await repo.commit_manifest(m)
    return repo, m, tmp_path / "repo"


def _manifest(backup_id: str, tree: list[bytes]) -> Manifest:
    s = BackupSummary(
        files=0,
        dirs=0,
        symlinks=0,
        bytes_read=0,
        bytes_new=0,
        bytes_stored=0,
        chunks_total=0,
        chunks_new=0,
        packs_written=0,
        duration_s=0.0,
    )
    return Manifest(
        backup_id=backup_id,
        dataset="d",
        agent="a",
        backup_type="full",
        source=FilesSource(path="/x"),
        started_at=utcnow(),
        finished_at=utcnow(),
        tree=tree,
        summary=s,
    )


async def test_flipped_byte_in_pack_fails_restore_naming_the_pack(tmp_path: Path) -> None:
    _, m, repo_dir = await _repo_with_backup(tmp_path)
    packs = sorted((repo_dir / "data").rglob("*"))
    pack = max((p for p in packs if p.is_file()), key=lambda p: p.stat().st_size)
    _flip(pack, 100)
    fresh = await Repository.open(LocalTarget("t", repo_dir), KEY)
    with pytest.raises(IntegrityError) as exc:
        await restore_tree(fresh, m, tmp_path / "out")
    assert pack.name in str(exc.value)
    assert "modified or damaged" in str(exc.value)


async def test_flipped_byte_in_manifest_is_named(tmp_path: Path) -> None:
    _, _, repo_dir = await _repo_with_backup(tmp_path)
    _flip(repo_dir / "manifests" / "b1", 40)
    fresh = await Repository.open(LocalTarget("t", repo_dir), KEY)
    with pytest.raises(IntegrityError, match="manifests/b1"):
        await fresh.load_manifest("b1")


async def test_swapped_blobs_are_caught(tmp_path: Path) -> None:
    """A blob moved under another chunk's id fails authentication (id is in the AAD)."""
    repo, _, _ = await _repo_with_backup(tmp_path)
    ids = [i for i, e in repo.index.items() if e.otype == fmt.OT_DATA]
    a, b = repo.index[ids[0]], repo.index[ids[1]]
    repo.index[ids[0]] = b  # the index now points chunk A at chunk B's bytes
    with pytest.raises(IntegrityError):
        await repo.read_blob(ids[0])
    assert a != b


async def test_wrong_key_opens_nothing(tmp_path: Path) -> None:
    _, _, repo_dir = await _repo_with_backup(tmp_path)
    before = snapshot(repo_dir)
    with pytest.raises(WrongKeyError):
        await Repository.open(LocalTarget("t", repo_dir), bytes(32), create=True)
    assert snapshot(repo_dir) == before


@pytest.mark.parametrize(
    "evil", [b"../escaped.txt", b"/etc/escaped.txt", b"a/../../escaped.txt", b"link/escaped.txt"]
)
async def test_crafted_manifest_cannot_escape_destination(tmp_path: Path, evil: bytes) -> None:
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), KEY, create=True)
    nodes = [
        Node(path=b"a", type="dir", mode=0o755, mtime_ns=0),
        Node(path=b"link", type="symlink", mode=0o777, mtime_ns=0, target=str(tmp_path).encode()),
        Node(path=evil, type="file", mode=0o644, mtime_ns=0, size=0),
    ]
    stream = encode_tree(nodes)
    tree_id, sealed = repo.prepare_blob(fmt.OT_TREE, stream)
    assert sealed is not None
    await repo.add_sealed(fmt.OT_TREE, tree_id, sealed, len(stream))
    m = _manifest("evil", [tree_id])
    await repo.commit_manifest(m)
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(UnsafePathError, match="refusing"):
        await restore_tree(repo, m, dest)
    assert not (tmp_path / "dest" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert not dest.exists()  # nothing at all was written


async def test_damaged_pack_fails_the_restore_job_with_the_object_name(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=2)
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_url, tmp_path, target, src) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        pack = max(
            (p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()),
            key=lambda p: p.stat().st_size,
        )
        _flip(pack, os.path.getsize(pack) // 3)
        with pytest.raises(operator.OperatorError) as exc:
            await operator.restore(
                st.bus, done.backup_id, str(tmp_path / "out"), QUIET, QUIET, timeout=60
            )
        assert pack.name in str(exc.value) and "failed" in str(exc.value)


def _biggest_pack(repo_dir: Path) -> Path:
    return max(
        (p for p in (repo_dir / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )


async def test_truncated_pack_fails_restore_naming_the_pack(tmp_path: Path) -> None:
    _, m, repo_dir = await _repo_with_backup(tmp_path)
    pack = _biggest_pack(repo_dir)
    pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    fresh = await Repository.open(LocalTarget("t", repo_dir), KEY)
    with pytest.raises(IntegrityError) as exc:
        await restore_tree(fresh, m, tmp_path / "out")
    assert pack.name in str(exc.value)


async def test_deleted_pack_fails_restore_naming_the_pack(tmp_path: Path) -> None:
    _, m, repo_dir = await _repo_with_backup(tmp_path)
    pack = _biggest_pack(repo_dir)
    pack.unlink()
    fresh = await Repository.open(LocalTarget("t", repo_dir), KEY)
    with pytest.raises(IntegrityError) as exc:
        await restore_tree(fresh, m, tmp_path / "out")
    assert pack.name in str(exc.value) and "missing" in str(exc.value)
