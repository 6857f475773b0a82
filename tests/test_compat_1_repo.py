"""The frozen repository in tests/data/compat-1/ (every object kind: packs, index
segments, manifests, trees, data keys incl. a rotated one, a write-only recipient and
session key, a MariaDB log chain) still lists, restores byte-identical, verifies, refuses
the write-only key, and takes new backups — as every later version must.

The fixture was written ONCE by bench/make_compat_fixture.py (tests/data/README.md says
how and by which commit) and is never regenerated: it is what users have on disk.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from engine.backup.cutter import Cutter
from engine.keys.files import load_key_file
from engine.logchain import base_of, log_backups
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import LocalTarget
from tests.harness import cli

DATA = Path(__file__).parent / "data" / "compat-1"
EXPECTED: dict[str, Any] = json.loads((DATA / "expected.json").read_text())
BACKUPS: dict[str, dict[str, Any]] = {b["backup_id"]: b for b in EXPECTED["backups"]}
BASE_ID, LOG_ID = EXPECTED["log_chain"]

# The cuts of random.Random(1).randbytes(3 MiB) with the fixture repository's chunker
# (its seed and sizes are in its config) and their keyed-BLAKE3 chunk ids. A change in
# pyfastcdc's cut points or in the chunk-id hash breaks deduplication against every
# existing repository: this list must never change.
PINNED = [
    (821667, "6819bd460571dd4e1f6f811f8e873d45aaf175f7d926a944a929c2e0fbf49eb4"),
    (452800, "c532193ad44f02c6735b0796b0e0e8fc25cf39bd429e9d703506828381cc59b7"),
    (392408, "3130eb0b68ef08faf180adae9ba94de242350a6b12ca6c8084ce60f964b40d73"),
    (1220108, "fae13b8711b89c96a5948872d1a57053596ee41a530b5a9807445eedbd69584c"),
    (258745, "2a6846bd2b6232d927d20a424b7eb8e027cbf10d083fa9feeccb45b299124933"),
]
PINNED_INPUT = 3 << 20


def _by(dataset: str, backup_type: str) -> str:
    (bid,) = [
        b["backup_id"]
        for b in EXPECTED["backups"]
        if b["dataset"] == dataset and b["backup_type"] == backup_type
    ]
    return str(bid)


class Fixture:
    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "repo"
        shutil.copytree(DATA / "repo", self.repo, symlinks=True)
        self.key = tmp / "full.key"
        self.wo_key = tmp / "write-only.key"
        for name, dest in (("full.key", self.key), ("write-only.key", self.wo_key)):
            shutil.copy(DATA / name, dest)
            dest.chmod(0o600)
        self.cfg = self._toml(tmp / "agent.toml", "compat", self.key, tmp / "state")
        self.wo_cfg = self._toml(tmp / "wo.toml", "compat-wo", self.wo_key, tmp / "wo-state")

    def _toml(self, path: Path, name: str, key: Path, state: Path) -> Path:
        path.write_text(
            f'name = "{name}"\nnats_url = "nats://127.0.0.1:1"\nkey_file = "{key}"\n'
            f'state_dir = "{state}"\n[targets.t]\ntype = "local"\npath = "{self.repo}"\n'
        )
        return path

    async def open(self) -> Repository:
        return await Repository.open(LocalTarget("t", self.repo), load_key_file(self.key))


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    return Fixture(tmp_path)


def _run(cfg: Path, *args: str) -> str:
    p = cli("repo", *args, "--config", str(cfg))
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def _layout(root: Path) -> dict[str, object]:
    """Every entry under ``root``: a file's bytes, a symlink's target, or "dir"."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("symlink", os.readlink(p))
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


def _source(*, without: tuple[str, ...] = ()) -> dict[str, object]:
    # git keeps no empty folder: the source had one, and the backups hold it
    found = {**_layout(DATA / "source"), "empty": "dir"}
    return {k: v for k, v in found.items() if k not in without}


async def test_every_backup_lists_and_reads_as_it_was_written(fx: Fixture) -> None:
    listed = _run(fx.cfg, "list")
    assert all(bid in listed for bid in BACKUPS), listed
    repo = await fx.open()
    try:
        assert sorted(await repo.list_manifests()) == sorted(BACKUPS)
        for bid, want in BACKUPS.items():
            m = await repo.load_manifest(bid)
            got = (m.dataset, m.backup_type, m.parent, type(m.source).__name__)
            assert got == (
                want["dataset"],
                want["backup_type"],
                want["parent"],
                want["source_type"],
            )
            tree = [
                {
                    "path": n.path.decode(),
                    "type": n.type,
                    "size": n.size,
                    "chunks": [c.hex() for c in n.chunks],
                    "target": n.target.decode() if n.target else None,
                }
                for n in await repo.read_tree(m)
            ]
            assert tree == want["tree"], bid
        # the rotation is kept: the newer data key stays current for new backups
        assert repo.keys.current.hex() == BACKUPS[_by("rotated", "full")]["data_key"]
    finally:
        await repo.target.aclose()


