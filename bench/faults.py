"""Injected faults, counted (issue 14): for each scenario, N tries and how they ended.

    sudo .venv/bin/python bench/faults.py            # the full table (×20, ×20, ×10, ...)
    .venv/bin/python bench/faults.py --tries 2       # every scenario at most twice

Every scenario drives the real ``mosaic-backup`` CLI as separate processes (``repo
backup``, ``repo prune``, ``repo verify --read-data``, ``repo restore``) against a local
repository and kills them with SIGKILL at a *positive marker* it watches in the
repository (a lease appearing, the n-th pack written, the index swapped) — never after a
guessed sleep. After each fault it checks what a user cares about:

- survived: ``verify --read-data`` is clean, every committed backup restores
  byte-identical, and the next run (backup or prune) completes;
- detected: the fault left damage and ``verify`` reported it (nonzero exit);
- lost: a backup that had completed no longer restores byte-identical, or the next run
  fails — or a check passed while the bytes differ;
- doubled: one run left two manifests, or a killed run's manifest appeared twice.

The target is 100 % survived or detected, 0 lost, 0 doubled. tests/test_faults.py calls
each scenario once (tries = 1 or 2) so CI runs the short version. The size-limited
target needs root (``mount -t tmpfs``); the agent host runs as root too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.keys.files import create_key_file  # noqa: E402
from engine.repository import Repository  # noqa: E402
from engine.storage.local import LocalTarget  # noqa: E402
from engine.storage.open import open_target  # noqa: E402
from shared.config.targets import S3TargetConfig  # noqa: E402

PACK = 1 << 20  # 1 MiB packs: a backup of a few MiB writes several, so kills land between
FILE = 256 << 10  # one chunk per file (the chunker's average is larger)
WAIT = 60.0  # bound on every wait for a marker
_ID = re.compile(r"\blocal-[\w.-]+-\d{8}T\d+Z\b")


@dataclass
class Tally:
    scenario: str
    tries: int = 0
    survived: int = 0
    detected: int = 0
    lost: int = 0
    doubled: int = 0
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.tries} | {self.survived} | {self.detected} "
            f"| {self.lost} | {self.doubled} |"
        )

    @property
    def ok(self) -> bool:
        return self.survived + self.detected == self.tries and not (self.lost or self.doubled)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> BLAKE2 of the bytes, for every file under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.blake2b(p.read_bytes()).hexdigest()
    return out


def write_files(root: Path, seeds: range, size: int = FILE) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        (root / f"f{s}.bin").write_bytes(random.Random(s).randbytes(size))


class Repo:
    """A local repository, its key file and an agent config for the ``repo`` CLI."""

    def __init__(
        self,
        work: Path,
        repo_dir: Path | None = None,
        limit: str = "",
        extra: str = "",
        s3: S3TargetConfig | None = None,
        create: bool = True,
    ) -> None:
        self.work = work
        self.dir = repo_dir or work / "repo"
        if create:  # else: a repository and key file that exist (made by an agent)
            key = create_key_file(work / "repo.key")
            target = open_target("t", s3) if s3 else LocalTarget("t", self.dir)
            asyncio.run(Repository.open(target, key, create=True))
        rate = f'upload_limit = "{limit}"\n' if limit else ""
        section = _s3_section(s3) if s3 else f'[targets.t]\ntype = "local"\npath = "{self.dir}"\n'
        self.config = work / "agent.toml"
        self.config.write_text(
            f'name = "a1"\nnats_url = "nats://127.0.0.1:1"\nkey_file = "{work / "repo.key"}"\n'
            f"pack_size = {PACK}\n{extra}{section}{rate}"
        )
        self.expected: dict[str, dict[str, str]] = {}  # committed backup -> source digest
        self._n = 0

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mosaic.cli", "repo", *args, "--config", str(self.config)]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env()
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=_env(),
        )

    def ids(self) -> list[str]:
        done = self.cli("list")
        if done.returncode != 0:
            raise RuntimeError(f"repo list failed: {done.stdout}{done.stderr}")
        return sorted(set(_ID.findall(done.stdout)))

    def backup(self, src: Path) -> str:
        """A backup that must complete; records what it must restore to."""
        before, digest = set(self.ids()), tree_digest(src)
        done = self.cli("backup", str(src))
        if done.returncode != 0:
            raise RuntimeError(f"backup failed: {done.stdout}{done.stderr}")
        (new,) = set(self.ids()) - before
        self.expected[new] = digest
        return new

    def restores(self, backup_id: str) -> bool:
        self._n += 1
        dest = self.work / f"restore-{self._n}"
        done = self.cli("restore", backup_id, "--to", str(dest))
        ok = done.returncode == 0 and tree_digest(dest) == self.expected[backup_id]
        subprocess.run(["rm", "-rf", str(dest)], check=True)
        return ok

    def verify(self) -> bool:
        done = self.cli("verify", "--all", "--read-data")
        return done.returncode == 0 and "no damage found" in done.stdout

    def packs(self) -> int:
        return sum(1 for p in (self.dir / "data").rglob("*") if p.is_file())

    def data_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.dir / "data").rglob("*") if p.is_file())

    def leases(self) -> int:
        return sum(1 for _ in (self.dir / "locks").iterdir())

    def segments(self) -> set[str]:
        return {p.name for p in (self.dir / "index").iterdir()}


def _s3_section(c: S3TargetConfig) -> str:
    return (
        f'[targets.t]\ntype = "s3"\nbucket = "{c.bucket}"\nprefix = "{c.prefix}"\n'
        f'endpoint_url = "{c.endpoint_url}"\nregion = "{c.region}"\n'
        f'access_key_id = "{c.access_key_id}"\nsecret_access_key = "{c.secret_access_key}"\n'
    )


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


def wait_for(proc: subprocess.Popen[str], marker: Callable[[], bool]) -> bool:
    """Poll until ``marker`` holds (True) or the process ended first (False)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if marker():
            return True
        if proc.poll() is not None:
            return marker()
        time.sleep(0.002)
    raise TimeoutError(f"no marker within {WAIT:.0f} s: {proc.args!r}")


