"""Key management: passphrase key files, data key rotation, master key rewrap, export.

What a user relies on: a protected key file opens only with its passphrase and never
says it; after rotating, new data uses the new key while every old backup still
restores byte-identical; after rewrapping, only the new key file opens the repository,
no data object was rewritten, and a refused rewrap changes nothing.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from agent.keysetup import prepare_key
from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format.manifest import Manifest
from engine.keys.files import (
    create_key_file,
    load_key_file,
    master_key_from_env,
    unwrap_data_key,
    wrap_data_key,
)
from engine.keys.ops import export_key_file, rewrap, rotate
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.base import Target
from engine.storage.local import LocalTarget
from mosaic.compare import tree_differences
from shared.config.agent import AgentConfig
from shared.config.targets import LocalTargetConfig
from shared.errors import KeyFileError, WrongKeyError
from shared.wire.sources import FilesSource
from tests.harness import agent_toml, cli, make_tree, snapshot

PASSPHRASE = "correct horse battery staple"


def _contents(root: Path, *prefixes: str) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file under ``root`` whose path starts with a prefix."""
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel.startswith(prefixes):
            out[rel] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def _packs(repo_dir: Path) -> set[Path]:
    return {p for p in (repo_dir / "data").rglob("*") if p.is_file()}


async def _backup(repo: Repository, src: Path, backup_id: str) -> Manifest:
    spec = BackupSpec(
        backup_id=backup_id, dataset="d", agent="a", source=FilesSource(path=str(src))
    )
    return await backup_dataset(repo, spec)


async def _restores(repo: Repository, backup_id: str, src: Path, dest: Path) -> None:
    await restore_tree(repo, await repo.load_manifest(backup_id), dest)
    assert tree_differences(src, dest) == []


def _second_source(root: Path) -> Path:
    root.mkdir()
    (root / "new.bin").write_bytes(os.urandom(300_000))
    (root / "note.txt").write_text("written after the rotation\n")
    return root


async def _repo_with_backup(tmp_path: Path, master: bytes) -> tuple[Repository, Path, Path]:
    repo_dir = tmp_path / "repo"
    repo = await Repository.open(LocalTarget("t", repo_dir), master, create=True)
    src = make_tree(tmp_path / "src1", big_mib=1)
    await _backup(repo, src, "b1")
    return repo, repo_dir, src


# --- key files ---------------------------------------------------------------------------


def test_passphrase_key_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    master = create_key_file(path, PASSPHRASE)
    text = path.read_text()
    doc = json.loads(text)
    assert doc["mosaic_key_file"] == 1 and doc["kdf"] == "scrypt"
    assert (doc["n"], doc["r"], doc["p"]) == (2**17, 8, 1)
    assert "master_key" not in doc and base64.b64encode(master).decode() not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path, PASSPHRASE) == master


def test_wrong_passphrase_is_one_line_without_the_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    create_key_file(path, PASSPHRASE)
    with pytest.raises(WrongKeyError) as exc:
        load_key_file(path, "hunter2-guess")
    msg = str(exc.value)
    assert str(path) in msg and "wrong passphrase" in msg
    assert "hunter2-guess" not in msg and PASSPHRASE not in msg and "\n" not in msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


@pytest.mark.parametrize("given", [None, ""])
def test_missing_passphrase_says_how_to_give_it(tmp_path: Path, given: str | None) -> None:
    path = tmp_path / "k.key"
    create_key_file(path, PASSPHRASE)
    with pytest.raises(KeyFileError, match="protected by a passphrase: set MOSAIC_PASSPHRASE"):
        load_key_file(path, given)


def test_raw_v1_key_file_still_loads(tmp_path: Path) -> None:
    """A key file as written before passphrases existed, byte for byte."""
    master = bytes(range(32))
    path = tmp_path / "old.key"
    doc = {
        "mosaic_key_file": 1,
        "master_key": base64.b64encode(master).decode(),
        "created": "2024-01-01T00:00:00+00:00",
    }
    path.write_text(json.dumps(doc) + "\n")
    assert load_key_file(path) == master
    assert load_key_file(path, "ignored for a raw key file") == master
    raw = tmp_path / "raw.key"  # and a raw key file written today is still that format
    created = create_key_file(raw)
    assert load_key_file(raw) == created
    assert set(json.loads(raw.read_text())) == {"mosaic_key_file", "master_key", "created"}


