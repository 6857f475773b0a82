"""``repo verify`` finds damage a restore would hit, names the damaged object, and keeps
going: every damaged pack of a run is reported, not only the first."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format import spec as fmt
from engine.index import IndexEntry
from engine.keys.files import create_key_file, load_key_file
from engine.maintenance.prune import forget
from engine.maintenance.verify import VerifyReport, choose_packs, verify
from engine.maintenance.verify_open import open_for_verify
from engine.repository import Repository, WriteOptions
from engine.storage.base import ObjectInfo
from engine.storage.local import LocalTarget
from mosaic.commands.repo.verify import _summary
from shared.config.targets import LocalTargetConfig
from shared.wire.sources import FilesSource
from tests.harness import agent_toml, cli, make_tree

PACK_SIZE = 1 << 20


@dataclass
class Setup:
    repo_dir: Path
    config: Path
    source: Path

    def verify(self, *args: str) -> tuple[int, str, str]:
        proc = cli("repo", "verify", "--config", str(self.config), *args)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, proc.stdout, proc.stderr

    def pack_path(self, pack_id: bytes) -> Path:
        return self.repo_dir / fmt.pack_key(pack_id)

    async def open(self) -> Repository:
        key = load_key_file(self.repo_dir.parent / "repo.key")
        return await Repository.open(LocalTarget("t", self.repo_dir), key)

    async def packs(self) -> dict[bytes, list[tuple[bytes, IndexEntry]]]:
        """Pack id → its blobs (chunk id, index entry), by offset."""
        out: dict[bytes, list[tuple[bytes, IndexEntry]]] = {}
        for chunk_id, e in (await self.open()).index.items():
            out.setdefault(e.pack_id, []).append((chunk_id, e))
        return {p: sorted(b, key=lambda b: b[1].offset) for p, b in out.items()}

    async def data_packs(self) -> list[bytes]:
        """Packs without tree blobs (damaging them leaves the trees readable)."""
        packs = await self.packs()
        return sorted(
            p for p, blobs in packs.items() if all(e.otype == fmt.OT_DATA for _, e in blobs)
        )


async def _setup(tmp_path: Path, backups: tuple[str, ...] = ("b1",)) -> Setup:
    src = make_tree(tmp_path / "src", big_mib=12)
    (src / "twins").mkdir()
    rnd = random.Random(3)
    for i in range(3):  # equal-length incompressible chunks, so two can swap places
        (src / "twins" / f"twin-{i}.bin").write_bytes(rnd.randbytes(3000))
    key_file = tmp_path / "repo.key"
    master = create_key_file(key_file)
    repo_dir = tmp_path / "repo"
    repo = await Repository.open(
        LocalTarget("t", repo_dir), master, create=True, options=WriteOptions(pack_size=PACK_SIZE)
    )
    for backup_id in backups:
        spec = BackupSpec(
            backup_id=backup_id, dataset="d", agent="a", source=FilesSource(path=str(src))
        )
        await backup_dataset(repo, spec)
    config = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=key_file,
        targets={"t": LocalTargetConfig(path=str(repo_dir))},
        extra=f"pack_size = {PACK_SIZE}",
    )
    return Setup(repo_dir, config, src)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mosaic-backup: error: verify: ")
    return lines[0]


async def test_clean_repository_passes(tmp_path: Path) -> None:
    s = await _setup(tmp_path)
    n_packs = len(await s.packs())
    assert n_packs >= 4 and len(await s.data_packs()) >= 2  # the damage tests need several

    code, out, err = s.verify("b1")
    assert (code, err) == (0, "")
    assert "no damage found" in out

    code, out, err = s.verify("--all", "--read-data")
    assert (code, err) == (0, "")
    assert f"read {n_packs} packs" in out and "no damage found" in out


async def test_every_damaged_pack_is_named_in_one_run(tmp_path: Path) -> None:
    s = await _setup(tmp_path)
    packs = await s.packs()
    flipped, truncated = (await s.data_packs())[:2]
    _flip(s.pack_path(flipped), packs[flipped][0][1].offset + 50)  # inside the first blob
    cut = s.pack_path(truncated)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    code, out, err = s.verify("b1", "--read-data")
    assert code == 1
    assert fmt.pack_key(flipped) in out and fmt.pack_key(truncated) in out
    assert "authentication failed" in out and "truncated" in out
    line = _one_error_line(err)
    assert "2 damaged objects" in line
    # Each damaged pack names its repair, and the summary line says it once.
    repair = "repair: mosaic-backup repo repair packs, then mosaic-backup repo repair snapshots"
    assert out.count(repair) == 3 and line.endswith(repair)

    # Without reading data, the length check still finds the truncated pack (only).
    code, out, err = s.verify("b1")
    assert code == 1
    assert fmt.pack_key(truncated) in out and fmt.pack_key(flipped) not in out


async def test_missing_pack_is_found_without_reading_data(tmp_path: Path) -> None:
    s = await _setup(tmp_path)
    repo = await s.open()
    nodes = await repo.read_tree(await repo.load_manifest("b1"))
    big = next(n for n in nodes if n.path == b"big.bin")
    entry = repo.index[big.chunks[0]]
    s.pack_path(entry.pack_id).unlink()

    code, out, err = s.verify("b1", "--detailed")
    assert code == 1
    assert fmt.pack_key(entry.pack_id) in out and "missing from the target" in out
    assert "big.bin" in out and "big-copy.bin" in out  # --detailed: the files it breaks
    assert " read " not in out  # structural only: no pack downloaded
    _one_error_line(err)


async def test_swapped_blobs_inside_a_pack_are_caught(tmp_path: Path) -> None:
    s = await _setup(tmp_path)
    pairs = [
        (pack_id, a, b)
        for pack_id, blobs in (await s.packs()).items()
        for i, a in enumerate(blobs)
        for b in blobs[i + 1 :]
        if a[1].length == b[1].length and a[1].otype == b[1].otype == fmt.OT_DATA
    ]
    assert pairs, "the twin files should give two equal-length blobs in one pack"
    pack_id, (_, ea), (_, eb) = pairs[0]
    path = s.pack_path(pack_id)
    data = bytearray(path.read_bytes())
    blob_a = data[ea.offset : ea.offset + ea.length]
    data[ea.offset : ea.offset + ea.length] = data[eb.offset : eb.offset + eb.length]
    data[eb.offset : eb.offset + eb.length] = blob_a
    path.write_bytes(bytes(data))

    code, out, _ = s.verify("b1", "--read-data", "--detailed")
    assert code == 1
    assert fmt.pack_key(pack_id) in out
    assert out.count("authentication failed") >= 2  # each blob fails under the other's id
    assert "2 files" in out and "twins/twin-" in out


async def test_swapped_pack_names_are_caught(tmp_path: Path) -> None:
    s = await _setup(tmp_path)
    a, b = (await s.data_packs())[:2]
    pa, pb = s.pack_path(a), s.pack_path(b)
    data_a = pa.read_bytes()
    pa.write_bytes(pb.read_bytes())
    pb.write_bytes(data_a)

    code, out, err = s.verify("b1", "--read-data")
    assert code == 1
    assert fmt.pack_key(a) in out and fmt.pack_key(b) in out
    assert "does not match its name" in out
    _one_error_line(err)


async def test_damaged_manifest_is_named_and_the_rest_still_checked(tmp_path: Path) -> None:
    s = await _setup(tmp_path, backups=("b1", "b2"))
    _flip(s.repo_dir / "manifests" / "b1", 40)

    code, out, err = s.verify("--all", "--read-data")
    assert code == 1
    assert "manifests/b1" in out
    assert "checked 2 backups" in out and "1 damaged object, affecting 1 backup" in out
    _one_error_line(err)


async def test_damaged_index_segment_is_named(tmp_path: Path) -> None:
    s = await _setup(tmp_path)
    (segment,) = (s.repo_dir / "index").iterdir()
    _flip(segment, 40)

    code, out, err = s.verify("--all")
    assert code == 1
    assert f"index/{segment.name}" in out
    assert "in no index segment" in out  # and what that loses: the chunks it listed
    assert "repair: mosaic-backup repo repair index" in _one_error_line(err)


async def test_subset_of_all_packs_equals_full_read(tmp_path: Path) -> None:
    s = await _setup(tmp_path)
    damaged = (await s.data_packs())[0]
    _flip(s.pack_path(damaged), 60)
    n_packs = len(await s.packs())

    full = s.verify("b1", "--read-data")
    assert full[0] == 1 and fmt.pack_key(damaged) in full[1]
    assert s.verify("b1", "--subset", "100%") == full

    first = s.verify("b1", "--subset", "40%", "--seed", "7")
    assert "seed 7" in first[1]
    assert f"read {-(-n_packs * 40 // 100)} packs" in first[1]
    assert s.verify("b1", "--subset", "40%", "--seed", "7") == first


def test_subset_choice_is_seeded() -> None:
    packs = [bytes([i]) * 32 for i in range(50)]
    assert choose_packs(packs, 10, seed=1) == choose_packs(list(reversed(packs)), 10, seed=1)
    assert len(choose_packs(packs, 10, seed=1)) == 5
    assert choose_packs(packs, 10, seed=1) != choose_packs(packs, 10, seed=2)
    assert choose_packs(packs, 100, seed=1) == sorted(packs)
    assert len(choose_packs(packs[:3], 1, seed=1)) == 1  # never zero of a non-empty set


def test_backup_id_or_all_is_required(tmp_path: Path) -> None:
    proc = cli("repo", "verify", "--config", str(tmp_path / "agent.toml"))
    assert proc.returncode == 2 and "BACKUP_ID" in proc.stderr


# --- damage only when certain -----------------------------------------------------------


class _Hooked(LocalTarget):
    """The real disk, with an action run just before the first read of a chosen key
    (where a concurrent prune lands between verify's steps, without relying on timing),
    and keys whose first read comes back with one byte flipped (a garbled transfer)."""

    def __init__(self, root: Path) -> None:
        super().__init__("t", root)
        self.before: dict[tuple[str, str], Callable[[], Awaitable[None]]] = {}
        self.garble: set[str] = set()

    async def _first(self, op: str, key: str) -> None:
        hook = self.before.pop((op, key), None)
        if hook is None and key.startswith(fmt.DATA_PREFIX):
            hook = self.before.pop((op, fmt.DATA_PREFIX), None)
        if hook is not None:
            await hook()

    def _maybe_garble(self, key: str, data: bytes) -> bytes:
        if key not in self.garble or not data:
            return data
        self.garble.discard(key)
        return bytes([data[0], data[1] ^ 0x01, *data[2:]])

    async def get(self, key: str) -> bytes:
        await self._first("get", key)
        return self._maybe_garble(key, await super().get(key))

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        await self._first("get", key)
        return self._maybe_garble(key, await super().get_range(key, offset, length))

    async def stat(self, key: str) -> ObjectInfo | None:
        await self._first("stat", key)
        return await super().stat(key)


async def _hooked(s: Setup) -> tuple[_Hooked, Repository, VerifyReport]:
    target = _Hooked(s.repo_dir)
    repo, found = await open_for_verify(target, load_key_file(s.repo_dir.parent / "repo.key"))
    return target, repo, found


async def test_what_reads_garbled_once_is_read_again_and_not_reported(tmp_path: Path) -> None:
    s = await _setup(tmp_path)
    target, repo, found = await _hooked(s)
    manifest = await repo.load_manifest("b1")
    tree_pack = repo.index[manifest.tree[0]].pack_id
    target.garble |= {fmt.pack_key(tree_pack), fmt.pack_key((await s.data_packs())[0])}

    rep = await verify(repo, ["b1"], read_data=True, found=found)
    assert rep.ok and rep.complete, rep.problems
    assert rep.rereads == 2  # the tree blob (range read) and a whole pack
    assert not target.garble  # both garbles were served


async def test_backup_forgotten_before_its_manifest_is_read_is_skipped(tmp_path: Path) -> None:
    s = await _setup(tmp_path, backups=("b1", "b2"))
    target, repo, found = await _hooked(s)

    async def prune_b2() -> None:  # listed by verify, then forgotten before it is read
        await forget(await s.open(), ["b2"])

    target.before[("get", "manifests/b2")] = prune_b2
    rep = await verify(repo, None, read_data=True, found=found)
    assert not target.before  # the prune ran
    assert rep.ok and rep.complete, rep.problems
    assert (rep.forgotten, rep.backups) == (["b2"], ["b1"])
    line = _summary(rep)
    assert "checked 1 backup" in line and "(1 backup forgotten during verify, skipped)" in line
    assert line.endswith("no damage found")


async def test_backup_forgotten_and_its_packs_deleted_mid_verify_is_not_damage(
    tmp_path: Path,
) -> None:
    s = await _setup(tmp_path)
    (s.source / "new.bin").write_bytes(random.Random(5).randbytes(3 << 20))  # only in b2
    writer = await Repository.open(
        LocalTarget("t", s.repo_dir),
        load_key_file(s.repo_dir.parent / "repo.key"),
        options=WriteOptions(pack_size=PACK_SIZE),
    )
    spec = BackupSpec(
        backup_id="b2", dataset="d", agent="a", source=FilesSource(path=str(s.source))
    )
    await backup_dataset(writer, spec)
    target, repo, found = await _hooked(s)
    b1 = await repo.load_manifest("b1")
    b1_packs = {repo.index[c].pack_id for n in await repo.read_tree(b1) for c in n.chunks}
    b1_packs |= {repo.index[c].pack_id for c in b1.tree}
    only_b2 = sorted({e.pack_id for _, e in repo.index.items()} - b1_packs)
    assert only_b2, "b2's new file should be in packs of its own"

    async def prune_b2() -> None:  # after verify read both manifests: forget, then GC
        await forget(await s.open(), ["b2"])
        for pack_id in only_b2:
            s.pack_path(pack_id).unlink()

    target.before[("stat", fmt.DATA_PREFIX)] = prune_b2
    rep = await verify(repo, None, read_data=True, found=found)
    assert not target.before
    assert rep.ok and rep.complete, rep.problems
    assert rep.forgotten == ["b2"] and rep.backups == ["b1"]
