"""Restore drills: restore a backup into a scratch folder, prove it is usable, remove it.

A backup is only as good as its last successful restore. A drill restores one backup
exactly as an operator would (``restore_backup``, which authenticates every blob and
re-hashes its id), then checks the result the way its kind is used:

- files (and any source whose restored files stay as they were stored: system state,
  Redis's ``dump.rdb``, a ``pg_dump`` file): every file is cut and hashed again with
  the repository's chunker and key and compared with the manifest's chunk list, and the
  counts of files and bytes with the manifest's summary;
- PostgreSQL base backup: a throwaway server is started on the restored ``pgdata`` (as
  the ``postgres`` user when run as root; only a unix socket in the scratch folder, a
  private ``pg_hba.conf`` that trusts local connections, WAL archiving off so the copy can
  never write into production's archive), ``pg_amcheck --all --install-missing`` (which
  creates the amcheck extension: the server is writable, it is a copy), and the rows of
  every user table are counted;
- MariaDB (mariabackup): ``mariadbd`` on the prepared data directory with
  ``--skip-grant-tables --skip-networking``, then ``CHECK TABLE`` on every table;
- Redis: ``redis-check-rdb`` on the restored ``dump.rdb``, and ``redis-check-aof`` on
  the AOF manifest when the backup holds ``appendonlydir/`` (the AOF is what the server
  loads first, so a broken AOF is a broken restore even with a good RDB);
- Docker volume: the restored ``<volume>.tar`` is listed with ``tarfile`` and every
  member's data must lie inside the file as its header says (a truncated export fails);
- a ``pg_dump`` file also gets ``pg_restore --list``.

RTO is the time from the drill's start until the data was restored and checked; RPO the
age of the dataset's newest backup (known to the coordinator, sent in the job) at the
start. The scratch folder is removed whatever happens, and a throwaway server is stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread

from agent.maintenance import MaintenanceContext
from agent.sources import restore_backup
from engine.format.manifest import Manifest, Node
from engine.repository import Repository
from shared.errors import MosaicError, PartialRestoreError
from shared.vocab import utcnow
from shared.wire.events import DrillCheck, DrillCompleted
from shared.wire.jobs import DrillJob
from shared.wire.sources import (
    DockerVolumeSource,
    MariaDBSource,
    PostgresSource,
    RedisSource,
    Source,
)

PG_USER = "postgres"
TOOL_TIMEOUT_S = 600.0
ERROR_TAIL = 400  # characters of a tool's output kept in a failed check
SHOWN_TABLES = 50  # tables named in a row-count check's detail


async def run_drill(ctx: MaintenanceContext, job: DrillJob) -> DrillCompleted:
    t0 = time.monotonic()
    started = utcnow()
    rpo = (started - job.newest_at).total_seconds() if job.newest_at is not None else None
    base = Path(job.scratch) if job.scratch else Path(tempfile.gettempdir())
    await anyio.to_thread.run_sync(lambda: base.mkdir(parents=True, exist_ok=True))
    scratch = Path(await anyio.to_thread.run_sync(_mkdtemp, base, job.job_id))
    try:
        checks = await _restore_and_check(ctx, job, scratch)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))
    rto = time.monotonic() - t0
    ok = bool(checks) and all(c.ok for c in checks)
    return DrillCompleted(
        job_id=job.job_id,
        agent=ctx.agent,
        dataset=job.dataset,
        target=job.target,
        backup_id=job.backup_id,
        outcome="passed" if ok else "failed",
        rto_s=rto,
        rpo_s=rpo,
        checks=checks,
        started_at=started,
        at=utcnow(),
    )


def _mkdtemp(base: Path, job_id: str) -> str:
    return tempfile.mkdtemp(prefix=f"mosaic-drill-{job_id[:24]}-", dir=base)


async def _restore_and_check(
    ctx: MaintenanceContext, job: DrillJob, scratch: Path
) -> list[DrillCheck]:
    dest = scratch / "restore"
    try:
        repo = await ctx.open(ctx.target(job.target), create=False)
        manifest = await repo.load_manifest(job.backup_id)
        nodes = await repo.read_tree(manifest)
        files, nbytes = await restore_backup(repo, manifest, dest)
    except PartialRestoreError as exc:
        # the damaged files first (their objects named), then how many: a tail cut
        # would keep only the advice
        head = f"{len(exc.damaged)} file(s) damaged: " + "; ".join(exc.damaged[:3])
        return [DrillCheck(name="restore", ok=False, detail=" ".join(head.split())[:ERROR_TAIL])]
    except MosaicError as exc:
        return [DrillCheck(name="restore", ok=False, detail=_one_line(str(exc)))]
    checks = [DrillCheck(name="restore", ok=True, detail=f"{files} files, {nbytes} bytes")]
    src = manifest.source
    if _files_stay(src):
        checks.append(await anyio.to_thread.run_sync(rehash, repo, manifest, nodes, dest))
    checks += await anyio.to_thread.run_sync(check_usable, src, dest, scratch)
    return checks


def _files_stay(src: Source) -> bool:
    """Whether restored files stay as stored (base backups are unpacked into a data dir)."""
    if isinstance(src, PostgresSource):
        return src.mode == "dump"
    if isinstance(src, MariaDBSource):
        return src.mode == "dump"
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())[-ERROR_TAIL:]


# --- checks -----------------------------------------------------------------------------


def rehash(repo: Repository, manifest: Manifest, nodes: list[Node], root: Path) -> DrillCheck:
    """Hash every restored file again and compare with the manifest (CPU; a thread)."""
    chunker = repo.chunker()
    files = nbytes = 0
    bad: list[str] = []
    for node in nodes:
        if node.type not in ("file", "hardlink"):
            continue
        path = os.path.join(os.fsencode(root), node.path)
        try:
            with open(path, "rb") as f:
                ids = [repo.keys.chunk_id(c.data) for c in chunker.cut_stream(f)]
            size = os.lstat(path).st_size
        except OSError as exc:
            bad.append(f"{os.fsdecode(node.path)}: {exc.strerror}")
            continue
        files += 1
        if node.type == "file":
            nbytes += size
        if ids != node.chunks or size != node.size:
            bad.append(f"{os.fsdecode(node.path)}: content differs from the manifest")
    s = manifest.summary
    if not bad and (files, nbytes) != (s.files, s.bytes_read):
        bad.append(
            f"restored {files} files, {nbytes} bytes; manifest says {s.files}, {s.bytes_read}"
        )
    detail = f"{files} files, {nbytes} bytes re-hashed"
    if bad:
        detail = f"{len(bad)} problem(s): " + "; ".join(bad[:5])
    return DrillCheck(name="rehash", ok=not bad, detail=detail)


def check_usable(src: Source, dest: Path, scratch: Path) -> list[DrillCheck]:
    """Start or read the restored data with its own tools (blocking; a thread)."""
    if isinstance(src, PostgresSource) and src.mode == "basebackup":
        with _socket_dir() as sock:
            return check_postgres(dest / "pgdata", scratch, sock, src.user)
    if isinstance(src, PostgresSource):
        return [
            _tool("pg_restore", ["pg_restore", "--list", str(p)])
            for p in sorted(dest.glob("*.dump"))
        ]
    if isinstance(src, MariaDBSource) and src.mode == "mariabackup":
        with _socket_dir() as sock:
            return check_mariadb(dest / "mysql-data", scratch, sock)
    if isinstance(src, RedisSource):
        return [
            _tool("redis-check-rdb", ["redis-check-rdb", str(dest / "dump.rdb")]),
            *check_aof(dest / "appendonlydir"),
        ]
    if isinstance(src, DockerVolumeSource):
        return [check_tar(p) for p in sorted(dest.glob("*.tar"))] or [
            DrillCheck(name="tar", ok=False, detail=f"no volume tar in the backup of {src.volume}")
        ]
    return []


def check_aof(folder: Path) -> list[DrillCheck]:
    """``redis-check-aof`` on a multi-part AOF's manifest (it checks every file the
    manifest names); nothing when the backup holds no AOF."""
    if not folder.is_dir():
        return []
    found = sorted(folder.glob("*.manifest"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        return [
            DrillCheck(
                name="redis-check-aof",
                ok=False,
                detail=f"{folder.name}/ needs exactly one AOF manifest, found {names}",
            )
        ]
    return [_tool("redis-check-aof", ["redis-check-aof", str(found[0])])]


def check_tar(path: Path) -> DrillCheck:
    """List a tar and check that every member's data, as long as its header says, is in
    the file: ``tarfile`` alone stops quietly at a truncated member."""
    name = f"tar {path.name}"
    size = path.stat().st_size
    members = nbytes = 0
    try:
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                members += 1
                if not m.isreg():
                    continue
                nbytes += m.size
                end = m.offset_data + m.size
                if end > size:
                    return DrillCheck(
                        name=name,
                        ok=False,
                        detail=f"member {m.name!r} is cut short: its header says {m.size} "
                        f"bytes, the file holds {max(size - m.offset_data, 0)}",
                    )
    except (tarfile.TarError, OSError) as exc:
        return DrillCheck(name=name, ok=False, detail=f"unreadable after {members} members: {exc}")
    if members == 0:
        return DrillCheck(name=name, ok=False, detail="no members: an empty archive")
    return DrillCheck(name=name, ok=True, detail=f"{members} members, {nbytes} bytes listed")


@contextlib.contextmanager
def _socket_dir() -> Iterator[Path]:
    """A short folder for a throwaway server's unix socket: a socket path must stay below
    108 bytes, which a scratch folder deep in the file system would exceed."""
    sock = Path(tempfile.mkdtemp(prefix="mosaic-sock-", dir="/tmp"))
    try:
        yield sock
    finally:
        shutil.rmtree(sock, ignore_errors=True)


def _run(argv: list[str], *, as_user: str | None = None) -> subprocess.CompletedProcess[str]:
    if as_user is not None and os.geteuid() == 0:
        argv = ["runuser", "-u", as_user, "--", *argv]
    try:
        return subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 127, f"{argv[0]}: {exc}")


def _tool(
    name: str, argv: list[str], *, as_user: str | None = None, quiet: str = "ok"
) -> DrillCheck:
    proc = _run(argv, as_user=as_user)
    if proc.returncode != 0:
        why = _one_line(proc.stdout) or "no output"
        return DrillCheck(name=name, ok=False, detail=f"exit {proc.returncode}: {why}")
    lines = proc.stdout.strip().splitlines()
    return DrillCheck(name=name, ok=True, detail=_one_line(lines[-1]) if lines else quiet)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin(data: Path) -> Path:
    """The binaries of the restored cluster's major version (Debian layout), else PATH."""
    version = (data / "PG_VERSION").read_text().strip()
    for d in (Path(f"/usr/lib/postgresql/{version}/bin"), Path(f"/usr/pgsql-{version}/bin")):
        if (d / "pg_ctl").exists():
            return d
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else Path("/usr/bin")


