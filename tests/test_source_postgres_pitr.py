"""PostgreSQL continuous archiving and point-in-time restore, end to end: a cluster whose
archive_command is the real ``wal-archive``, a base backup and a log backup through an
agent, then restores into new data directories that start and hold exactly the rows
committed before the requested instant (or all of them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from agent.sources import postgres
from mosaic import operator
from shared.config.targets import LocalTargetConfig
from shared.errors import SourceError
from shared.natsserver import free_port
from shared.wire.events import BackupCompleted, RestoreCompleted
from shared.wire.sources import PostgresSource
from tests.fixtures.postgres import PG_BIN, REPO_ROOT, ArchivingPostgres, _as_postgres
from tests.harness import cli, running_stack

QUIET = Console(quiet=True)


@contextmanager
def restored_server(dest: Path) -> Iterator[str]:
    """Start the data directory restored under ``dest`` on a new port; yield its URL."""
    data = dest / "pgdata"
    port = free_port()
    sock = dest / "sock"
    sock.mkdir()
    log = dest / "server.log"
    log.touch()
    # the restore hands pgdata and the gathered WAL to postgres by itself; only what the
    # test adds here needs it
    subprocess.run(["chown", "postgres:postgres", str(sock), str(log)], check=True)
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    started = subprocess.run(_as_postgres([*ctl, "-o", opts, "start"]), capture_output=True)
    assert started.returncode == 0, log.read_text()
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        # pg_ctl -w returns once connections are accepted; promotion ends recovery
        # moments later, and only then is the replay final
        deadline = time.monotonic() + 60
        with psycopg.connect(url, autocommit=True) as conn:
            while conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield url
    finally:
        subprocess.run(_as_postgres([*ctl, "-m", "fast", "stop"]), capture_output=True)


def _ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM pitr_items ORDER BY id").fetchall()]


@pytest.fixture
def restore_root() -> Iterator[Path]:
    # postgres must reach the restored data directory: pytest's tmp_path is root-only
    base = Path(tempfile.mkdtemp(prefix="mosaic-pitr-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_point_in_time_restore_holds_exactly_the_rows_committed_before(
    nats_url: str, tmp_path: Path, archiving_postgres: ArchivingPostgres, restore_root: Path
) -> None:
    server = archiving_postgres
    source = PostgresSource(port=server.port, wal_spool=str(server.spool))
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            for _ in range(2):  # WAL from before the base, spooled but never shipped
                conn.execute("CREATE TABLE IF NOT EXISTS before_base (x int)")
                conn.execute("SELECT pg_switch_wal()")
        base = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=120)
        assert isinstance(base, BackupCompleted)
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS pitr_items")
            conn.execute("CREATE TABLE pitr_items (id int primary key, note text)")
            conn.execute("INSERT INTO pitr_items SELECT g, 'A' FROM generate_series(1, 500) g")
            time.sleep(1)
            instant = datetime.now(UTC)
            time.sleep(1)
            conn.execute("INSERT INTO pitr_items SELECT g, 'B' FROM generate_series(501, 800) g")

        log = await operator.backup(st.bus, st.dataset, "incremental", QUIET, QUIET, timeout=120)
        assert isinstance(log, BackupCompleted) and log.backup_type == "incremental"
        assert log.log_lag_s is not None and log.log_lag_s >= 0
        # the shipped segments left the spool once the manifest was stored; a mark says
        # which was the newest, so a later run tells "shipped" from "never arrived"
        left = [n for n in os.listdir(server.spool) if not n.endswith(".history")]
        assert left == [postgres.SHIPPED_MARK], left
        assert len((server.spool / postgres.SHIPPED_MARK).read_text()) == 24

        # a point before the base backup was consistent: one clear line, nothing restored
        early = base.started_at - timedelta(minutes=5)
        with pytest.raises(operator.OperatorError) as exc:
            await operator.restore(
                st.bus, log.backup_id, str(restore_root / "early"), QUIET, QUIET, pitr=early
            )
        assert "consistent only from" in str(exc.value) and base.backup_id in str(exc.value)
        assert "\n" not in str(exc.value)

        at = restore_root / "at-instant"
        done = await operator.restore(
            st.bus, log.backup_id, str(at), QUIET, QUIET, timeout=120, pitr=instant
        )
        assert isinstance(done, RestoreCompleted)
        latest = restore_root / "latest"
        await operator.restore(st.bus, log.backup_id, str(latest), QUIET, QUIET, timeout=120)

    # the log backup starts at the base: no segment wholly before the base's start
    shipped = os.listdir(latest / postgres.LOG_DIR)
    (history,) = [n for n in shipped if n.endswith(".backup")]
    segments = [n for n in shipped if len(n) == 24]
    assert segments and min(n[8:] for n in segments) == history[8:24], shipped
    with restored_server(at) as url:
        assert _ids(url) == list(range(1, 501))  # batch A, none of batch B
    with restored_server(latest) as url:
        assert _ids(url) == list(range(1, 801))  # batch A and B


def test_a_log_backup_refuses_a_spool_the_archiver_does_not_fill(
    archiving_postgres: ArchivingPostgres, tmp_path: Path
) -> None:
    """archive_command copies somewhere else than wal_spool: PostgreSQL reports the WAL
    archived, but a log backup would store nothing — it must fail and say why."""
    elsewhere = tmp_path / "not-the-spool"
    elsewhere.mkdir()
    src = PostgresSource(port=archiving_postgres.port, wal_spool=str(elsewhere), archive_wait_s=30)
    with pytest.raises(SourceError) as exc:
        postgres.ship_wal(src)
    text = str(exc.value)
    assert f"not in wal_spool {elsewhere}" in text and "archive_command must copy" in text
    assert "\n" not in text


def _archive(*args: str) -> subprocess.CompletedProcess[str]:
    return cli("wal-archive", *args, timeout=30)


def test_wal_archive_is_atomic_and_idempotent_and_refuses_a_different_copy(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    seg = tmp_path / "000000010000000000000007"
    seg.write_bytes(os.urandom(1 << 16))
    name = seg.name
    assert _archive("--spool", str(spool), str(seg), name).returncode == 0
    assert (spool / name).read_bytes() == seg.read_bytes()
    assert os.listdir(spool) == [name]  # no temporary file left behind
    again = _archive("--spool", str(spool), str(seg), name)
    assert again.returncode == 0, again.stderr  # PostgreSQL may archive a file twice
    seg.write_bytes(os.urandom(1 << 16))
    clash = _archive("--spool", str(spool), str(seg), name)
    assert clash.returncode != 0
    assert "different content" in clash.stderr and clash.stderr.count("\n") == 1
    missing = _archive("--spool", str(tmp_path / "nope"), str(seg), name)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_wal_archive_fails_when_the_spool_is_not_writable(restore_root: Path) -> None:
    """As PostgreSQL runs it: the postgres user, a spool it may not write → non-zero, so
    PostgreSQL keeps the segment and retries."""
    spool = restore_root / "spool"
    spool.mkdir(mode=0o755)  # owned by root
    seg = restore_root / "000000010000000000000009"
    seg.write_bytes(b"x" * 4096)
    os.chmod(seg, 0o644)
    script = str(REPO_ROOT / "agent" / "walarchive.py")
    python = "/usr/bin/python3" if os.geteuid() == 0 else sys.executable
    argv = [python, script, "--spool", str(spool), str(seg), seg.name]
    proc = subprocess.run(_as_postgres(argv), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "Permission denied" in proc.stderr and str(spool) in proc.stderr
    assert os.listdir(spool) == []


def test_recover_refuses_an_instant_past_the_archived_wal_and_configures_the_rest(
    tmp_path: Path,
) -> None:
    """The last seconds of a log backup (after its marker commit) cannot be reached:
    PostgreSQL would refuse to start, so the restore says so in one line instead."""
    data = tmp_path / postgres.DATA_DIR
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    (data / "postgresql.auto.conf").write_text("# from the base backup\n")
    logs = tmp_path / postgres.LOG_DIR
    logs.mkdir()
    reach = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
    (logs / postgres.WAL_REACH).write_text(reach.isoformat())
    src = PostgresSource(wal_spool="/unused")
    with pytest.raises(SourceError) as exc:
        postgres.recover(src, tmp_path, logs, reach + timedelta(seconds=1))
    assert "reaches 2026-11-26T10:00:00+00:00" in str(exc.value)
    assert not (data / "recovery.signal").exists()
    postgres.recover(src, tmp_path, logs, reach - timedelta(seconds=1))
    conf = (data / "postgresql.auto.conf").read_text()
    assert (data / "recovery.signal").exists()
    assert "recovery_target_time = '2026-11-26T09:59:59+00:00'" in conf
    assert f"restore_command = 'cp {logs}/%f %p'" in conf and "archive_mode = 'off'" in conf


SAFE_EXTRACT = """
import sys, tarfile
sys.path.insert(0, sys.argv[1])
import safetar
assert not hasattr(tarfile, "data_filter") or sys.argv[4] == "any"
try:
    safetar.extract(sys.argv[2], sys.argv[3])