def _above(count: Callable[[], int], n: int) -> Callable[[], bool]:
    return lambda: count() > n


def _swapped(repo: Repo, old: set[str]) -> Callable[[], bool]:
    """The index swap is done: segments exist and none of the ``old`` ones is left."""
    return lambda: bool(repo.segments()) and not (repo.segments() & old)


def kill(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=WAIT)
    return out or ""


def judge(t: Tally, repo: Repo, next_ok: bool, manifests: int, why: str) -> None:
    """Score one try: the checks every fault ends with."""
    t.tries += 1
    if len(repo.ids()) > manifests:
        t.doubled += 1
        t.notes.append(f"{why}: {len(repo.ids())} manifests, at most {manifests} expected")
        return
    verified = repo.verify()
    restored = all(repo.restores(b) for b in repo.expected if b in repo.ids())
    if not restored or not next_ok:
        t.lost += 1
        t.notes.append(f"{why}: restored={restored} next run ok={next_ok}")
    elif not verified:
        t.detected += 1
        t.notes.append(f"{why}: verify reported damage")
    else:
        t.survived += 1


def backup_kill(work: Path, tries: int, seed: int = 1) -> Tally:
    """kill -9 a backup at a random point (its lease, or its n-th pack); then check, and
    the next backup completes and reuses what the killed one uploaded."""
    t, rng = Tally("backup killed -9 at a random point"), random.Random(seed)
    # an index segment every 2 packs: what a killed backup uploaded before its last
    # segment is reused by the next one (the default, 16, re-uploads up to 16 packs)
    repo, src = Repo(work, limit="24MiB/s", extra="index_every_packs = 2\n"), work / "src"
    write_files(src, range(24))
    repo.backup(src)
    reused = new_total = 0
    landed: Counter[str] = Counter()
    for i in range(tries):
        for old in src.glob(f"f{1000 * i}*.bin") if i else ():
            old.unlink()  # the tree stays 10 MiB: 4 MiB of it new in each try
        write_files(src, range(1000 * (i + 1), 1000 * (i + 1) + 16))
        packs, leases, manifests = repo.packs(), repo.leases(), len(repo.ids())
        k = rng.randint(0, 4)
        proc = repo.start("backup", str(src))
        if k == 0:
            hit = wait_for(proc, _above(repo.leases, leases))
        else:
            hit = wait_for(proc, _above(repo.packs, packs + k - 1))
        kill(proc)
        committed = set(repo.ids()) - set(repo.expected)
        for b in committed:  # finished before the kill landed: it must restore too
            repo.expected[b] = tree_digest(src)
        stored = repo.data_bytes()
        try:
            repo.backup(src)
            next_ok = True
        except RuntimeError as exc:
            next_ok = False
            t.notes.append(str(exc).splitlines()[0])
        reused += max(0, 16 * FILE - (repo.data_bytes() - stored))
        new_total += 16 * FILE
        where = "lease" if k == 0 else f"pack {k}"
        judge(t, repo, next_ok, manifests + 2, f"try {i} kill at {where} (hit={hit})")
        landed[where if hit else "after the backup ended"] += 1
    t.notes.append(f"kills landed at: {dict(sorted(landed.items()))}")
    t.notes.append(f"next backups reused {reused * 100 // max(new_total, 1)} % of new bytes")
    return t