def check_postgres(data: Path, work: Path, sock: Path, user: str) -> list[DrillCheck]:
    if not (data / "PG_VERSION").exists():
        return [DrillCheck(name="postgres", ok=False, detail=f"{data} is not a data directory")]
    bindir = _pg_bin(data)
    run_as = PG_USER if os.geteuid() == 0 else None
    hba = work / "pg_hba.conf"
    hba.write_text("local all all trust\n")
    log = work / "postgres.log"
    log.touch()
    for name in ("standby.signal", "recovery.signal"):  # a copy must come up writable
        (data / name).unlink(missing_ok=True)
    if run_as is not None:
        _run(["chown", "-R", f"{PG_USER}:{PG_USER}", str(work), str(sock)])
    os.chmod(data, 0o700)
    port = _free_port()
    opts = (
        f"-p {port} -k {sock} -c listen_addresses='' -c hba_file={hba} "
        "-c archive_mode=off -c restore_command='' -c log_min_messages=warning"
    )
    ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "300"]
    start = _run([*ctl, "-o", opts, "start"], as_user=run_as)
    if start.returncode != 0:
        tail = log.read_text(errors="replace")[-ERROR_TAIL:]
        why = _one_line(start.stdout + " " + tail)
        return [DrillCheck(name="postgres start", ok=False, detail=why)]
    try:
        checks = [DrillCheck(name="postgres start", ok=True, detail="server accepted connections")]
        conn = ["-h", str(sock), "-p", str(port), "-U", user]
        checks.append(
            _tool(
                "pg_amcheck",
                [
                    str(bindir / "pg_amcheck"),
                    *conn,
                    "--all",
                    "--install-missing",
                    "--heapallindexed",
                ],
                as_user=run_as,
                quiet="no corruption found (--all --heapallindexed)",
            )
        )
        checks += _pg_row_counts(str(sock), port, user)
        return checks
    finally:
        _run([*ctl, "-m", "fast", "stop"], as_user=run_as)


