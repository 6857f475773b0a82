"""A drill of a point-in-time restore: let the restored PostgreSQL copy replay its WAL.

A restore through the log chain (:mod:`agent.jobs.pitr`) leaves ``pgdata`` configured
to replay the gathered WAL up to the drill's point and then promote. The ordinary drill
check (:func:`agent.jobs.drill_servers.check_postgres`) starts a copy with recovery
switched off, so first this module starts the copy once as configured (unix socket in a
private folder, no network, archiving off as ``recover`` wrote), waits until recovery
ended and the server was promoted, and stops it: then the data directory holds the
state at the point, and the ordinary check starts, amchecks and counts it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.jobs.drill_servers import PG_USER, _pg_bin
from agent.jobs.drill_tools import ERROR_TAIL, free_port, one_line, run_tool, socket_dir
from shared.wire.events import DrillCheck

REPLAY_TIMEOUT_S = 600.0


def replay_postgres(data: Path, work: Path, user: str) -> DrillCheck:
    """Start ``data`` with its recovery settings, wait for the promotion, stop it."""
    if not (data / "PG_VERSION").exists():
        return DrillCheck(name="postgres replay", ok=False, detail=f"{data} is not a data dir")
    bindir = _pg_bin(data)
    run_as = PG_USER if os.geteuid() == 0 else None
    hba = work / "pg_hba-replay.conf"
    hba.write_text("local all all trust\n")
    log = work / "postgres-replay.log"
    log.touch()
    with socket_dir() as sock:
        if run_as is not None:
            run_tool(["chown", f"{PG_USER}:{PG_USER}", str(hba), str(log), str(sock)])
            run_tool(["chown", f"{PG_USER}:{PG_USER}", str(work)])
        port = free_port()
        opts = f"-p {port} -k {sock} -c listen_addresses='' -c hba_file={hba}"
        ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "300"]
        start = run_tool([*ctl, "-o", opts, "start"], as_user=run_as)
        if start.returncode != 0:
            tail = log.read_text(errors="replace")[-ERROR_TAIL:]
            return DrillCheck(
                name="postgres replay", ok=False, detail=one_line(start.stdout + " " + tail)
            )
        try:
            return _wait_promoted(str(sock), port, user, log)
        finally:
            run_tool([*ctl, "-m", "fast", "stop"], as_user=run_as)


def _wait_promoted(host: str, port: int, user: str, log: Path) -> DrillCheck:
    import psycopg

    deadline = time.monotonic() + REPLAY_TIMEOUT_S
    try:
        with psycopg.connect(
            host=host, port=port, user=user, dbname="postgres", autocommit=True, connect_timeout=30
        ) as c:
            while True:
                row = c.execute(
                    "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp()"
                ).fetchone()
                assert row is not None
                if row[0] is False:
                    last = row[1]
                    seen = f"; last replayed commit {last.isoformat()}" if last else ""
                    return DrillCheck(
                        name="postgres replay",
                        ok=True,
                        detail=f"WAL replayed to the point and promoted{seen}",
                    )
                if time.monotonic() > deadline:
                    return DrillCheck(
                        name="postgres replay",
                        ok=False,
                        detail=f"still in recovery after {REPLAY_TIMEOUT_S:g} s",
                    )
                time.sleep(0.2)
    except psycopg.Error as exc:
        tail = log.read_text(errors="replace")[-ERROR_TAIL:]
        return DrillCheck(name="postgres replay", ok=False, detail=one_line(f"{exc} {tail}"))
