"""Freeze a SQLite catalog of the current schema version, once, when a migration adds
one (tests/test_compat_1_catalog.py fails until every version has its frozen file).

    python bench/make_compat_catalog.py tests/data/compat-2

Writes ``catalog-v<N>.sqlite`` (N = the newest migration) with the rows of
bench/make_compat_fixture.py's ``catalog_rows`` written through the catalog API, plus
the rows of the tables version N added, and ``expected.json`` with those rows. It
refuses to overwrite: a frozen file is what users have on disk, never regenerated.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_compat_fixture import _new_rows, catalog_rows

import coordinator.catalog.sqlite as sqlite_catalog
from coordinator.catalog.sqlite_schema import MIGRATIONS

# Rows of the tables added after version 5, by the version that added them.
SEEN = {"files": datetime(2026, 6, 1, 8, 0, tzinfo=UTC), "db": datetime(2026, 7, 1, tzinfo=UTC)}


async def _write(path: Path, version: int) -> dict[str, object]:
    rows = catalog_rows(version)
    async with sqlite_catalog.SqliteCatalog(path) as cat:
        await cat.migrate()
    await _new_rows(path, rows)
    out = msgspec.to_builtins(rows)
    if version >= 6:
        async with sqlite_catalog.SqliteCatalog(path) as cat:
            for name, at in SEEN.items():
                await cat.datasets_seen([name], at)
        out["datasets_seen"] = {k: v.isoformat() for k, v in SEEN.items()}
    return out


def main() -> None:
    out = Path(sys.argv[1])
    version = len(MIGRATIONS)
    path = out / f"catalog-v{version}.sqlite"
    if path.exists():
        sys.exit(f"{path} exists: frozen fixtures are never regenerated")
    out.mkdir(parents=True, exist_ok=True)
    rows = anyio.run(_write, path, version)
    conn = sqlite3.connect(path, isolation_level=None)  # one self-contained small file
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA page_size = 1024")
    conn.execute("VACUUM")
    conn.close()
    expected = out / "expected.json"
    doc = json.loads(expected.read_text()) if expected.exists() else {"catalogs": {}}
    doc["catalogs"][str(version)] = rows
    expected.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} and {expected}")


if __name__ == "__main__":
    main()