def _pg_row_counts(host: str, port: int, user: str) -> list[DrillCheck]:
    import psycopg
    from psycopg import sql

    def connect(db: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host=host, port=port, user=user, dbname=db, connect_timeout=30)

    out: list[DrillCheck] = []
    try:
        with connect("postgres") as c:
            dbs = [
                str(r[0])
                for r in c.execute(
                    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
                    " ORDER BY datname"
                )
            ]
        for db in dbs:
            counts: list[str] = []
            total = 0
            with connect(db) as c:
                tables = c.execute(
                    "SELECT n.nspname, c.relname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN"
                    " ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
                    " ORDER BY 1, 2"
                ).fetchall()
                for schema, table in tables:
                    q = sql.SQL("SELECT count(*) FROM {}.{}").format(
                        sql.Identifier(str(schema)), sql.Identifier(str(table))
                    )
                    row = c.execute(q).fetchone()
                    n = int(str(row[0])) if row else 0
                    total += n
                    counts.append(f"{schema}.{table}={n}")
            shown = ", ".join(counts[:SHOWN_TABLES]) + (" …" if len(counts) > SHOWN_TABLES else "")
            detail = f"{len(counts)} tables, {total} rows" + (f": {shown}" if counts else "")
            out.append(DrillCheck(name=f"rows {db}", ok=True, detail=detail))
    except psycopg.Error as exc:
        out.append(DrillCheck(name="rows", ok=False, detail=_one_line(str(exc))))
    return out


