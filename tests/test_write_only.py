"""Write-only agents: back up with deduplication, read nothing back.

What a user relies on: an agent holding only the exported write-only key file backs up
(the second backup stores almost nothing new), cannot open any manifest, tree or data
blob — not even its own — and refuses a restore with one clear line; with the full key
file every backup (old full-key ones and new write-only ones) restores byte-identical
and ``repo verify --read-data`` passes on the mixed repository.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from agent.keysetup import check_repositories, prepare_key
from agent.runner import AgentRunner
from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format.crypto import Keyring, open_sealed
from engine.format.pack import read_pack_entries
from engine.keys.files import create_key_file, load_any_key_file, unwrap_data_key
from engine.keys.ops import write_only_entry
from engine.keys.writeonly import (
    WriteOnlyKey,
    WriteOnlyKeyError,
    is_recipient_wrapped,
    public_bytes,
    unwrap_from_recipient,
    wrap_to_recipient,
)
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import LocalTarget
from engine.storage.open import open_target
from mosaic import operator
from mosaic.compare import tree_differences
from mosaic.operator import OperatorError
from shared.config.agent import AgentConfig
from shared.config.targets import LocalTargetConfig, S3TargetConfig
from shared.errors import RepositoryError, WrongKeyError
from shared.wire.sources import FilesSource
from tests.harness import agent_toml, cli, make_tree, running_stack, unique

QUIET = Console(quiet=True)


@settings(max_examples=40, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), kid=st.binary(min_size=8, max_size=8))
def test_recipient_wrap_round_trip(key: bytes, kid: bytes) -> None:
    private = X25519PrivateKey.generate()
    wrapped = wrap_to_recipient(public_bytes(private.public_key()), kid, key)
    assert is_recipient_wrapped(wrapped)
    assert unwrap_from_recipient(private, wrapped, "k") == (kid, key)
    with pytest.raises(WrongKeyError):
        unwrap_from_recipient(X25519PrivateKey.generate(), wrapped, "k")


def _key_material(repo_dir: Path, master: bytes) -> dict[bytes, bytes]:
    """Every master-wrapped key in keys/, by key id."""
    out = {}
    for f in (repo_dir / "keys").iterdir():
        raw = f.read_bytes()
        if not is_recipient_wrapped(raw):
            kid, key = unwrap_data_key(master, raw, f.name)
            out[kid] = key
    return out


def _assert_nothing_opens(repo_dir: Path, wo: WriteOnlyKey) -> None:
    """With only the write-only key material, no manifest and no pack table opens."""
    e = wo.repositories[0]
    ring = Keyring({e.index_kid: e.index_key}, e.index_kid, e.chunk_id_key)
    manifests = list((repo_dir / "manifests").iterdir())
    packs = [p for p in (repo_dir / "data").rglob("*") if p.is_file()]
    assert manifests and packs
    for m in manifests:
        with pytest.raises(RepositoryError, match="does not hold"):
            open_sealed(ring, f"manifests/{m.name}".encode(), m.read_bytes(), m.name)
    for p in packs:
        with pytest.raises(RepositoryError, match="does not hold"):
            read_pack_entries(ring, p.read_bytes(), p.name)


async def test_write_only_agent_backs_up_and_reads_nothing(nats_url: str, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    target = LocalTargetConfig(path=str(repo_dir))
    local = LocalTarget("t", repo_dir)
    # a backup written earlier with the full key
    full_key = tmp_path / "full.key"
    master = create_key_file(full_key)
    old_src = make_tree(tmp_path / "old", big_mib=1)
    repo = await Repository.open(local, master, create=True)
    spec = BackupSpec(
        backup_id="old", dataset="o", agent="a", source=FilesSource(path=str(old_src))
    )
    await backup_dataset(repo, spec)

    name = unique("agent")
    full_toml = agent_toml(
        tmp_path / "full.toml",
        name=name,
        nats_url=nats_url,
        key_file=full_key,
        targets={"t": target},
    )
    wo_path = tmp_path / "write-only.key"
    proc = cli(
        "repo", "keys", "write-only-export", "--config", str(full_toml), "--out", str(wo_path)
    )
    assert proc.returncode == 0, proc.stderr
    assert oct(wo_path.stat().st_mode & 0o777) == "0o600"

    # The file holds the index key and nothing else that opens anything.
    text = wo_path.read_text()
    doc = json.loads(text)
    keys = _key_material(repo_dir, master)
    index_kid = bytes.fromhex(doc["repositories"][0]["index_kid"])
    secrets = [master] + [k for kid, k in keys.items() if kid != index_kid]
    assert len(secrets) >= 3  # master, the data key, the recipient private key
    for secret in secrets:
        assert base64.b64encode(secret).decode() not in text and secret.hex() not in text

    src = make_tree(tmp_path / "src", big_mib=2)
    wo = load_any_key_file(wo_path)
    assert isinstance(wo, WriteOnlyKey)
    async with running_stack(
        nats_url, tmp_path, target, src, with_agent=False, agent_name=name
    ) as stack:
        cfg = AgentConfig(
            name=name,
            nats_url=nats_url,
            key_file=str(wo_path),
            targets={"t": target},
            ack_wait_s=5.0,
            state_dir=str(tmp_path / "state"),
        )
        targets = {"t": open_target("t", target)}
        key, created = await prepare_key(cfg, targets)
        assert key == wo and not created
        await check_repositories(cfg, key, targets)
        runner = AgentRunner(cfg, key, targets)
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            try:
                b1 = await operator.backup(stack.bus, stack.dataset, "full", QUIET, QUIET)
                assert isinstance(b1, operator.BackupCompleted)
                # restored with the full key before the source changes
                full = await Repository.open(local, master)
                await restore_tree(full, await full.load_manifest(b1.backup_id), tmp_path / "r1")
                assert tree_differences(src, tmp_path / "r1") == []

                (src / "a" / "hello.txt").write_text("changed after the first backup\n")
                (src / "new.txt").write_text("new\n")
                b2 = await operator.backup(stack.bus, stack.dataset, "incremental", QUIET, QUIET)
                assert isinstance(b2, operator.BackupCompleted)
                # big.bin starts like the old tree's: deduplicated against the full-key
                # backup too (its index was re-sealed under the index key by the export)
                assert b1.summary.bytes_read > 4 << 20
                assert 0 < b1.summary.bytes_new < b1.summary.bytes_read - (2 << 20)
                assert b2.summary.bytes_new < 1024  # deduplicated through the index
                assert b2.summary.bytes_read < 1024  # unchanged files skipped (file cache)
                assert b2.summary.bytes_stored < 64 << 10

                with pytest.raises(OperatorError, match="this agent holds a write-only key"):
                    await operator.restore(
                        stack.bus, b1.backup_id, str(tmp_path / "nope"), QUIET, QUIET, timeout=60
                    )
                assert not (tmp_path / "nope").exists()
            finally:
                await runner.aclose()
                tg.cancel_scope.cancel()

    # The write-only key opens nothing, not even the agent's own backups.
    wo_repo = await Repository.open(local, wo)
    with pytest.raises(WriteOnlyKeyError, match="needs the full key file"):
        await wo_repo.load_manifest(b2.backup_id)
    m2 = await Repository.open(local, master)
    tree_id = (await m2.load_manifest(b2.backup_id)).tree[0]
    with pytest.raises(WriteOnlyKeyError):
        await wo_repo.read_blob(tree_id)
    _assert_nothing_opens(repo_dir, wo)

    # The full key restores everything, old and new, byte-identical.
    await restore_tree(m2, await m2.load_manifest(b2.backup_id), tmp_path / "r2")
    assert tree_differences(src, tmp_path / "r2") == []
    await restore_tree(m2, await m2.load_manifest("old"), tmp_path / "r-old")
    assert tree_differences(old_src, tmp_path / "r-old") == []
    proc = cli("repo", "verify", "--config", str(full_toml), "--all", "--read-data")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Repository tools refuse the write-only key file with the same one line.
    wo_toml = agent_toml(
        tmp_path / "wo.toml", name=name, nats_url=nats_url, key_file=wo_path, targets={"t": target}
    )
    proc = cli("repo", "verify", "--config", str(wo_toml), "--all")
    assert proc.returncode != 0
    assert "this agent holds a write-only key" in proc.stderr + proc.stdout


async def test_write_only_backup_on_s3_restores_with_full_key(
    s3_bucket: S3TargetConfig, tmp_path: Path
) -> None:
    target = open_target("s3", s3_bucket)
    try:
        master = os.urandom(32)
        full = await Repository.open(target, master, create=True)
        wo = WriteOnlyKey("wo.key", (await write_only_entry(full, master),))
        src = make_tree(tmp_path / "src", big_mib=1)
        source = FilesSource(path=str(src))
        m1 = await backup_dataset(
            await Repository.open(target, wo),
            BackupSpec(backup_id="b1", dataset="d", agent="a", source=source),
        )
        # a new writer session: another session key, same deduplication
        m2 = await backup_dataset(
            await Repository.open(target, wo),
            BackupSpec(backup_id="b2", dataset="d", agent="a", source=source),
        )
        assert m1.summary.bytes_new > 1 << 20 and m2.summary.bytes_new == 0
        reader = await Repository.open(target, master)
        for m, dest in ((m1, "r1"), (m2, "r2")):
            await restore_tree(reader, await reader.load_manifest(m.backup_id), tmp_path / dest)
            assert tree_differences(src, tmp_path / dest) == []
    finally:
        await target.aclose()


async def test_write_only_key_cannot_create_or_open_another_repository(tmp_path: Path) -> None:
    master = os.urandom(32)
    one = await Repository.open(LocalTarget("one", tmp_path / "one"), master, create=True)
    wo = WriteOnlyKey("wo.key", (await write_only_entry(one, master),))
    await Repository.open(LocalTarget("two", tmp_path / "two"), master, create=True)
    with pytest.raises(WrongKeyError, match="does not cover the repository"):
        await Repository.open(LocalTarget("two", tmp_path / "two"), wo)
    with pytest.raises(RepositoryError, match="cannot create one"):
        await Repository.open(LocalTarget("new", tmp_path / "new"), wo, create=True)