def test_restores_are_byte_identical_under_the_old_and_the_rotated_data_key(
    fx: Fixture, tmp_path: Path
) -> None:
    full, incr = _by("files", "full"), _by("files", "incremental")
    rotated, wo = _by("rotated", "full"), _by("writeonly", "incremental")
    old_kid = BACKUPS[full]["data_key"]
    assert BACKUPS[incr]["data_key"] == old_kid != BACKUPS[rotated]["data_key"]
    for bid, want in (
        (full, _source(without=("added.txt",))),  # the full backup excluded it
        (incr, _source()),
        (rotated, _layout(DATA / "source" / "docs")),  # sealed with the rotated key
        (wo, _source()),  # written with the write-only key, read with the full one
    ):
        out = tmp_path / f"out-{bid}"
        _run(fx.cfg, "restore", bid, "--to", str(out))
        assert _layout(out) == want, bid
    _run(fx.cfg, "verify", "--all", "--read-data")


def test_the_write_only_key_cannot_read_but_still_backs_up(fx: Fixture, tmp_path: Path) -> None:
    for args in (("restore", _by("files", "full"), "--to", str(tmp_path / "no")), ("list",)):
        p = cli("repo", *args, "--config", str(fx.wo_cfg))
        assert p.returncode != 0, p.stdout
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "write-only key" in lines[0], p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "no").exists()

    src = tmp_path / "src"
    shutil.copytree(DATA / "source", src, symlinks=True)
    (src / "empty").mkdir(exist_ok=True)
    (src / "later.txt").write_text("written by this version with the frozen write-only key\n")
    _run(fx.wo_cfg, "backup", str(src), "--dataset", "writeonly")
    _run(fx.cfg, "backup", str(src), "--dataset", "files")  # and with the full key
    new = sorted(set(os.listdir(fx.repo / "manifests")) - set(BACKUPS))
    assert len(new) == 2
    for bid in new:
        out = tmp_path / f"out-{bid}"
        _run(fx.cfg, "restore", bid, "--to", str(out))
        assert _layout(out) == _layout(src)
    _run(fx.cfg, "verify", "--all", "--read-data")


async def test_the_log_chain_is_found_and_its_logs_restore_byte_identical(
    fx: Fixture, tmp_path: Path
) -> None:
    repo = await fx.open()
    try:
        log = await repo.load_manifest(LOG_ID)
        base = await base_of(repo, log)
        assert base.backup_id == BASE_ID and base.backup_type == "full"
        assert [m.backup_id for m in await log_backups(repo, base)] == [LOG_ID]
        assert log.tier == "translog" and log.finished_at >= base.finished_at
        out = tmp_path / "logs"
        await restore_tree(repo, log, out)
        assert _layout(out) == _layout(DATA / "logs")
        xb = tmp_path / "base"
        await restore_tree(repo, base, xb)
        (node,) = [n for n in BACKUPS[BASE_ID]["tree"] if n["type"] == "file"]
        assert (xb / node["path"]).stat().st_size == node["size"]
        assert len(node["chunks"]) > 1
    finally:
        await repo.target.aclose()


async def test_chunk_ids_of_a_fixed_input_are_pinned(fx: Fixture, tmp_path: Path) -> None:
    data = random.Random(1).randbytes(PINNED_INPUT)
    path = tmp_path / "in" / "pinned.bin"
    path.parent.mkdir()
    path.write_bytes(data)
    repo = await fx.open()
    try:
        with path.open("rb", buffering=0) as f:
            cuts = [
                (len(c), repo.keys.chunk_id(c).hex()) for c in Cutter(repo.chunker()).cut_file(f)
            ]
        assert cuts == PINNED
        assert [[n, i] for n, i in PINNED] == EXPECTED["pinned_chunks"]
    finally:
        await repo.target.aclose()
    # and a real backup of it stores exactly those chunks
    p = cli("repo", "backup", "--config", str(fx.cfg), str(path.parent), "--dataset", "pin")
    assert p.returncode == 0, p.stderr
    repo = await fx.open()
    try:
        (bid,) = [b for b in await repo.list_manifests() if b.startswith("local-pin-")]
        (node,) = [n for n in await repo.read_tree(await repo.load_manifest(bid)) if n.chunks]
        assert [c.hex() for c in node.chunks] == [i for _, i in PINNED]
    finally:
        await repo.target.aclose()