def check_mariadb(data: Path, work: Path, sock_dir: Path) -> list[DrillCheck]:
    """``mariadbd`` on the prepared copy, no network and no grant tables, then CHECK TABLE."""
    if not data.is_dir():
        return [DrillCheck(name="mariadb", ok=False, detail=f"{data} is not a data directory")]
    sock, pid, log = sock_dir / "mysqld.sock", work / "mysqld.pid", work / "mysqld.err"
    argv = [
        "mariadbd",
        "--no-defaults",
        f"--datadir={data}",
        f"--socket={sock}",
        "--skip-networking",
        "--skip-grant-tables",
        f"--pid-file={pid}",
        f"--log-error={log}",
    ]
    if os.geteuid() == 0:
        argv.append("--user=root")
    try:
        server = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    except OSError as exc:
        return [DrillCheck(name="mariadb start", ok=False, detail=str(exc))]
    client = ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root", "-N", "-B", "-e"]
    try:
        deadline = time.monotonic() + 120
        while _run([*client, "SELECT 1"]).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-ERROR_TAIL:] if log.exists() else ""
                return [DrillCheck(name="mariadb start", ok=False, detail=_one_line(tail))]
            time.sleep(0.2)
        checks = [DrillCheck(name="mariadb start", ok=True, detail="server accepted connections")]
        listing = _run(
            [
                *client,
                "SELECT CONCAT('`', table_schema, '`.`', table_name, '`')"
                " FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND"
                " table_schema NOT IN ('mysql', 'information_schema', 'performance_schema',"
                " 'sys')",
            ]
        )
        tables = [t for t in listing.stdout.split("\n") if t.strip()]
        if listing.returncode != 0:
            return [*checks, DrillCheck(name="check table", ok=False, detail=listing.stdout)]
        bad: list[str] = []
        for table in tables:
            res = _run([*client, f"CHECK TABLE {table}"])
            rows = [line.split("\t") for line in res.stdout.splitlines() if line.strip()]
            status = [r for r in rows if len(r) >= 4 and r[2] in ("status", "error")]
            if res.returncode != 0 or not status or any(r[3] != "OK" for r in status):
                bad.append(f"{table}: {_one_line(res.stdout)}")
        shown = ", ".join(tables[:SHOWN_TABLES]) + (" …" if len(tables) > SHOWN_TABLES else "")
        detail = f"{len(tables)} tables OK: {shown}" if not bad else "; ".join(bad[:5])
        checks.append(DrillCheck(name="check table", ok=not bad, detail=detail))
        return checks
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
