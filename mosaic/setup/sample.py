"""A small deterministic sample tree for quickstart: text that compresses, binaries that
don't, duplicated files that deduplicate, and the awkward cases (empty file, empty
folder, symlinks)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path


def make_sample(root: Path, *, scale: int = 1) -> Path:
    rnd = random.Random(42)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    for i in range(20 * scale):
        lines = [
            f"2026-11-{1 + j % 28:02d}T{j % 24:02d}:{j % 60:02d}:00Z host{i % 4} app[{j}]: "
            f"request id={rnd.randrange(10**9)} status={rnd.choice([200, 200, 200, 404, 500])}"
            for j in range(2000)
        ]
        (root / "logs" / f"app-{i:03d}.log").write_text("\n".join(lines) + "\n")
    (root / "db").mkdir(exist_ok=True)
    rows = [
        {"id": i, "name": f"user{i}", "email": f"user{i}@example.org", "active": i % 3 != 0}
        for i in range(20000 * scale)
    ]
    (root / "db" / "users.json").write_text(json.dumps(rows, indent=1))
    (root / "media").mkdir(exist_ok=True)
    blob = rnd.randbytes(6 << 20)
    (root / "media" / "video.bin").write_bytes(blob)
    (root / "media" / "video-copy.bin").write_bytes(blob)  # deduplicates
    for i in range(30):
        (root / "media" / f"thumb-{i:02d}.jpg").write_bytes(
            rnd.randbytes(rnd.randrange(1, 64 << 10))
        )
    (root / "config" / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    (root / "config" / "app.toml").write_text('listen = "0.0.0.0:8080"\nworkers = 4\n')
    (root / "config" / "empty.conf").write_bytes(b"")
    (root / "config" / "nested" / "deeper" / "note.txt").write_text("deep\n")
    (root / "empty-folder").mkdir(exist_ok=True)
    os.symlink("config/app.toml", root / "current-config")
    os.symlink("/nonexistent/target", root / "dangling-link")
    os.chmod(root / "config" / "app.toml", 0o640)
    return root
