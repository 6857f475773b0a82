"""Files that a backup cannot store as it found them are named, never silently dropped.

Sockets, FIFOs and devices are skipped with a warning; a file that changes while it is
read is stored as read and flagged; an unreadable file or folder is left out with a
warning (the rest is backed up), or fails the backup with ``on_unreadable = "fail"``.
The summary (so ``repo backup`` and the job's completed event) counts them and names the
first ones.

The tests run as root, who reads everything: the "permission denied" cases run the
backup in a process whose capability bounding set lacks CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH (``setpriv``), so a mode-000 file is as unreadable as for any agent.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import LocalTarget
from mosaic import operator
from shared.config.targets import LocalTargetConfig
from shared.wire.events import BackupCompleted
from shared.wire.sources import FilesSource
from tests.harness import REPO_ROOT, running_stack, write_toml

MIB = 1 << 20
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@contextlib.contextmanager
def _specials(root: Path) -> Iterator[None]:
    """A FIFO, a listening unix socket and a character device (/dev/null's numbers)."""
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(root / "app.sock"))
    os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    try:
        yield
    finally:
        sock.close()


async def test_special_files_are_skipped_by_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("kept\n")
    with _specials(src):
        repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
        spec = BackupSpec(backup_id="b", dataset="d", agent="a", source=FilesSource(path=str(src)))
        m = await backup_dataset(repo, spec)
    s = m.summary
    assert (s.files_skipped, s.files_unreadable, s.files_changed) == (3, 0, 0)
    got = {(w.kind, w.path): w.detail for w in s.warnings}
    assert set(got) == {("skipped", str(src / n)) for n in ("pipe", "app.sock", "null")}
    assert "FIFO" in got[("skipped", str(src / "pipe"))]
    assert "socket" in got[("skipped", str(src / "app.sock"))]
    assert "character device" in got[("skipped", str(src / "null"))]
    assert s.warning_lines()[0].startswith("warning: 3 files not stored as found")
    out = tmp_path / "out"
    await restore_tree(repo, m, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


async def test_a_file_growing_while_read_is_stored_as_read_and_flagged(tmp_path: Path) -> None:
    """A log that an application keeps appending to during the whole backup."""
    src = tmp_path / "src"
    src.mkdir()
    log_file = src / "app.log"
    first = random.Random(3).randbytes(24 * MIB)
    log_file.write_bytes(first)
    (src / "quiet.txt").write_text("never changes\n")
    stop = threading.Event()

    def append() -> None:
        with open(log_file, "ab", buffering=0) as f:
            while not stop.wait(0.001):
                f.write(b"one more line of log\n" * 50)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
        spec = BackupSpec(backup_id="b", dataset="d", agent="a", source=FilesSource(path=str(src)))
        m = await backup_dataset(repo, spec)
    finally:
        stop.set()
        writer.join()
    s = m.summary
    assert s.files_changed == 1 and s.files == 2
    [w] = s.warnings
    assert (w.kind, w.path) == ("changed", str(log_file))
    assert "changed while read" in w.detail and "stored as read" in w.detail
    out = tmp_path / "out"
    await restore_tree(repo, m, out)
    stored, final = (out / "app.log").read_bytes(), log_file.read_bytes()
    assert stored.startswith(first) and final.startswith(stored)  # a prefix, as read
    assert (out / "quiet.txt").read_text() == "never changes\n"


def _unreadable_tree(root: Path) -> Path:
    src = root / "src"
    (src / "private").mkdir(parents=True)
    (src / "ok.txt").write_text("readable\n")
    (src / "locked.txt").write_text("no one may read this\n")
    (src / "private" / "inner.txt").write_text("hidden behind the folder's mode\n")
    (src / "conf").mkdir()
    (src / "conf" / "prod.env").write_text("TOKEN=x\n")
    (src / "conf" / "app.ini").write_text("[app]\n")
    for p in (src / "locked.txt", src / "private", src / "conf" / "prod.env"):
        p.chmod(0)
    return src


def _config(tmp_path: Path) -> Path:
    return write_toml(
        tmp_path / "agent.toml",
        f'name = "a1"\nnats_url = "nats://127.0.0.1:1"\nkey_file = "{tmp_path / "repo.key"}"\n'
        f'[targets.t]\ntype = "local"\npath = "{tmp_path / "repo"}"\n',
    )


def _mosaic(*args: str, no_dac: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(NO_DAC if no_dac else []), sys.executable, "-m", "mosaic.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )


async def test_unreadable_files_are_left_out_by_name_and_the_rest_is_backed_up(
    tmp_path: Path,
) -> None:
    src = _unreadable_tree(tmp_path)
    cfg = _config(tmp_path)
    done = _mosaic("repo", "backup", "--config", str(cfg), str(src), no_dac=True)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "warning: 3 files not stored as found: 3 unreadable (left out)" in err
    assert f"unreadable {src / 'locked.txt'}: cannot read: Permission denied" in err
    assert f"unreadable {src / 'private'}: cannot list: Permission denied" in err
    assert f"unreadable {src / 'conf' / '<secret>'}: cannot read: Permission denied" in err
    assert "prod.env" not in err and "Traceback" not in err
    listed = _mosaic("repo", "list", "--config", str(cfg))
    backup_id = next(w for w in listed.stdout.split() if w.startswith("local-src-"))
    out = tmp_path / "out"
    restored = _mosaic("repo", "restore", "--config", str(cfg), backup_id, "--to", str(out))
    assert restored.returncode == 0, restored.stderr
    assert (out / "ok.txt").read_text() == "readable\n"
    assert (out / "conf" / "app.ini").read_text() == "[app]\n"
    assert not (out / "locked.txt").exists() and not (out / "conf" / "prod.env").exists()
    assert (out / "private").is_dir() and list((out / "private").iterdir()) == []


STRICT = """
import sys, anyio
from engine.backup.dataset import BackupSpec, backup_dataset
from shared.errors import SourceError
from engine.repository import Repository
from shared.wire.sources import FilesSource
from engine.storage.local import LocalTarget

async def main() -> None:
    repo = await Repository.open(LocalTarget("t", sys.argv[1]), bytes(32), create=True)
    source = FilesSource(path=sys.argv[2], on_unreadable="fail")
    try:
        await backup_dataset(repo, BackupSpec(backup_id="b", dataset="d", agent="a", source=source))
    except SourceError as exc:
        print(exc)
        sys.exit(3)
    print("manifests:", await repo.list_manifests())

anyio.run(main)
"""


async def test_strict_source_fails_on_the_first_unreadable_file(tmp_path: Path) -> None:
    src = _unreadable_tree(tmp_path)
    repo_dir = tmp_path / "repo"
    done = subprocess.run(
        [*NO_DAC, sys.executable, "-c", STRICT, str(repo_dir), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    [line] = done.stdout.splitlines()
    # the whole tree is walked before any file is read: the folder is the first failure
    assert line.startswith(f"cannot list {src / 'private'}: Permission denied")
    assert 'set on_unreadable = "warn"' in line
    (src / "private").chmod(0o755)  # now the first failure is a file, named as a secret
    again = subprocess.run(
        [*NO_DAC, sys.executable, "-c", STRICT, str(repo_dir), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert again.returncode == 3, again.stdout + again.stderr
    [line] = again.stdout.splitlines()
    assert line.startswith(f"cannot read {src / 'conf' / '<secret>'}: Permission denied")
    assert "prod.env" not in line
    repo = await Repository.open(LocalTarget("t", repo_dir), bytes(32))
    assert await repo.list_manifests() == []  # nothing half-stored


async def test_completed_event_names_the_skipped_files(nats_url: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.txt").write_text("data\n")
    quiet = Console(quiet=True)
    with _specials(src):
        target = LocalTargetConfig(path=str(tmp_path / "repo"))
        async with running_stack(nats_url, tmp_path, target, src) as st:
            done = await operator.backup(st.bus, st.dataset, "full", quiet, quiet, timeout=60)
    assert isinstance(done, BackupCompleted)
    assert done.summary.files == 1 and done.summary.files_skipped == 3
    assert {w.path for w in done.summary.warnings} == {
        str(src / n) for n in ("pipe", "app.sock", "null")
    }
