"""Write the frozen compatibility fixture under tests/data/compat-1/ — ONCE.

Run by hand (as root, with the MariaDB tools installed) and commit what it writes; the
tests never run it: the fixture is what users of this release have on disk, and
regenerating it would test nothing. To freeze a later release, write a new folder
(compat-2, …) with that release's copy of this script, and keep the old ones.

    .venv/bin/python bench/make_compat_fixture.py [tests/data/compat-1]

What it writes (tests/data/README.md says more):

- ``source/``: the files tree backed up (a symlink, an empty folder — which git drops,
  so the tests add it back —, a multi-chunk file, a file left out of the first backup);
- ``repo/``: a local repository written through the user's commands (``repo backup``,
  ``repo keys rotate``, ``repo keys write-only-export``) plus a MariaDB log chain (a base
  backup and a binlog backup) written by the engine the agent runs for those jobs;
- ``full.key`` (the agent's key file as the commands left it), ``write-only.key``;
- ``logs/``: the binlogs the log backup stored, byte for byte;
- ``expected.json``: every backup as it was written (dataset, type, parent, data key id,
  tree) — the tests compare what today's code reads with it;
- ``catalog-v<N>.sqlite`` for every SQLite catalog schema version N: migrations 1..N
  applied by the real migration code, then a few rows of every table of that version.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import anyio

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import msgspec  # noqa: E402

import coordinator.catalog.sqlite as sqlite_catalog  # noqa: E402
from agent.sources import ship_logs, streams_for  # noqa: E402
from coordinator.catalog.base import AuditEntry  # noqa: E402
from coordinator.catalog.sqlite_schema import MIGRATIONS  # noqa: E402
from engine.backup.cutter import Cutter  # noqa: E402
from engine.backup.dataset import BackupSpec, backup_dataset  # noqa: E402
from engine.format.crypto import sealed_kid  # noqa: E402
from engine.keys.files import load_key_file  # noqa: E402
from engine.repository import Repository  # noqa: E402
from engine.storage.local import LocalTarget  # noqa: E402
from shared.vocab import Tier  # noqa: E402
from shared.wire.records import BackupRecord, JobRecord, MaintenanceRecord  # noqa: E402
from shared.wire.sources import MariaDBSource  # noqa: E402
from tests.fixtures.mariadb import start_mariadb  # noqa: E402

WORDS_SEED = 7
BIG_SIZE = 700_000  # over the chunker's minimum (256 KiB); see ATTEMPTS
# Each repository draws its own chunker seed, so whether big.txt is cut in two depends
# on it: a run whose big.txt became one chunk starts over with a new repository.
ATTEMPTS = 30


def run(*args: str) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "mosaic.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    if p.returncode != 0:
        raise SystemExit(f"mosaic-backup {' '.join(args)} failed:\n{p.stdout}{p.stderr}")
    return p.stdout


def words_text(size: int) -> bytes:
    """Text from a small vocabulary: compresses about 4:1 (the fixture stays small), and
    content-defined cuts fall where they would in real text."""
    rnd = random.Random(WORDS_SEED)
    vocab = [
        "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 8)))
        for _ in range(64)
    ]
    lines, n = [], 0
    while n < size:
        line = " ".join(rnd.choice(vocab) for _ in range(12)) + "\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()


def make_source(src: Path) -> None:
    (src / "docs").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a.txt").write_text("alpha: the first file\n")
    (src / "docs" / "readme.md").write_text("# docs\n\nkept across every backup\n")
    (src / "docs" / "notes.txt").write_text("notes written before the key rotation\n")
    (src / "big.txt").write_bytes(words_text(BIG_SIZE))
    (src / "added.txt").write_text("left out of the first (full) backup\n")
    (src / "link").symlink_to("a.txt")


async def log_chain(repo_dir: Path, key: bytes, logs_out: Path) -> list[str]:
    """A MariaDB base backup and one binlog backup, as the agent's job runner writes them
    (agent/runner.py run_backup and _log_backup), without the NATS around them."""
    server = start_mariadb()
    try:
        source = MariaDBSource(socket=str(server.socket))
        server.sql("CREATE DATABASE compat")
        server.sql("CREATE TABLE compat.items (id int primary key, note text)")
        server.sql("INSERT INTO compat.items VALUES (1, 'before the base')")
        repo = await Repository.open(LocalTarget("t", repo_dir), key)
        stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
        base = await backup_dataset(
            repo,
            BackupSpec(
                backup_id=f"mariadb-base-{stamp}",
                dataset="mariadb",
                agent="compat",
                source=source,
                backup_type="full",
                streams=streams_for(source),
            ),
        )
        server.sql("INSERT INTO compat.items VALUES (2, 'after the base')")
        shipment = await anyio.to_thread.run_sync(ship_logs, source)
        log = await backup_dataset(
            repo,
            BackupSpec(
                backup_id=f"mariadb-log-{stamp}",
                dataset="mariadb",
                agent="compat",
                source=source,
                backup_type="incremental",
                parent_backup_id=base.backup_id,
                streams=shipment.streams,
                tier="translog",
            ),
        )
        for stream in shipment.streams:
            handle = stream.open()
            dest = logs_out / stream.name.decode()
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(handle.reader.read())
            handle.finish()
        await repo.target.aclose()
        return [base.backup_id, log.backup_id]
    finally:
        server.stop()


async def describe(repo_dir: Path, key: bytes) -> list[dict[str, object]]:
    """Every backup as written: what the tests expect today's code to read back."""
    target = LocalTarget("t", repo_dir)
    repo = await Repository.open(target, key)
    out: list[dict[str, object]] = []
    for backup_id in await repo.list_manifests():
        m = await repo.load_manifest(backup_id)
        sealed = (repo_dir / "manifests" / backup_id).read_bytes()
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
        out.append(
            {
                "backup_id": m.backup_id,
                "dataset": m.dataset,
                "backup_type": m.backup_type,
                "parent": m.parent,
                "source_type": type(m.source).__name__,
                "data_key": sealed_kid(sealed).hex(),
                "tree": tree,
            }
        )
    await target.aclose()
    return out