def test_crafted_scrypt_cost_is_refused_before_deriving(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    create_key_file(path, PASSPHRASE)
    doc = json.loads(path.read_text())
    doc["n"] = 2**30
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="damaged: scrypt parameter n"):
        load_key_file(path, PASSPHRASE)


def test_empty_passphrase_is_refused_on_create(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="passphrase is empty"):
        create_key_file(tmp_path / "k.key", "")
    assert not (tmp_path / "k.key").exists()


def test_master_key_from_env() -> None:
    master = os.urandom(32)
    assert master_key_from_env(base64.b64encode(master).decode() + "\n") == master
    short = base64.b64encode(b"x" * 16).decode()
    with pytest.raises(KeyFileError, match="16 bytes, expected 32") as exc:
        master_key_from_env(short)
    assert short not in str(exc.value)
    with pytest.raises(KeyFileError, match="not valid base64") as exc:
        master_key_from_env("not base64 at all!")
    assert "not base64 at all" not in str(exc.value)


async def test_agent_creates_and_opens_a_protected_key_file(tmp_path: Path) -> None:
    cfg = AgentConfig(
        name="a",
        key_file=str(tmp_path / "agent.key"),
        targets={"t": LocalTargetConfig(path=str(tmp_path / "repo"))},
    )
    targets: dict[str, Target] = {"t": LocalTarget("t", tmp_path / "repo")}
    master, created = await prepare_key(cfg, targets, PASSPHRASE)
    assert created and "kdf" in json.loads(Path(cfg.key_file).read_text())
    assert await prepare_key(cfg, targets, PASSPHRASE) == (master, False)
    with pytest.raises(KeyFileError, match="protected by a passphrase"):
        await prepare_key(cfg, targets)


# --- rotate ------------------------------------------------------------------------------


async def test_rotate_new_data_uses_new_key_old_backups_restore(tmp_path: Path) -> None:
    master = os.urandom(32)
    repo, repo_dir, src1 = await _repo_with_backup(tmp_path, master)
    old_kid = repo.keys.current
    old_packs = _packs(repo_dir)
    assert {p.read_bytes()[6:14] for p in old_packs} == {old_kid}

    new_kid = await rotate(repo, master)

    assert new_kid != old_kid and repo.keys.current == new_kid
    assert (repo_dir / "config").read_bytes()[6:14] == new_kid
    assert {p.name for p in (repo_dir / "keys").iterdir()} == {old_kid.hex(), new_kid.hex()}
    assert (await Repository.open(LocalTarget("t", repo_dir), master)).keys.current == new_kid

    src2 = _second_source(tmp_path / "src2")
    await _backup(repo, src2, "b2")  # the same Repository object, as a running job would
    new_packs = _packs(repo_dir) - old_packs
    assert new_packs
    assert {p.read_bytes()[6:14] for p in new_packs} == {new_kid}  # each pack's first blob
    assert {p.read_bytes()[6:14] for p in old_packs} == {old_kid}  # untouched

    fresh = await Repository.open(LocalTarget("t", repo_dir), master)
    await _restores(fresh, "b1", src1, tmp_path / "out1")
    await _restores(fresh, "b2", src2, tmp_path / "out2")


async def test_rotate_with_the_wrong_master_key_writes_nothing(tmp_path: Path) -> None:
    repo, repo_dir, _ = await _repo_with_backup(tmp_path, os.urandom(32))
    before = _contents(repo_dir, "")
    with pytest.raises(WrongKeyError):
        await rotate(repo, os.urandom(32))
    assert _contents(repo_dir, "") == before


# --- rewrap ------------------------------------------------------------------------------


async def test_rewrap_moves_to_new_master_without_touching_data(tmp_path: Path) -> None:
    old = os.urandom(32)
    repo, repo_dir, src1 = await _repo_with_backup(tmp_path, old)
    await rotate(repo, old)
    src2 = _second_source(tmp_path / "src2")
    await _backup(repo, src2, "b2")
    untouched = ("data/", "index/", "manifests/", "config")
    before = _contents(repo_dir, *untouched)
    keys_before = _contents(repo_dir, "keys/")
    target = LocalTarget("t", repo_dir)

    new = os.urandom(32)
    assert await rewrap(target, old, new) == 4  # two data keys, each with its recovery copy

    assert _contents(repo_dir, *untouched) == before
    keys_after = _contents(repo_dir, "keys/")
    assert keys_after.keys() == keys_before.keys()
    assert all(keys_after[k][0] != keys_before[k][0] for k in keys_after)
    with pytest.raises(WrongKeyError):
        await Repository.open(target, old)
    fresh = await Repository.open(target, new)
    await _restores(fresh, "b1", src1, tmp_path / "out1")
    await _restores(fresh, "b2", src2, tmp_path / "out2")