def _prune_repo(work: Path) -> tuple[Repo, Path]:
    repo, src = Repo(work), work / "src"
    write_files(src, range(24))
    repo.backup(src)
    return repo, src


def prune_kill(work: Path, tries: int, seed: int = 2) -> Tally:
    """kill -9 a prune at its lease, at the index swap, or at its first pack deletion;
    then check, and the next prune completes (no deferral) and reclaims the garbage."""
    t, rng = Tally("prune killed -9 at a random point"), random.Random(seed)
    repo, src = _prune_repo(work)
    landed: Counter[str] = Counter()
    for i in range(tries):
        write_files(src, range(5000 + 100 * i, 5000 + 100 * i + 8))
        repo.backup(src)
        before_segs, packs, leases = repo.segments(), repo.packs(), repo.leases()
        phase = rng.choice(["lease", "swap", "delete"])
        margin = "0" if phase == "delete" else "3600"
        proc = repo.start("prune", "--keep-last", "1", "--margin", margin, "--max-unused", "0%")
        markers = {
            "lease": _above(repo.leases, leases),
            "swap": _swapped(repo, before_segs),
            "delete": _above(lambda: -repo.packs(), -packs),
        }
        hit = wait_for(proc, markers[phase])
        kill(proc)
        for gone in set(repo.expected) - set(repo.ids()):
            del repo.expected[gone]
        done = repo.cli("prune", "--keep-last", "1", "--margin", "0.1", "--max-unused", "0%")
        text = done.stdout + done.stderr
        next_ok = done.returncode == 0 and "deferred" not in text
        if not next_ok:
            t.notes.append(f"try {i}: next prune: {text.strip().splitlines()[-1:]}")
        for gone in set(repo.expected) - set(repo.ids()):
            del repo.expected[gone]
        judge(t, repo, next_ok, len(repo.expected), f"try {i} kill at {phase} (hit={hit})")
        landed[phase if hit else "after the prune ended"] += 1
    t.notes.append(f"kills landed at: {dict(sorted(landed.items()))}")
    return t


def prune_takeover(work: Path, tries: int, seed: int = 3) -> Tally:
    """The issue-14 case: a prune killed mid-GC (index swapped, waiting its margin) leaves
    its lease; the next prune must take over at once and reclaim the space."""
    del seed
    t = Tally("prune killed mid-GC, next prune takes over")
    repo, src = _prune_repo(work)
    for i in range(tries):
        write_files(src, range(7000 + 100 * i, 7000 + 100 * i + 8))
        repo.backup(src)
        before_segs, start = repo.segments(), repo.data_bytes()
        proc = repo.start("prune", "--keep-last", "1", "--margin", "3600")
        swapped = wait_for(proc, _swapped(repo, before_segs))
        kill(proc)
        for gone in set(repo.expected) - set(repo.ids()):
            del repo.expected[gone]
        done = repo.cli("prune", "--keep-last", "1", "--margin", "0.1")
        text = done.stdout + done.stderr
        took_over = "treated as gone" in text and "deferred" not in text
        reclaimed = repo.data_bytes() < start
        next_ok = done.returncode == 0 and took_over and reclaimed and swapped
        if not next_ok:
            t.notes.append(f"try {i}: swapped={swapped} took_over={took_over} {text.strip()}")
        judge(t, repo, next_ok, len(repo.expected), f"try {i}")
    return t


