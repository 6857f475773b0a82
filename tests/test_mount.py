"""``repo mount`` serves the backups as a read-only FUSE file system: every file reads
byte-identical with its mode, size and mtime, a range in the middle of a large file
reads only the chunks under it, writes fail with EROFS, SIGTERM / SIGINT / fusermount3
unmount with exit 0, and a bad mount point is one line with nothing mounted.

Real repository, real CLI process, real kernel mount (/dev/fuse, fusermount3)."""

from __future__ import annotations

import argparse
import errno
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.restore.mountfs import BackupTree
from mosaic.commands.repo._common import opened
from shared.config.targets import LocalTargetConfig
from tests.harness import REPO_ROOT, agent_toml, cli

T0 = 1_714_557_600  # 2024-05-01 10:00:00 UTC
BIG = 6 << 20  # several chunks at the default 1 MiB average
MOUNT = [sys.executable, "-m", "mosaic.cli", "repo", "mount"]


@dataclass
class Repo:
    config: Path
    src: Path
    first: str  # dataset files: first backup (old content of a/notes.txt)
    second: str  # dataset files: second backup (the tree as it is in src)
    other: str  # dataset other


def _utime(path: Path, t: int) -> None:
    os.utime(path, ns=(t * 10**9 + 123_456_789, t * 10**9 + 123_456_789), follow_symlinks=False)


def _make_tree(src: Path) -> None:
    rnd = random.Random(13)
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "a" / "notes.txt").write_text("first version\n")
    (src / "a" / "b" / "c" / "deep.json").write_text('{"k": [1, 2, 3]}\n' * 50)
    (src / "bin.dat").write_bytes(bytes(range(256)) * 3 + b"\0\0\xff")
    (src / "big.bin").write_bytes(rnd.randbytes(BIG))
    (src / "empty.txt").write_bytes(b"")
    (src / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "db.env").write_text("PASSWORD=readable-through-the-mount\n")  # a secret
    os.link(src / "bin.dat", src / "a" / "bin-hardlink.dat")
    os.symlink("a/notes.txt", src / "link-to-notes")
    os.symlink("/does/not/exist", src / "dangling")
    os.chmod(src / "script.sh", 0o750)
    os.chmod(src / "a" / "notes.txt", 0o600)
    for i, (root, dirs, files) in enumerate(sorted(os.walk(src), reverse=True)):
        for name in dirs + files:
            _utime(Path(root) / name, T0 + i * 60 + len(name))
    _utime(src, T0)


def _backup(config: Path, folder: Path, dataset: str) -> str:
    proc = cli("repo", "backup", "--config", str(config), str(folder), "--dataset", dataset)
    assert proc.returncode == 0, proc.stderr
    found = re.search(rf"local-{dataset}-\d{{8}}T\d+Z", proc.stdout)
    assert found, proc.stdout
    return found.group(0)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    tmp = tmp_path_factory.mktemp("mount")
    config = agent_toml(
        tmp / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=tmp / "repo.key",
        targets={"t": LocalTargetConfig(path=str(tmp / "repo"))},
    )
    src = tmp / "src"
    _make_tree(src)
    first = _backup(config, src, "files")
    (src / "a" / "notes.txt").write_text("second version, longer\n")
    _utime(src / "a" / "notes.txt", T0 + 86_400)
    second = _backup(config, src, "files")
    (tmp / "other").mkdir()
    (tmp / "other" / "only.txt").write_text("other dataset\n")
    other = _backup(config, tmp / "other", "other")
    return Repo(config=config, src=src, first=first, second=second, other=other)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