PINNED_INPUT_SIZE = 3 << 20  # random.Random(1).randbytes(...): see tests/test_compat_1_repo.py


async def pinned_chunks(repo_dir: Path, key: bytes) -> list[list[object]]:
    """(length, chunk id) of the fixed input, cut as a backup cuts a file."""
    target = LocalTarget("t", repo_dir)
    repo = await Repository.open(target, key)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pinned"
        path.write_bytes(random.Random(1).randbytes(PINNED_INPUT_SIZE))
        with path.open("rb", buffering=0) as f:
            cuts = [
                [len(c), repo.keys.chunk_id(c).hex()] for c in Cutter(repo.chunker()).cut_file(f)
            ]
    await target.aclose()
    return cuts


def agent_toml(path: Path, name: str, key_file: Path, repo_dir: Path, state_dir: Path) -> Path:
    """The agent.toml a user writes for one local target (NATS is never reached)."""
    path.write_text(
        f'name = "{name}"\nnats_url = "nats://127.0.0.1:1"\nkey_file = "{key_file}"\n'
        f'state_dir = "{state_dir}"\n[targets.t]\ntype = "local"\npath = "{repo_dir}"\n'
    )
    return path


def repo_commands(out: Path, work: Path) -> dict[str, str]:
    """The files backups, the key rotation and the write-only backup, as a user runs them."""
    src, repo_dir, key = out / "source", out / "repo", out / "full.key"
    run("repo", "keys", "init", "--key-file", str(key))
    cfg = agent_toml(work / "agent.toml", "compat", key, repo_dir, work / "state")
    c = ("--config", str(cfg))
    run("repo", "backup", *c, str(src), "--dataset", "files", "--type", "full",
        "--exclude", "added.txt")  # fmt: skip
    run("repo", "backup", *c, str(src), "--dataset", "files")  # incremental of the first
    rotated = run("repo", "keys", "rotate", *c)
    run("repo", "backup", *c, str(src / "docs"), "--dataset", "rotated", "--type", "full")
    wo_key = out / "write-only.key"
    run("repo", "keys", "write-only-export", *c, "--out", str(wo_key))
    wo_cfg = agent_toml(work / "wo.toml", "compat-wo", wo_key, repo_dir, work / "wo-state")
    run("repo", "backup", "--config", str(wo_cfg), str(src), "--dataset", "writeonly")
    return {"rotate": rotated.strip()}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO_ROOT / "tests/data/compat-1")
    if out.exists():
        raise SystemExit(f"{out} exists: the fixture is written once; pick a new folder")
    for attempt in range(1, ATTEMPTS + 1):
        out.mkdir(parents=True)
        make_source(out / "source")
        with tempfile.TemporaryDirectory() as tmp:
            said = repo_commands(out, Path(tmp))
        key = load_key_file(out / "full.key")
        backups = anyio.run(describe, out / "repo", key)
        big = [n for b in backups for n in b["tree"] if n["path"] == "big.txt"]  # type: ignore[attr-defined]
        if len(big[0]["chunks"]) >= 2:
            break
        print(f"attempt {attempt}: big.txt is one chunk with this chunker seed; again")
        shutil.rmtree(out)
    else:
        raise SystemExit(f"big.txt was one chunk {ATTEMPTS} times: raise BIG_SIZE")
    chain = anyio.run(log_chain, out / "repo", key, out / "logs")
    backups = anyio.run(describe, out / "repo", key)
    expected = {
        # run from `git archive HEAD` output (the work tree may hold others' edits):
        # COMPAT_COMMIT names the commit then
        "written_by": os.environ.get("COMPAT_COMMIT")
        or subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "pinned_chunks": anyio.run(pinned_chunks, out / "repo", key),
        "written_at": datetime.now(UTC).isoformat(),
        "pyfastcdc": _version("pyfastcdc"),
        "log_chain": chain,
        "said": said,
        "backups": backups,
        "catalogs": write_catalogs(out),
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    for leftover in (out / "repo" / "locks").glob("*"):
        raise SystemExit(f"a lease was left behind: {leftover}")
    shutil.rmtree(out / "repo" / "locks", ignore_errors=True)
    print(f"wrote {out}")


# --- SQLite catalogs, one per schema version ----------------------------------------

T0 = datetime(2026, 12, 1, 3, 0, 0, 123456, tzinfo=UTC)


def _at(minutes: int) -> datetime:
    return T0.replace(minute=minutes)


def catalog_rows(version: int) -> dict[str, list[object]]:
    """The rows a catalog of schema ``version`` holds: every table that version has."""
    tier: Tier | None = "daily" if version >= 5 else None
    backups = [
        BackupRecord(
            backup_id=f"files-{i}", dataset="files" if i < 3 else "db", agent="host-a",
            target="local" if i != 2 else "offsite", backup_type="full" if i % 2 else
            "incremental", repository_id="5f1c0de0", started_at=_at(i), finished_at=_at(i + 1),
            files=10 * i, bytes_read=1000 * i, bytes_new=100 * i, bytes_stored=50 * i,
            duration_s=1.5 * i, tier=tier if i != 3 else None,
        )
        for i in range(1, 5)
    ]  # fmt: skip
    jobs = [
        JobRecord(
            job_id="job-done", job_kind="backup", dataset="files", agent="host-a",
            target="local", status="completed", requested_at=_at(1), updated_at=_at(2),
            backup_id="files-1",
        ),
        JobRecord(
            job_id="job-failed", job_kind="backup", dataset="db", agent="host-a",
            target="local", status="failed", requested_at=_at(5), updated_at=_at(6),
            error_code="source_error", error_message="mariadb at /run/x.sock: refused",
        ),
        JobRecord(
            job_id="job-running", job_kind="verify", dataset="files", agent="host-b",
            target="offsite", status="running", requested_at=_at(7), updated_at=_at(8),
        ),
    ]  # fmt: skip
    rows: dict[str, list[object]] = {"backups": list(backups), "jobs": list(jobs)}
    if version >= 3:
        rows["audit"] = [
            AuditEntry(entry_id="audit-1", at=_at(3), action="backup_requested",
                       actor="alice", dataset="files", job_id="job-done", detail="by hand"),
            AuditEntry(entry_id="audit-2", at=_at(9), action="config_changed",
                       actor="coordinator", detail="schedules reloaded"),
        ]  # fmt: skip
    if version >= 4:
        rows["maintenance"] = [
            MaintenanceRecord(
                job_id="verify-1", kind="verify", agent="host-b", target="local",
                outcome="passed", started_at=_at(10), finished_at=_at(11),
                summary="42 packs read", detail='{"packs": 42}',
            ),
            MaintenanceRecord(
                job_id="drill-1", kind="drill", agent="host-b", target="offsite",
                dataset="files", backup_id="files-2", outcome="failed", started_at=_at(12),
                finished_at=_at(13), rto_s=12.5, rpo_s=3600.0, summary="row count differs",
                detail='{"expected": 3, "got": 2}',
            ),
        ]  # fmt: skip
    if version >= 5:
        rows["copies"] = [{"backup_ids": ["files-1", "files-3"], "target": "offsite",
                           "at": _at(20)}]  # fmt: skip
    return rows


def _sql_insert(conn: sqlite3.Connection, table: str, fields: dict[str, object]) -> None:
    """One row with the SQL of the schema it was written at (times in microseconds)."""
    values = [sqlite_catalog._to_us(v) if isinstance(v, datetime) else v for v in fields.values()]
    conn.execute(
        f"INSERT INTO {table} ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
        values,
    )


def _old_rows(path: Path, version: int, rows: dict[str, list[object]]) -> None:
    """Rows of an older schema, inserted with that schema's columns only."""
    cols = {
        "backups": [c for c in sqlite_catalog._BACKUP_COLUMNS if c != "tier"],
        "jobs": list(sqlite_catalog._JOB_COLUMNS),
        "audit": list(sqlite_catalog._AUDIT_COLUMNS),
        "maintenance": list(sqlite_catalog._MAINTENANCE_COLUMNS),
    }
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for table, records in rows.items():
            for rec in records:
                _sql_insert(conn, table, {c: getattr(rec, c) for c in cols[table]})
        conn.execute("COMMIT")
    finally:
        conn.close()


async def _new_rows(path: Path, rows: dict[str, list[object]]) -> None:
    """Rows of the current schema, written through the catalog API."""
    async with sqlite_catalog.SqliteCatalog(path) as cat:
        for b in rows["backups"]:
            await cat.record_backup(b)  # type: ignore[arg-type]
        for j in rows["jobs"]:
            await cat.record_job(j)  # type: ignore[arg-type]
        for a in rows["audit"]:
            await cat.append_audit(a)  # type: ignore[arg-type]
        for m in rows["maintenance"]:
            await cat.record_maintenance(m)  # type: ignore[arg-type]
        for c in rows["copies"]:
            await cat.record_copies(c["backup_ids"], target=c["target"], at=c["at"])  # type: ignore[index]


async def _migrated(path: Path, version: int) -> None:
    """Migrations 1..version applied by the real migration code (SqliteCatalog.migrate
    with the later entries hidden from it, as an older release knew them)."""
    setattr(sqlite_catalog, "MIGRATIONS", MIGRATIONS[:version])  # noqa: B010
    try:
        async with sqlite_catalog.SqliteCatalog(path) as cat:
            await cat.migrate()
    finally:
        setattr(sqlite_catalog, "MIGRATIONS", MIGRATIONS)  # noqa: B010


def write_catalogs(out: Path) -> dict[str, object]:
    written: dict[str, object] = {}
    for version in range(1, len(MIGRATIONS) + 1):
        path = out / f"catalog-v{version}.sqlite"
        rows = catalog_rows(version)
        anyio.run(_migrated, path, version)
        if version < len(MIGRATIONS):
            _old_rows(path, version, rows)
        else:
            anyio.run(_new_rows, path, rows)
        # One self-contained file (no -wal beside it), in 1 KiB pages: a catalog of a few
        # rows is mostly empty 4 KiB pages (one per table and index). Neither changes
        # the schema or a row; SqliteCatalog turns WAL back on when it opens the file.
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA page_size = 1024")
        conn.execute("VACUUM")
        conn.close()
        written[str(version)] = msgspec.to_builtins(rows)
    return written


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sqlite3.connect(":memory:").close()  # fail early without sqlite3
    main()