async def test_rewrap_with_wrong_old_key_writes_nothing(tmp_path: Path) -> None:
    master = os.urandom(32)
    _, repo_dir, _ = await _repo_with_backup(tmp_path, master)
    before = _contents(repo_dir, "")
    with pytest.raises(WrongKeyError, match="nothing was changed"):
        await rewrap(LocalTarget("t", repo_dir), os.urandom(32), os.urandom(32))
    assert _contents(repo_dir, "") == before
    await Repository.open(LocalTarget("t", repo_dir), master)


async def test_interrupted_rewrap_is_finished_by_running_it_again(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    repo, repo_dir, src1 = await _repo_with_backup(tmp_path, old)
    await rotate(repo, old)
    # Simulate a crash after the first object was rewritten.
    first = sorted((repo_dir / "keys").iterdir())[0]
    kid, data_key = unwrap_data_key(old, first.read_bytes(), "test")
    first.write_bytes(wrap_data_key(new, kid, data_key))
    target = LocalTarget("t", repo_dir)

    # two data keys and their recovery copies, one of the four already rewrapped
    assert await rewrap(target, old, new, dry_run=True) == 3
    assert await rewrap(target, old, new) == 3
    assert await rewrap(target, old, new) == 0
    await _restores(await Repository.open(target, new), "b1", src1, tmp_path / "out")


# --- export ------------------------------------------------------------------------------


async def test_export_opens_the_repository_and_never_overwrites(tmp_path: Path) -> None:
    master = create_key_file(tmp_path / "agent.key")
    _, repo_dir, src1 = await _repo_with_backup(tmp_path, master)

    plain = export_key_file(master, tmp_path / "copy.key")
    assert stat.S_IMODE(plain.stat().st_mode) == 0o600
    protected = export_key_file(master, tmp_path / "copy-pw.key", PASSPHRASE)
    assert "kdf" in json.loads(protected.read_text())

    existing = (tmp_path / "agent.key").read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        export_key_file(os.urandom(32), tmp_path / "agent.key")
    assert (tmp_path / "agent.key").read_bytes() == existing

    for i, key in enumerate([load_key_file(plain), load_key_file(protected, PASSPHRASE)]):
        repo = await Repository.open(LocalTarget("t", repo_dir), key)
        await _restores(repo, "b1", src1, tmp_path / f"out{i}")


# --- command line ------------------------------------------------------------------------


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc
    assert len(lines) == 1 and lines[0].startswith("mosaic-backup: error: "), lines
    return lines[0]


def test_cli_keys_init(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "new.key"
    proc = cli("repo", "keys", "init", "--key-file", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "Keep a copy of this key file" in proc.stdout and str(path) in proc.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    load_key_file(path)

    line = _one_line_error(cli("repo", "keys", "init", "--key-file", str(path)))
    assert "refusing to overwrite" in line

    pw_path = tmp_path / "pw.key"
    args = ["repo", "keys", "init", "--key-file", str(pw_path), "--passphrase-from-env", "MY_PW"]
    proc = cli(*args, env={"MY_PW": PASSPHRASE})
    assert proc.returncode == 0, proc.stderr
    assert PASSPHRASE not in proc.stdout + proc.stderr
    load_key_file(pw_path, PASSPHRASE)

    unset = tmp_path / "unset.key"
    line = _one_line_error(
        cli("repo", "keys", "init", "--key-file", str(unset), "--passphrase-from-env", "NOPE_X")
    )
    assert "NOPE_X" in line and not unset.exists()


async def test_cli_keys_rotate_with_a_protected_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "agent.key"
    master = create_key_file(key_file, PASSPHRASE)
    _, repo_dir, src1 = await _repo_with_backup(tmp_path, master)
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:4222",
        key_file=key_file,
        targets={"t": LocalTargetConfig(path=str(repo_dir))},
    )
    before = snapshot(repo_dir)

    line = _one_line_error(
        cli("repo", "keys", "rotate", "--config", str(cfg), env={"MOSAIC_PASSPHRASE": ""})
    )
    assert "MOSAIC_PASSPHRASE" in line
    line = _one_line_error(
        cli("repo", "keys", "rotate", "--config", str(cfg), env={"MOSAIC_PASSPHRASE": "guess"})
    )
    assert "wrong passphrase" in line and "guess" not in line
    assert snapshot(repo_dir) == before

    old_kid = (repo_dir / "config").read_bytes()[6:14]
    proc = cli(
        "repo", "keys", "rotate", "--config", str(cfg), env={"MOSAIC_PASSPHRASE": PASSPHRASE}
    )
    assert proc.returncode == 0, proc.stderr
    new_kid = (repo_dir / "config").read_bytes()[6:14]
    assert new_kid != old_kid and new_kid.hex() in proc.stdout
    fresh = await Repository.open(LocalTarget("t", repo_dir), master)
    assert fresh.keys.current == new_kid
    await _restores(fresh, "b1", src1, tmp_path / "out")


async def test_cli_keys_rewrap(tmp_path: Path) -> None:
    key_file = tmp_path / "agent.key"
    old = create_key_file(key_file)
    _, repo_dir, src1 = await _repo_with_backup(tmp_path, old)
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:4222",
        key_file=key_file,
        targets={
            "t": LocalTargetConfig(path=str(repo_dir)),
            "empty": LocalTargetConfig(path=str(tmp_path / "empty")),
        },
    )
    data_before = _contents(repo_dir, "data/", "index/", "manifests/", "config")

    new_file = tmp_path / "new.key"
    proc = cli("repo", "keys", "rewrap", "--config", str(cfg), "--new-key-file", str(new_file))
    assert proc.returncode == 0, proc.stderr
    assert "rewrapped 2 wrapped key object" in proc.stdout and "set key_file" in proc.stdout
    assert "no repository yet" in proc.stdout
    assert "Keep a copy" in proc.stderr
    assert _contents(repo_dir, "data/", "index/", "manifests/", "config") == data_before
    new = load_key_file(new_file)
    with pytest.raises(WrongKeyError):
        await Repository.open(LocalTarget("t", repo_dir), old)
    await _restores(
        await Repository.open(LocalTarget("t", repo_dir), new), "b1", src1, tmp_path / "out"
    )

    # Run again (say, unsure whether it finished): nothing left to do, nothing broken.
    proc = cli("repo", "keys", "rewrap", "--config", str(cfg), "--new-key-file", str(new_file))
    assert proc.returncode == 0, proc.stderr
    assert "rewrapped 0 wrapped key" in proc.stdout


def test_cli_export_refuses_to_overwrite(tmp_path: Path) -> None:
    key_file = tmp_path / "agent.key"
    master = create_key_file(key_file)
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:4222",
        key_file=key_file,
        targets={"t": LocalTargetConfig(path=str(tmp_path / "repo"))},
    )
    dest = tmp_path / "copy.key"
    args = ["repo", "keys", "export", "--config", str(cfg), "--to", str(dest)]
    proc = cli(*args, "--passphrase-from-env", "MY_PW", env={"MY_PW": PASSPHRASE})
    assert proc.returncode == 0, proc.stderr
    assert load_key_file(dest, PASSPHRASE) == master
    existing = dest.read_bytes()
    line = _one_line_error(cli("repo", "keys", "export", "--config", str(cfg), "--to", str(dest)))
    assert "refusing to overwrite" in line
    assert dest.read_bytes() == existing


async def test_cli_refused_rewrap_changes_nothing_and_leaves_no_key_file(tmp_path: Path) -> None:
    _, repo_dir, _ = await _repo_with_backup(tmp_path, os.urandom(32))
    wrong = tmp_path / "wrong.key"
    create_key_file(wrong)
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:4222",
        key_file=wrong,
        targets={"t": LocalTargetConfig(path=str(repo_dir))},
    )
    before = snapshot(repo_dir)
    new_file = tmp_path / "new.key"
    line = _one_line_error(
        cli("repo", "keys", "rewrap", "--config", str(cfg), "--new-key-file", str(new_file))
    )
    assert "wrong key file" in line and str(wrong) in line
    assert not new_file.exists()
    assert snapshot(repo_dir) == before