class Mount:
    """``mosaic-backup repo mount`` as a real process, waited for until the kernel lists
    its mount; always unmounted and ended at exit."""

    def __init__(self, repo: Repo, mountpoint: Path, *extra: str) -> None:
        self.path = mountpoint
        self.proc = subprocess.Popen(
            [*MOUNT, "--config", str(repo.config), str(mountpoint), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + 60
        while not is_mounted(mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out, err = (
                    self.proc.communicate(timeout=10) if self.proc.poll() is not None else ("", "")
                )
                self.close()
                pytest.fail(f"the mount did not appear (exit {self.proc.returncode}): {out}{err}")
            time.sleep(0.05)

    def stop(self, how: str) -> tuple[int, str, str]:
        if how == "fusermount3":
            subprocess.run(["fusermount3", "-u", str(self.path)], check=True, timeout=30)
        else:
            self.proc.send_signal(getattr(signal, how))
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], timeout=30)


@pytest.fixture(scope="module")
def mounted(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mnt = tmp_path_factory.mktemp("mnt")
    m = Mount(repo, mnt)
    try:
        yield mnt
        code, _, err = m.stop("SIGTERM")
        assert code == 0, err
    finally:
        m.close()


def _entries(root: Path) -> dict[str, os.stat_result]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = p.lstat()
    return out


def _folder_of(mnt: Path, backup_id: str) -> Path:
    target = os.readlink(mnt / "files" / "by-id" / backup_id)
    return (mnt / "files" / "by-id" / target).resolve()


def test_every_entry_reads_byte_identical_with_its_mode_size_and_mtime(
    repo: Repo, mounted: Path
) -> None:
    backup = mounted / "files" / "latest"
    want, got = _entries(repo.src), _entries(backup)
    assert sorted(got) == sorted(want)
    for rel, st in want.items():
        g = got[rel]
        assert stat.S_IFMT(g.st_mode) == stat.S_IFMT(st.st_mode), rel
        assert g.st_mtime_ns == st.st_mtime_ns, rel
        assert (g.st_uid, g.st_gid) == (st.st_uid, st.st_gid), rel
        if stat.S_ISLNK(st.st_mode):
            assert os.readlink(backup / rel) == os.readlink(repo.src / rel)
            continue
        assert stat.S_IMODE(g.st_mode) == stat.S_IMODE(st.st_mode), rel
        if stat.S_ISREG(st.st_mode):
            assert g.st_size == st.st_size, rel
            assert (backup / rel).read_bytes() == (repo.src / rel).read_bytes(), rel
    assert got["big.bin"].st_size == BIG and got["empty.txt"].st_size == 0
    # the secret file reads like any other (the mount runs with the key, as restore does)
    assert (backup / "db.env").read_text() == "PASSWORD=readable-through-the-mount\n"
    # a hard link is one inode under both names
    assert got["bin.dat"].st_ino == got["a/bin-hardlink.dat"].st_ino
    assert got["bin.dat"].st_nlink == 2


def test_each_backup_has_its_own_dated_folder_and_latest_is_the_newest(
    repo: Repo, mounted: Path
) -> None:
    assert sorted(os.listdir(mounted)) == ["files", "other"]
    by_date = sorted(os.listdir(mounted / "files" / "by-date"))
    assert len(by_date) == 2
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ(-\d+)?", n) for n in by_date)
    assert os.readlink(mounted / "files" / "latest") == f"by-date/{by_date[-1]}"
    assert sorted(os.listdir(mounted / "files" / "by-id")) == sorted([repo.first, repo.second])
    old, new = _folder_of(mounted, repo.first), _folder_of(mounted, repo.second)
    assert (old / "a" / "notes.txt").read_text() == "first version\n"
    assert (new / "a" / "notes.txt").read_text() == "second version, longer\n"
    assert new == (mounted / "files" / "latest").resolve()
    assert (mounted / "other" / "latest" / "only.txt").read_text() == "other dataset\n"


def test_a_range_in_the_middle_of_the_big_file(repo: Repo, mounted: Path) -> None:
    want = (repo.src / "big.bin").read_bytes()
    start = (BIG // 2) + 12_345
    with open(mounted / "files" / "latest" / "big.bin", "rb") as f:
        f.seek(start)
        assert f.read(300_000) == want[start : start + 300_000]
        f.seek(BIG - 10)
        assert f.read(100) == want[-10:]  # a read past the end is short
        assert f.read(100) == b""


def test_writes_fail_with_erofs(mounted: Path) -> None:
    backup = mounted / "files" / "latest"
    attempts: list[Callable[[], object]] = [
        lambda: open(backup / "a" / "notes.txt", "r+b"),
        lambda: open(backup / "new.txt", "wb"),
        lambda: os.mkdir(backup / "new-dir"),
        lambda: os.unlink(backup / "empty.txt"),
        lambda: os.rename(backup / "script.sh", backup / "moved.sh"),
        lambda: os.chmod(backup / "script.sh", 0o777),
        lambda: os.symlink("x", mounted / "files" / "new-link"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS
    assert (backup / "a" / "notes.txt").read_text() == "second version, longer\n"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3"])
def test_stopping_unmounts_and_exits_0(repo: Repo, tmp_path: Path, how: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(repo, mnt, "--dataset", "other")
    try:
        assert os.listdir(mnt) == ["other"]  # --dataset: only that dataset
        assert (mnt / "other" / "latest" / "only.txt").read_text() == "other dataset\n"
        code, out, err = m.stop(how)
    finally:
        m.close()
    assert code == 0, err
    assert f"unmounted {mnt}" in out
    assert "Traceback" not in err
    assert not is_mounted(mnt) and os.listdir(mnt) == []


def _one_line_error(repo: Repo, mountpoint: Path, *extra: str) -> str:
    proc = cli("repo", "mount", "--config", str(repo.config), str(mountpoint), *extra)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert not is_mounted(mountpoint)
    return lines[0]


def test_bad_mount_points_are_refused_in_one_line(repo: Repo, tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine\n")
    line = _one_line_error(repo, full)
    assert f"MOUNTPOINT: {full} is not empty (it holds 'keep.txt')" in line
    assert "empty folder" in line
    assert (full / "keep.txt").read_text() == "mine\n"

    missing = tmp_path / "missing"
    line = _one_line_error(repo, missing)
    assert f"MOUNTPOINT: {missing} does not exist" in line and "mkdir -p" in line
    assert not missing.exists()

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert f"MOUNTPOINT: {a_file} is not a folder" in _one_line_error(repo, a_file)


def test_a_mount_left_by_a_killed_process_is_named_with_the_fix(repo: Repo, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = Mount(repo, mnt, "--dataset", "other")
    try:
        m.proc.kill()
        m.proc.wait(timeout=30)
        proc = cli("repo", "mount", "--config", str(repo.config), str(mnt))
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            f"mosaic-backup: error: MOUNTPOINT: {mnt} is a mount whose process is gone; "
            f"unmount it first (fusermount3 -u {mnt})"
        ]
    finally:
        m.close()
    assert not is_mounted(mnt)


def test_an_unknown_dataset_is_refused_in_one_line(repo: Repo, tmp_path: Path) -> None:
    line = _one_line_error(repo, tmp_path, "--dataset", "nope")
    assert "--dataset:" in line and "'nope'" in line and "files, other" in line


async def test_a_read_fetches_only_the_chunks_under_it_and_the_cache_stays_bounded(
    repo: Repo,
) -> None:
    want = (repo.src / "big.bin").read_bytes()
    args = argparse.Namespace(config=str(repo.config), target=None)
    async with opened(args) as r:
        tree = await BackupTree.load(r, "files", cache_bytes=1)  # raised to one max chunk
        limit = tree.cache.limit
        assert limit == r.config.chunker_max
        dataset = await tree.lookup(1, b"files")
        by_date = await tree.lookup(dataset.inode, b"by-date")
        newest = (await tree.listing(by_date.inode))[-1][1]
        big = await tree.open((await tree.lookup(newest.inode, b"big.bin")).inode)
        assert big.starts is not None
        n = len(big.starts)
        assert n >= 3, "the big file should span several chunks"
        k = n // 2
        lo, hi = big.starts[k], big.starts[k + 1]
        assert await tree.read(big, lo + 1, hi - lo - 2) == want[lo + 1 : hi - 1]
        assert tree.cache.fetches == 1  # one chunk, not the file
        assert await tree.read(big, hi - 5, 10) == want[hi - 5 : hi + 5]
        assert tree.cache.fetches == 2  # chunk k from the cache, k + 1 fetched
        whole = b"".join([await tree.read(big, off, 128 << 10) for off in range(0, BIG, 128 << 10)])
        assert whole == want
        assert tree.cache.bytes <= limit
        assert tree.cache.fetches <= 2 + n  # each chunk fetched once more at most


async def _flip_a_byte_of(config: Path, dataset: str, name: bytes) -> None:
    """Damage the sealed blob of ``name``'s first chunk in the newest backup of
    ``dataset``, in place in its pack (a local target)."""
    args = argparse.Namespace(config=str(config), target=None)
    async with opened(args) as r:
        ms = [await r.load_manifest(i) for i in await r.list_manifests()]
        m = max((m for m in ms if m.dataset == dataset), key=lambda m: m.started_at)
        node = next(n for n in await r.read_tree(m) if n.path == name)
        e = r.index[node.chunks[0]]
        h = e.pack_id.hex()
        pack = Path(r.target.describe().removeprefix("local:")) / "data" / h[:2] / h
    with open(pack, "r+b") as f:
        f.seek(e.offset + e.length // 2)
        byte = f.read(1)
        f.seek(e.offset + e.length // 2)
        f.write(bytes([byte[0] ^ 0xFF]))


async def test_a_damaged_chunk_fails_the_read_with_eio_and_the_rest_reads(
    tmp_path: Path,
) -> None:
    config = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=tmp_path / "repo.key",
        targets={"t": LocalTargetConfig(path=str(tmp_path / "repo"))},
    )
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text("intact\n")
    (src / "bad.bin").write_bytes(random.Random(5).randbytes(300_000))
    _backup(config, src, "d")
    await _flip_a_byte_of(config, "d", b"bad.bin")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    repo = Repo(config=config, src=src, first="", second="", other="")
    m = Mount(repo, mnt)
    try:
        assert (mnt / "d" / "latest" / "good.txt").read_text() == "intact\n"
        with pytest.raises(OSError) as caught:
            (mnt / "d" / "latest" / "bad.bin").read_bytes()
        assert caught.value.errno == errno.EIO
        code, _, err = m.stop("SIGTERM")
    finally:
        m.close()
    assert code == 0
    assert "reading bad.bin at byte 0" in err and "authentic" in err.lower(), err
