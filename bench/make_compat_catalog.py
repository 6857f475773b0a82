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
    if version >= 7:
        out["auth"] = await _auth_rows(path)
    return out


async def _auth_rows(path: Path) -> dict[str, object]:
    """Version 7's access-control rows (users, recovery codes, tokens, a session, login
    failures), written through the catalog API; hashes stand in for real ones."""
    from coordinator.catalog.auth_records import SessionRecord, TokenRecord, UserRecord

    at = datetime(2026, 8, 1, 9, 30, tzinfo=UTC)
    argon = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA"
    users = [
        UserRecord(name="alice", role="admin", password_hash=argon, totp_secret="JBSWY3DPEHPK3PXP",
                   totp_last_step=59_000_000, created_at=at, updated_at=at, last_login_at=at),
        UserRecord(name="bob", role="viewer", password_hash=argon, disabled=True,
                   created_at=at, updated_at=at),
    ]  # fmt: skip
    tokens = [
        TokenRecord(token_id="0a1b2c3d4e5f", name="prometheus", role="viewer",
                    secret_hash="5" * 64, created_by="root@host (tokens create CLI)",
                    created_at=at, expires_at=datetime(2026, 10, 30, tzinfo=UTC), last_used_at=at),
        TokenRecord(token_id="f5e4d3c2b1a0", name="prometheus", role="viewer",
                    secret_hash="6" * 64, created_by="root@host (tokens create CLI)",
                    created_at=at, expires_at=datetime(2026, 9, 1, tzinfo=UTC), revoked_at=at),
    ]  # fmt: skip
    session = SessionRecord(session_hash="7" * 64, user_name="alice", csrf_token="c" * 43,
                            source="192.0.2.7", created_at=at, last_seen_at=at)  # fmt: skip
    async with sqlite_catalog.SqliteCatalog(path) as cat:
        for u in users:
            await cat.add_user(u)
        await cat.set_recovery_codes("alice", ["8" * 64, "9" * 64])
        await cat.use_recovery_code("alice", "8" * 64, at)
        for t in tokens:
            await cat.add_token(t)
        await cat.add_session(session)
        await cat.count_login_failure("user:bob", at, window_start=at)
    return {
        "users": msgspec.to_builtins(users),
        "tokens": msgspec.to_builtins(tokens),
        "sessions": msgspec.to_builtins([session]),
        "recovery_codes_left": {"alice": 1},
        "login_failures": {"user:bob": 1},
    }


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