except safetar.UnsafeMember as exc:
    print("refused:", exc)
else:
    print("extracted")
"""


def _tar(path: Path, *members: tuple[str, bytes | str]) -> Path:
    """A tar of regular files (bytes) and symlinks (str targets)."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            if isinstance(body, str):
                info.type, info.linkname = tarfile.SYMTYPE, body
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return path


@pytest.mark.parametrize("python", ["/usr/bin/python3", sys.executable])
def test_base_tar_extraction_is_safe_on_every_admitted_python(python: str, tmp_path: Path) -> None:
    """Debian 12's python3 (3.11.2) has no tarfile filters: our own checks run there."""
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info[:3] < (3, 11, 4))"],
        capture_output=True,
        text=True,
        check=True,
    )
    old = version.stdout.strip() == "True"
    assert old or python != "/usr/bin/python3"  # the point: this python lacks the filter
    cases = {
        "safe": [("PG_VERSION", b"15\n"), ("base/1/123", b"x" * 10), ("pg_tblspc/l", "../base")],
        "absolute": [("PG_VERSION", b"15\n"), ("/etc/evil", b"x")],
        "dotdot": [("PG_VERSION", b"15\n"), ("base/../../evil", b"x")],
        "link-out": [("PG_VERSION", b"15\n"), ("pg_wal", "../../../etc")],
    }
    results = {}
    for label, members in cases.items():
        dest = tmp_path / label
        dest.mkdir()
        tar = _tar(tmp_path / f"{label}.tar", *members)
        run = subprocess.run(
            [python, "-c", SAFE_EXTRACT, str(REPO_ROOT / "agent"), str(tar), str(dest),
             "old" if old else "any"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        results[label] = run.stdout.strip()
    assert results["safe"] == "extracted"
    assert (tmp_path / "safe" / "base" / "1" / "123").read_bytes() == b"x" * 10
    for label in ("absolute", "dotdot", "link-out"):
        assert results[label].startswith("refused: "), (label, results[label])
        assert "\n" not in results[label]
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


def test_an_unsafe_base_tar_is_refused_in_one_line_naming_the_member(tmp_path: Path) -> None:
    _tar(tmp_path / "base.tar", ("PG_VERSION", b"15\n"), ("../outside", b"x"))
    with pytest.raises(SourceError) as exc:
        postgres.after_restore(PostgresSource(), tmp_path)
    message = str(exc.value)
    assert "'../outside'" in message and str(tmp_path / "base.tar") in message
    assert "\n" not in message
    assert not (tmp_path.parent / "outside").exists()
