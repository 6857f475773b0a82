"""Damage table: each kind of damage × what verify says, what a full restore gives
back, the repair, and the state after it. Prints a Markdown table.

    .venv/bin/python bench/damage.py [--files 3000] [--workdir DIR]

Every row starts from a fresh copy of one repository (many small files and some
multi-chunk ones in small packs), damages one object as storage does, and runs the
real commands. tests/test_damage.py is the short version of each row.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.repository import format as fmt  # noqa: E402

from engine.keys.files import load_key_file  # noqa: E402
from engine.repository import Repository  # noqa: E402
from engine.storage.local import LocalTarget  # noqa: E402


def run(cfg: Path, *args: str) -> tuple[int, str]:
    p = subprocess.run(
        [sys.executable, "-m", "mosaic.cli", "repo", *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "300"},
    )
    return p.returncode, p.stdout + p.stderr


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def make_source(root: Path, files: int) -> None:
    rnd = random.Random(1)
    for i in range(files):
        d = root / f"d{i % 30}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.bin").write_bytes(rnd.randbytes(rnd.randint(500, 12_000)))
    for i in range(6):
        (root / f"big{i}.bin").write_bytes(rnd.randbytes(8 << 20))


def packs_of(repo_dir: Path, key: Path, otype: int) -> list[Path]:
    async def find() -> list[Path]:
        repo = await Repository.open(LocalTarget("t", repo_dir), load_key_file(key))
        kinds: dict[bytes, set[int]] = {}
        for _, e in repo.index.items():  # noqa: PERF102
            kinds.setdefault(e.pack_id, set()).add(e.otype)
        return sorted(repo_dir / fmt.pack_key(p) for p, t in kinds.items() if t == {otype})

    return asyncio.run(find())


def flip(p: Path, at: float = 0.4) -> None:
    b = bytearray(p.read_bytes())
    b[int(len(b) * at)] ^= 0x10
    p.write_bytes(bytes(b))


def damage_kinds(repo: Path, key: Path) -> dict[str, Callable[[], None]]:
    data = packs_of(repo, key, fmt.OT_DATA)

    def truncate() -> None:
        data[3].write_bytes(data[3].read_bytes()[: data[3].stat().st_size // 2])

    def swap() -> None:
        a, b = data[2], data[-3]
        t = a.with_name("x")
        a.rename(t)
        b.rename(a)
        t.rename(b)

    def segment() -> None:
        flip(sorted((repo / "index").iterdir())[0], 0.5)

    return {
        "flipped byte in a pack": lambda: flip(data[len(data) // 2]),
        "truncated pack": truncate,
        "deleted pack": lambda: data[5].unlink(),
        "two packs' names swapped": swap,
        "damaged index segment": segment,
        "deleted index segment": lambda: sorted((repo / "index").iterdir())[0].unlink(),
        "deleted config": lambda: (repo / "config").unlink(),
        "deleted config and recovery/": lambda: (
            (
                (repo / "config").unlink(),
                shutil.rmtree(repo / "recovery"),
            )
            and None
        ),
        "deleted keys/<kid>": lambda: [k.unlink() for k in (repo / "keys").iterdir()] and None,
    }


REPAIRS = {
    "flipped byte in a pack": ["packs", "snapshots"],
    "truncated pack": ["packs", "snapshots"],
    "deleted pack": ["packs", "snapshots"],
    "two packs' names swapped": ["packs", "snapshots"],
    "damaged index segment": ["index"],
    "deleted index segment": ["index"],
    "deleted config": ["config"],
    "deleted config and recovery/": ["config"],
    "deleted keys/<kid>": ["config"],
}


def first_line(text: str, *needles: str) -> str:
    for line in text.splitlines():
        if any(n in line for n in needles):
            return line.strip()[:110].replace("|", "/")
    return (text.strip().splitlines() or [""])[-1][:110].replace("|", "/")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mosaic-damage-"))
    src, pristine, key = work / "src", work / "pristine", work / "key"
    make_source(src, args.files)
    cfg = work / "agent.toml"

    def write_cfg(repo: Path) -> None:
        cfg.write_text(
            f'name = "bench"\nkey_file = "{key}"\npack_size = 1048576\n'
            f'[targets.t]\ntype = "local"\npath = "{repo}"\n'
        )

    write_cfg(pristine)
    code, out = run(cfg, "backup", str(src), "--dataset", "d", "--type", "full")
    assert code == 0, out
    backup_id = next((pristine / "manifests").iterdir()).name
    source = digests(src)
    print(f"{len(source)} files, backup {backup_id}\n")
    print("| damage | verify says | full restore: intact / damaged / of | repair | after |")
    print("|---|---|---|---|---|")
    for name in damage_kinds(pristine, key):
        repo = work / "repo"
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(pristine, repo)
        write_cfg(repo)
        damage_kinds(repo, key)[name]()
        code, out = run(cfg, "verify", "--all", "--read-data")
        said = first_line(out, "damaged", "repair", "error") if code else "clean"
        dest = work / "out"
        shutil.rmtree(dest, ignore_errors=True)
        run(cfg, "restore", backup_id, "--to", str(dest))
        got = digests(dest) if dest.exists() else {}
        intact = sum(1 for k, v in got.items() if source.get(k) == v)
        damaged = sum(1 for k in got if k.endswith(".damaged"))
        steps = []
        for r in REPAIRS[name]:
            rc, _ = run(cfg, "repair", r)
            steps.append(f"`repair {r}` → {rc}")
        code, out = run(cfg, "verify", "--all", "--read-data")
        after = "verify clean" if code == 0 else first_line(out, "damaged", "error")
        rc, out = run(cfg, "backup", str(src), "--dataset", "d")
        after += ", next backup ok" if rc == 0 else f", next backup: {first_line(out, 'error')}"
        print(
            f"| {name} | {said} | {intact:,} / {damaged:,} / {len(source):,} | "
            f"{'; '.join(steps)} | {after} |"
        )


if __name__ == "__main__":
    main()
