"""Damage never spreads: one test per kind of damage, through the real command.

Each test builds a repository of many small files and a few multi-chunk ones in small
packs (so one pack holds a few files' content), damages one object the way storage
does (bit rot, truncation, an operator's rm, a half-synced bucket), and asserts what a
user on their worst day cares about:

- a full restore writes every intact file byte-identical, lists exactly the damaged
  ones (written as NAME.damaged, never looking complete) and exits 1;
- the repair command the messages name brings the repository back to "verify clean",
  with the lost chunks reported;
- the next backup never initialises over the old backups, which still restore.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.format import spec as fmt
from engine.keys.files import load_key_file
from engine.repository import Repository
from engine.storage.local import LocalTarget
from shared.config.targets import LocalTargetConfig
from tests.harness import agent_toml, cli

N_SMALL = 300


@dataclass
class Repo:
    tmp: Path
    src: Path
    repo: Path
    cfg: Path
    key_file: Path
    backup_id: str

    def run(self, *args: str) -> tuple[int, str, str]:
        p = cli("repo", *args, "--config", str(self.cfg), timeout=300)
        return p.returncode, p.stdout, p.stderr

    def restore(self, dest: str, *extra: str) -> tuple[int, str, str]:
        return self.run("restore", self.backup_id, "--to", str(self.tmp / dest), *extra)

    def packs(self) -> list[Path]:
        return sorted(p for p in (self.repo / "data").rglob("*") if p.is_file())


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): _digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _make_source(root: Path) -> Path:
    rnd = random.Random(16)
    for i in range(N_SMALL):
        d = root / f"d{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03}.bin").write_bytes(rnd.randbytes(rnd.randint(1_000, 20_000)))
    for i in range(3):
        (root / f"big{i}.bin").write_bytes(rnd.randbytes(3 << 20))
    (root / "link").symlink_to("big0.bin")
    os.link(root / "big1.bin", root / "big1-hardlink.bin")
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    src = _make_source(tmp_path / "src")
    repo_dir = tmp_path / "repo"
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",  # nothing listens: the audit stays local
        key_file=tmp_path / "key",
        targets={"t": LocalTargetConfig(path=str(repo_dir))},
        extra="pack_size = 262144\nindex_every_packs = 4\n",
    )
    r = Repo(tmp_path, src, repo_dir, cfg, tmp_path / "key", "")
    code, _, err = r.run("backup", str(src), "--dataset", "d", "--type", "full")
    assert code == 0, err
    r.backup_id = next((repo_dir / "manifests").iterdir()).name
    return r


def _packs_of(r: Repo, otype: int) -> list[Path]:
    """Packs holding only blobs of ``otype`` (read through the library's own index)."""

    async def find() -> list[Path]:
        key = load_key_file(r.key_file)
        repo = await Repository.open(LocalTarget("t", r.repo), key)
        kinds: dict[bytes, set[int]] = {}
        for _, e in repo.index.items():  # noqa: PERF102 (ChunkIndex has no values())
            kinds.setdefault(e.pack_id, set()).add(e.otype)
        return sorted(
            r.repo / fmt.pack_key(pid) for pid, types in kinds.items() if types == {otype}
        )

    return asyncio.run(find())


def _pack_holding(r: Repo, content: bytes) -> Path:
    del content
    packs = _packs_of(r, fmt.OT_DATA)
    return packs[len(packs) // 2]


def _check_partial_restore(r: Repo, dest: str) -> set[str]:
    """Restore everything; every intact file is byte-identical; return the damaged."""
    code, _, err = r.restore(dest)
    assert code == 1, err
    assert "Traceback" not in err
    out = r.tmp / dest
    source = _files(r.src)
    restored = _files(out)
    damaged = {k[: -len(".damaged")] for k in restored if k.endswith(".damaged")}
    assert damaged, "a damaged restore must name what it could not restore"
    for name in damaged:
        assert name not in restored  # never left looking complete
        assert f"damaged: {name}" in err
    intact = {k: v for k, v in restored.items() if not k.endswith(".damaged")}
    assert len(intact) + len(damaged) == len(source)
    for name, digest in intact.items():
        assert source[name] == digest, name
    # metadata ran for everything written, damaged files included
    for name in [*intact, *(f"{d}.damaged" for d in damaged)]:
        assert (out / name).stat().st_mtime_ns == (
            r.src / name.removesuffix(".damaged")
        ).stat().st_mtime_ns
    assert (out / "link").is_symlink()
    return damaged


def _verify(r: Repo) -> tuple[int, str]:
    code, out, err = r.run("verify", "--all", "--read-data")
    return code, out + err


def _next_backup_keeps_old(r: Repo) -> None:
    code, _, err = r.run("backup", str(r.src), "--dataset", "d")
    assert code == 0, err
    assert len(list((r.repo / "keys").iterdir())) == 1  # no new data key: no re-init
    code, _, err = r.run("verify", "--all", "--read-data")
    assert code == 0, err


def test_flipped_byte_in_pack(repo: Repo) -> None:
    pack = _pack_holding(repo, b"")
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x40
    pack.write_bytes(bytes(data))

    code, text = _verify(repo)
    assert code == 1 and pack.name[:16] in text and "repo repair packs" in text
    damaged = _check_partial_restore(repo, "out")

    code, out, err = repo.run("repair", "packs")
    assert code == 1, out + err  # some chunks are lost for good and named
    assert any(name in err for name in damaged)
    code, out, err = repo.run("repair", "snapshots")
    assert code == 0, out + err
    assert "rewrote backup" in out
    assert _verify(repo)[0] == 0
    # the rewritten backup restores cleanly without the lost files
    code, _, err = repo.restore("after")
    assert code == 0, err
    after = _files(repo.tmp / "after")
    assert set(after) == set(_files(repo.src)) - damaged
    _next_backup_keeps_old(repo)


@pytest.mark.parametrize("how", ["truncate", "delete", "swap"])
def test_broken_pack(repo: Repo, how: str) -> None:
    packs = _packs_of(repo, fmt.OT_DATA)
    a, b = packs[1], packs[-2]
    if how == "truncate":
        a.write_bytes(a.read_bytes()[: a.stat().st_size // 2])
    elif how == "delete":
        a.unlink()
    else:
        tmp = a.with_name("swap")
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
    code, text = _verify(repo)
    assert code == 1 and "repo repair packs" in text
    damaged = _check_partial_restore(repo, "out")
    assert damaged
    code, out, err = repo.run("repair", "packs")
    code, out, err = repo.run("repair", "snapshots")
    assert code == 0, out + err
    assert _verify(repo)[0] == 0
    _next_backup_keeps_old(repo)


@pytest.mark.parametrize("how", ["damage", "delete"])
def test_index_segment(repo: Repo, how: str) -> None:
    segments = sorted((repo.repo / "index").iterdir())
    seg = segments[0]
    if how == "damage":
        data = bytearray(seg.read_bytes())
        data[40] ^= 1
        seg.write_bytes(bytes(data))
    else:
        seg.unlink()
    # all data is intact: restores (full and --path) still work, read from pack headers
    code, _, err = repo.restore("out")
    assert code == 0, err
    assert _files(repo.tmp / "out") == _files(repo.src)
    code, _, err = repo.run("restore", repo.backup_id, "--to", str(repo.tmp / "p"), "--path", "d3")
    assert code == 0, err
    code, out, err = repo.run("repair", "index")
    assert code == 0, out + err
    assert seg.name not in {p.name for p in (repo.repo / "index").iterdir()}
    code, text = _verify(repo)
    assert code == 0, text
    code, out, err = repo.run("prune", "--keep-last", "5", "--margin", "0")
    assert code == 0, out + err
    _next_backup_keeps_old(repo)


def test_missing_config_is_damage_not_empty(repo: Repo) -> None:
    (repo.repo / "config").unlink()
    keys_before = sorted(p.name for p in (repo.repo / "keys").iterdir())
    # the next backup refuses to initialise over the old backups
    code, _, err = repo.run("backup", str(repo.src), "--dataset", "d")
    assert code != 0
    assert "damaged repository" in err and "repo repair config" in err
    assert "Traceback" not in err
    assert not (repo.repo / "config").exists()
    assert sorted(p.name for p in (repo.repo / "keys").iterdir()) == keys_before
    # readers open it from the copy and say so
    code, _, err = repo.restore("out")
    assert code == 0, err
    assert _files(repo.tmp / "out") == _files(repo.src)
    code, out, err = repo.run("repair", "config")
    assert code == 0, out + err
    assert (repo.repo / "config").exists()
    assert _verify(repo)[0] == 0
    _next_backup_keeps_old(repo)


def test_config_and_its_copy_lost_come_back_from_the_key_file(repo: Repo) -> None:
    (repo.repo / "config").unlink()
    shutil.rmtree(repo.repo / "recovery")
    assert "recovery" in json.loads(repo.key_file.read_text())
    code, _, err = repo.run("verify", "--all")
    assert code != 0 and "repo repair config" in err and "Traceback" not in err
    code, out, err = repo.run("repair", "config")
    assert code == 0, out + err
    code, _, err = repo.restore("out")
    assert code == 0, err
    assert _files(repo.tmp / "out") == _files(repo.src)
    _next_backup_keeps_old(repo)


def test_lost_data_key(repo: Repo) -> None:
    for k in (repo.repo / "keys").iterdir():
        k.unlink()
    code, _, err = repo.restore("out")  # the copy in recovery/keys/ opens it
    assert code == 0, err
    assert _files(repo.tmp / "out") == _files(repo.src)
    # both copies in the repository gone: the key file's copy brings it back
    shutil.rmtree(repo.repo / "recovery" / "keys")
    code, _, err = repo.run("list")
    assert code != 0 and "repo repair config" in err and "Traceback" not in err
    code, out, err = repo.run("repair", "config")
    assert code == 0, out + err
    assert len(list((repo.repo / "keys").iterdir())) == 1
    assert _verify(repo)[0] == 0
    _next_backup_keeps_old(repo)


def test_damaged_manifest(repo: Repo) -> None:
    code, _, err = repo.run("backup", str(repo.src), "--dataset", "d")
    assert code == 0, err
    m = repo.repo / "manifests" / repo.backup_id
    data = bytearray(m.read_bytes())
    data[50] ^= 1
    m.write_bytes(bytes(data))
    code, text = _verify(repo)
    assert code == 1 and f"manifests/{repo.backup_id}" in text
    # the other backup restores
    other = next(p.name for p in (repo.repo / "manifests").iterdir() if p.name != repo.backup_id)
    code, _, err = repo.run("restore", other, "--to", str(repo.tmp / "other"))
    assert code == 0, err
    assert _files(repo.tmp / "other") == _files(repo.src)
    code, out, err = repo.run("repair", "snapshots")
    assert code == 1 and repo.backup_id in err  # named, beyond repair
    # pruning the others is not blocked by it
    code, out, err = repo.run("prune", "--forget", repo.backup_id, "--margin", "0")
    assert code == 0, out + err
    assert _verify(repo)[0] == 0


def _tree_blob(r: Repo, backup_id: str) -> tuple[Path, int]:
    """(pack, offset inside it) of the backup's first tree chunk, from the index."""

    async def find() -> tuple[Path, int]:
        repo = await Repository.open(LocalTarget("t", r.repo), load_key_file(r.key_file))
        m = await repo.load_manifest(backup_id)
        e = repo.index[m.tree[0]]
        return r.repo / fmt.pack_key(e.pack_id), e.offset + e.length // 2

    return asyncio.run(find())


def test_damaged_tree_blob(repo: Repo) -> None:
    other = repo.tmp / "src2"
    other.mkdir()
    (other / "note.txt").write_text("another dataset\n")
    code, _, err = repo.run("backup", str(other), "--dataset", "d2")
    assert code == 0, err
    pack, at = _tree_blob(repo, repo.backup_id)
    data = bytearray(pack.read_bytes())
    data[at] ^= 1
    pack.write_bytes(bytes(data))
    code, text = _verify(repo)
    assert code == 1 and pack.name[:16] in text
    code, _, err = repo.restore("out")
    assert code != 0 and "Traceback" not in err and "tree" in err
    # the other backup is untouched
    second = next(p.name for p in (repo.repo / "manifests").iterdir() if "-d2-" in p.name)
    code, _, err = repo.run("restore", second, "--to", str(repo.tmp / "second"))
    assert code == 0, err
    assert _files(repo.tmp / "second") == _files(other)
    repo.run("repair", "packs")
    code, out, err = repo.run("repair", "snapshots")
    assert code == 1 and repo.backup_id in err and "beyond repair" in out
