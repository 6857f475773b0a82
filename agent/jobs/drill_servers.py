"""Drill checks that start a throwaway server on the restored data: PostgreSQL (a
base backup's ``pgdata``) and MariaDB (a prepared mariabackup data directory). Only a
unix socket in a private folder, no network; the server is stopped before returning."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from agent.jobs.drill_tools import ERROR_TAIL, free_port, one_line, run_tool, tool_check
from shared.wire.events import DrillCheck

PG_USER = "postgres"
SHOWN_TABLES = 50  # tables named in a row-count check's detail


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
        run_tool(["chown", "-R", f"{PG_USER}:{PG_USER}", str(work), str(sock)])
    os.chmod(data, 0o700)
    port = free_port()
    opts = (
        f"-p {port} -k {sock} -c listen_addresses='' -c hba_file={hba} "
        "-c archive_mode=off -c restore_command='' -c log_min_messages=warning"
    )
    ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "300"]
    start = run_tool([*ctl, "-o", opts, "start"], as_user=run_as)
    if start.returncode != 0:
        tail = log.read_text(errors="replace")[-ERROR_TAIL:]
        why = one_line(start.stdout + " " + tail)
        return [DrillCheck(name="postgres start", ok=False, detail=why)]
    try:
        checks = [DrillCheck(name="postgres start", ok=True, detail="server accepted connections")]
        conn = ["-h", str(sock), "-p", str(port), "-U", user]
        checks.append(
            tool_check(
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
        run_tool([*ctl, "-m", "fast", "stop"], as_user=run_as)


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
        out.append(DrillCheck(name="rows", ok=False, detail=one_line(str(exc))))
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
        while run_tool([*client, "SELECT 1"]).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-ERROR_TAIL:] if log.exists() else ""
                return [DrillCheck(name="mariadb start", ok=False, detail=one_line(tail))]
            time.sleep(0.2)
        checks = [DrillCheck(name="mariadb start", ok=True, detail="server accepted connections")]
        listing = run_tool(
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
            res = run_tool([*client, f"CHECK TABLE {table}"])
            rows = [line.split("\t") for line in res.stdout.splitlines() if line.strip()]
            status = [r for r in rows if len(r) >= 4 and r[2] in ("status", "error")]
            if res.returncode != 0 or not status or any(r[3] != "OK" for r in status):
                bad.append(f"{table}: {one_line(res.stdout)}")
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