def two_writers(work: Path, tries: int, seed: int = 4) -> Tally:
    """Two backups of overlapping trees into one repository at the same moment."""
    t = Tally("two agents write one repository at once")
    repo = Repo(work, limit="32MiB/s")
    for i in range(tries):
        a, b = work / f"a{i}", work / f"b{i}"
        shared = range(9000 + 100 * i, 9000 + 100 * i + 8)
        write_files(a, shared)
        write_files(b, shared)
        write_files(a, range(seed * 100_000 + 2 * i * 1000, seed * 100_000 + 2 * i * 1000 + 8))
        write_files(
            b, range(seed * 100_000 + (2 * i + 1) * 1000, seed * 100_000 + (2 * i + 1) * 1000 + 8)
        )
        manifests = len(repo.ids())
        before = set(repo.ids())
        procs = [repo.start("backup", str(a)), repo.start("backup", str(b))]
        outs = [(p.communicate(timeout=300)[0], p.returncode) for p in procs]
        new = sorted(set(repo.ids()) - before)
        for bid in new:
            repo.expected[bid] = tree_digest(a if f"-a{i}-" in bid else b)
        both = all(rc == 0 for _, rc in outs) and len(new) == 2
        if not both:
            t.notes.append(f"try {i}: exit codes {[rc for _, rc in outs]}, {len(new)} new")
        judge(t, repo, both, manifests + 2, f"try {i}")
    return t


def full_target(work: Path, tries: int, seed: int = 5) -> Tally:
    """A local target on an 8 MiB tmpfs runs out of space: one clear line, exit 1, the
    repository still verifies; after space is freed (remounted larger) the next backup
    completes. Needs root (``mount -t tmpfs``)."""
    t = Tally("local target runs out of space")
    for i in range(tries):
        here = work / f"try{i}"
        mnt = here / "tgt"
        mnt.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
        try:
            _full_once(t, here, mnt, seed * 1000 + i)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=True)
    return t


def _full_once(t: Tally, here: Path, mnt: Path, seed: int) -> None:
    repo, src = Repo(here, repo_dir=mnt / "repo"), here / "src"
    write_files(src, range(4))
    repo.backup(src)
    write_files(src, range(seed, seed + 1), 24 << 20)  # 24 MiB that does not compress
    manifests = len(repo.ids())
    done = repo.cli("backup", str(src))
    said = [ln for ln in done.stderr.splitlines() if ln.strip()]
    clear = (
        done.returncode == 1
        and len(said) == 1
        and "no space left" in said[0].lower()
        and str(repo.dir) in said[0]
        and "Traceback" not in done.stderr
    )
    if not clear:
        t.notes.append(f"seed {seed}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    if not repo.verify():  # on the full target, before any space is freed
        clear = False
        t.notes.append(f"seed {seed}: verify failed on the full target")
    subprocess.run(["mount", "-o", "remount,size=96m", str(mnt)], check=True)
    try:
        repo.backup(src)
        next_ok = clear
    except RuntimeError as exc:
        next_ok = False
        t.notes.append(f"seed {seed}: after freeing space: {str(exc)[:300]}")
    judge(t, repo, next_ok, manifests + 1, f"seed {seed}")


Scenario = Callable[[Path, int], Tally]
SCENARIOS: list[tuple[Scenario, int]] = [
    (backup_kill, 20),
    (prune_kill, 20),
    (prune_takeover, 10),
    (two_writers, 10),
    (full_target, 5),
]


def scenarios() -> list[tuple[Scenario, int]]:
    """Every scenario with its bench count; the network ones live in faults_net.py."""
    from bench.faults_net import nats_kill, s3_resets

    return [*SCENARIOS, (s3_resets, 10), (nats_kill, 10)]


def machine() -> str:
    return f"{os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tries", type=int, default=0, help="at most this many tries each")
    ap.add_argument(
        "--only",
        default="",
        help="only scenarios whose function name contains one of these (comma-separated)",
    )
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print("| scenario | tries | survived | detected | lost | doubled |")
    print("|---|---|---|---|---|---|")
    bad = 0
    for fn, n in scenarios():
        if args.only and not any(w and w in fn.__name__ for w in args.only.split(",")):
            continue
        with tempfile.TemporaryDirectory(prefix=f"faults-{fn.__name__}-") as tmp:
            tally = fn(Path(tmp), min(n, args.tries) if args.tries else n)
        print(tally.row(), flush=True)
        for note in tally.notes:
            print(f"  - {note}", file=sys.stderr)
        bad += not tally.ok
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
