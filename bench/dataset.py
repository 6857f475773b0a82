"""Deterministic mixed dataset for the backup benchmark, and its deterministic 1 % mutation.

``generate(root, size_mib, seed)`` writes (fractions of what is left after the small files):

* ``small/``  ~20,000 small files (scaled with the size) in nested folders: text, JSON and
  binary, 5 % of them exact duplicates of others;
* ``logs/``   28 % compressible log files;
* ``db/``     16 % SQL-dump-like text;
* ``json/``   12 % JSON event files;
* ``bin/``    24 % incompressible binaries;
* ``dup/``    20 % one random blob three times: as is, an exact copy, and a copy with a
  few bytes inserted at the front (tests content-defined chunking).

Every part has its own seeded ``random.Random``, so the same arguments always give the same
bytes. ``mutate(root, fraction, seed)`` then modifies files in the middle, appends to logs,
adds and deletes files — the same changes for the same tree.

CLI: ``python bench/dataset.py DIR [--size-mib N] [--seed S] [--mutate]``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

MIB = 1 << 20
SMALL_FILES_PER_MIB = 20_000 / 1536
SHARES = {"logs": 0.28, "db": 0.16, "json": 0.12, "bin": 0.24, "dup": 0.20}
TEXT_SUFFIXES = (".log", ".sql", ".json", ".txt")

_WORDS = (
    "alpha beta gamma delta request response user session cache miss hit timeout retry "
    "upstream backend frontend queue worker job commit rollback index table select insert "
    "update delete vacuum checkpoint replica primary lease token refresh expired granted "
    "denied payload header cookie redirect proxy tls handshake socket closed opened "
    "reset peer latency budget quota limit exceeded throttled healthy degraded"
).split()
_LEVELS = ["INFO"] * 12 + ["DEBUG"] * 5 + ["WARN"] * 2 + ["ERROR"]
_NAMES = "ada bob cyd dee eve fay gus hal ivy jon kim lea max ned oli pam quinn rex sam".split()

LineFn = Callable[[random.Random, int], str]


def _log_line(r: random.Random, i: int) -> str:
    return (
        f"2024-03-{1 + i // 86400 % 28:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:"
        f"{i % 60:02d}.{r.randrange(1000):03d}Z {r.choice(_LEVELS)} svc-{r.randrange(24)} "
        f"req={r.getrandbits(32):08x} {' '.join(r.choices(_WORDS, k=r.randrange(3, 9)))} "
        f"status={r.choice((200, 200, 200, 204, 301, 404, 500))} took={r.randrange(4000)}ms\n"
    )


def _sql_line(r: random.Random, i: int) -> str:
    rows = ",".join(
        f"({i * 8 + j},'{r.choice(_NAMES)}{r.randrange(10_000)}@example.org',"
        f"'{r.choice(_WORDS)} {r.choice(_WORDS)}',{r.randrange(10**6) / 100:.2f},"
        f"'2023-{1 + r.randrange(12):02d}-{1 + r.randrange(28):02d}')"
        for j in range(8)
    )
    return f"INSERT INTO public.orders (id, email, note, amount, created) VALUES {rows};\n"


def _json_line(r: random.Random, i: int) -> str:
    tags = ",".join(f'"{w}"' for w in r.sample(_WORDS, 3))
    return (
        f'  {{"id": {i}, "user": "{r.choice(_NAMES)}", "event": "{r.choice(_WORDS)}", '
        f'"score": {r.random():.6f}, "ok": {r.choice(("true", "false"))}, '
        f'"tags": [{tags}], "trace": "{r.getrandbits(64):016x}"}},\n'
    )


def _text_chunks(r: random.Random, n: int, line: LineFn, start: int = 0) -> Iterator[bytes]:
    """About ``n`` bytes of text lines, in ~1 MiB pieces (the last line is cut at ``n``)."""
    left, i = n, start
    while left > 0:
        lines: list[str] = []
        size = 0
        while size < min(left, MIB):
            s = line(r, i)
            lines.append(s)
            size += len(s)
            i += 1
        data = "".join(lines).encode()[:left]
        left -= len(data)
        yield data


def _random_chunks(r: random.Random, n: int) -> Iterator[bytes]:
    while n > 0:
        k = min(n, MIB)
        yield r.randbytes(k)
        n -= k


def _write(path: Path, chunks: Iterator[bytes], mode: str = "wb") -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with open(path, mode) as f:
        for c in chunks:
            f.write(c)
            total += len(c)
    return total


def _sizes(r: random.Random, budget: int, typical: int) -> list[int]:
    """Split ``budget`` bytes into file sizes of ``typical`` ± 50 %."""
    out: list[int] = []
    while budget > 0:
        n = min(budget, max(1, int(typical * r.uniform(0.5, 1.5))))
        out.append(n)
        budget -= n
    return out


def _small_files(root: Path, r: random.Random, count: int) -> int:
    total = 0
    made: list[Path] = []
    for i in range(count):
        d = root / "small" / f"d{r.randrange(8):02d}" / f"e{r.randrange(12):02d}"
        if r.random() < 0.5:
            d = d / f"f{r.randrange(6)}"
        n = int(r.lognormvariate(8.3, 0.9)) + 64  # median ~4 KiB, a few up to ~100 KiB
        if made and r.random() < 0.05:
            src = r.choice(made)
            path = d / f"copy{i:06d}{src.suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path)
            total += path.stat().st_size
            continue
        kind = r.randrange(3)
        if kind == 0:
            path, chunks = d / f"note{i:06d}.txt", _text_chunks(r, n, _log_line, i)
        elif kind == 1:
            path, chunks = d / f"rec{i:06d}.json", _text_chunks(r, n, _json_line, i)
        else:
            path, chunks = d / f"obj{i:06d}.bin", _random_chunks(r, n)
        total += _write(path, chunks)
        made.append(path)
    return total


def generate(root: str | os.PathLike[str], size_mib: int = 1536, seed: int = 42) -> int:
    """Write the dataset into the new folder ``root``; return its size in bytes."""
    root = Path(root)
    root.mkdir(parents=True)
    count = max(50, round(SMALL_FILES_PER_MIB * size_mib))
    total = _small_files(root, random.Random(seed), count)
    rest = max(0, size_mib * MIB - total)
    budget = {k: int(rest * v) for k, v in SHARES.items()}
    r = random.Random(seed + 1)
    for i, n in enumerate(_sizes(r, budget["logs"], 12 * MIB)):
        path = root / "logs" / f"app{i % 4}" / f"2024-03-{1 + i // 4:02d}.log"
        total += _write(path, _text_chunks(r, n, _log_line, i * 10**6))
    r = random.Random(seed + 2)
    for i, n in enumerate(_sizes(r, budget["db"], 48 * MIB)):
        total += _write(root / "db" / f"dump-{i:02d}.sql", _text_chunks(r, n, _sql_line))
    r = random.Random(seed + 3)
    for i, n in enumerate(_sizes(r, budget["json"], 6 * MIB)):
        total += _write(root / "json" / f"events-{i:03d}.json", _text_chunks(r, n, _json_line))
    r = random.Random(seed + 4)
    for i, n in enumerate(_sizes(r, budget["bin"], 24 * MIB)):
        total += _write(root / "bin" / f"blob-{i:03d}.bin", _random_chunks(r, n))
    r = random.Random(seed + 5)
    blob = root / "dup" / "image.bin"
    total += _write(blob, _random_chunks(r, budget["dup"] // 3))
    for name in ("copy", "shifted"):
        (root / "dup" / name).mkdir()
        with open(blob, "rb") as src, open(root / "dup" / name / "image.bin", "wb") as dst:
            if name == "shifted":
                dst.write(b"\x00SHIFT\x00")
            shutil.copyfileobj(src, dst, MIB)
            total += dst.tell()
    return total


def walk(root: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """(relative path, size) of every regular file under ``root``, sorted by path."""
    out: list[tuple[str, int]] = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            p = os.path.join(d, name)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append((os.path.relpath(p, root), os.path.getsize(p)))
    out.sort()
    return out


def mutate(root: str | os.PathLike[str], fraction: float = 0.01, seed: int = 7) -> dict[str, int]:
    """Change about ``fraction`` of the bytes under ``root``, the same way for the same tree.

    40 % of the budget overwrites a range in the middle of files, 30 % is appended to logs and
    dumps, 30 % goes into new files; ~0.1 % of the files (at least 3) are deleted.
    """
    root = Path(root)
    r = random.Random(seed)
    files = walk(root)
    budget = int(sum(n for _, n in files) * fraction)
    stats = {"modified": 0, "appended": 0, "added": 0, "deleted": 0, "bytes": 0}

    small = [p for p, n in files if n < MIB]
    gone = set(r.sample(small, min(len(small), max(3, len(files) // 1000))))
    for rel in sorted(gone):
        (root / rel).unlink()
    stats["deleted"] = len(gone)
    live = [(p, n) for p, n in files if p not in gone]

    def chunks(rel: str, n: int) -> Iterator[bytes]:
        if rel.endswith(TEXT_SUFFIXES):
            return _text_chunks(r, n, _sql_line if rel.endswith(".sql") else _log_line)
        return _random_chunks(r, n)

    left = int(budget * 0.4)
    candidates = [(p, n) for p, n in live if n >= 4096]
    while left > 0 and candidates:
        rel, n = candidates.pop(r.randrange(len(candidates)))
        k = min(left, max(1, n // 4), MIB)
        with open(root / rel, "r+b") as f:
            f.seek(n // 2 - k // 2)
            for c in chunks(rel, k):
                f.write(c)
        left -= k
        stats["modified"] += 1
        stats["bytes"] += k

    left = int(budget * 0.3)
    growing = [p for p, _ in live if p.endswith((".log", ".sql"))]
    r.shuffle(growing)
    growing = growing[:8]
    for i, rel in enumerate(growing):
        k = max(1, left // (len(growing) - i))
        stats["bytes"] += _write(root / rel, chunks(rel, k), "ab")
        left -= k
        stats["appended"] += 1

    left = budget - int(budget * 0.4) - int(budget * 0.3)
    for i, k in enumerate(_sizes(r, left, max(4096, left // 6))):
        name = f"new-{i:02d}." + ("log" if i % 2 == 0 else "bin")
        rel = f"new/{name}" if k > 64 * 1024 else f"small/d00/e00/{name}"
        stats["bytes"] += _write(root / rel, chunks(rel, k))
        stats["added"] += 1
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="new folder to write (or, with --mutate, to change)")
    ap.add_argument("--size-mib", type=int, default=1536)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--mutate", action="store_true", help="apply the 1 %% mutation to ROOT")
    args = ap.parse_args()
    if args.mutate:
        print(mutate(args.root, seed=args.seed))
    else:
        total = generate(args.root, args.size_mib, args.seed)
        print(f"{total / MIB:.1f} MiB in {len(walk(args.root))} files under {args.root}")


if __name__ == "__main__":
    main()
