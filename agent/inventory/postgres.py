"""PostgreSQL clusters running on the host, found by their postmaster processes.

A postmaster is a ``postgres`` (or ``postmaster``) process whose command line is still
the program's own (its children retitle themselves ``postgres: …``). Its data directory
is ``-D``/``--pgdata`` or, failing that, its working folder (the postmaster chdirs
there). ``postmaster.pid`` in the data directory gives the port and the socket folder
(lines 4 and 5 of the file); the process's listening sockets are the fallback. The
databases are listed when the agent can log in (``[inventory] postgres_user`` over the
socket folder, else 127.0.0.1; password from the agent's environment like the source's):
a cluster it cannot log into is still reported, with a ProbeError saying why.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from agent.inventory.procs import Process, processes, resolve
from shared.config.inventory import InventoryConfig
from shared.wire.inventory import InventoryItem, ProbeError

NAMES = ("postgres", "postmaster")
CONNECT_TIMEOUT_S = 3


def is_postmaster(p: Process) -> bool:
    return p.name in NAMES and not p.argv[0].endswith(":")


def _pid_file(data_dir: str) -> tuple[int | None, list[str]]:
    """Port and socket folders from ``postmaster.pid`` (None, [] when unreadable)."""
    try:
        lines = (Path(data_dir) / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None, []
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    dirs = [d for d in (lines[4].split(",") if len(lines) > 4 else []) if d.strip()]
    return port, [d.strip() for d in dirs]


def databases(port: int, socket_dirs: list[str], user: str) -> list[str]:
    host = socket_dirs[0] if socket_dirs else "127.0.0.1"
    with psycopg.connect(
        host=host, port=port, user=user, dbname="postgres", connect_timeout=CONNECT_TIMEOUT_S
    ) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname"
        ).fetchall()
    return [str(r[0]) for r in rows]


def probe(cfg: InventoryConfig) -> tuple[list[InventoryItem], list[ProbeError]]:
    items: list[InventoryItem] = []
    errors: list[ProbeError] = []
    seen: set[str] = set()
    for p in processes(cfg.proc_root):
        if not is_postmaster(p):
            continue
        given = p.option("-D", "--pgdata")
        if given is None and p.cwd is None:
            errors.append(
                ProbeError(probe="postgres", message=f"pid {p.pid}: data directory unknown")
            )
            continue
        data_dir = resolve(given, p.cwd) if given else os.path.normpath(p.cwd or "/")
        if data_dir in seen:
            continue
        seen.add(data_dir)
        port, socket_dirs = _pid_file(data_dir)
        ports, sockets = p.listening()
        if port is None:
            port = ports[0] if ports else None
        if not socket_dirs:
            socket_dirs = sorted({os.path.dirname(s) for s in sockets if ".s.PGSQL." in s})
        names: list[str] = []
        if port is not None:
            try:
                names = databases(port, socket_dirs, cfg.postgres_user)
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                errors.append(
                    ProbeError(
                        probe="postgres",
                        message=f"{data_dir}: databases not listed as {cfg.postgres_user}: {first}",
                    )
                )
        detail = f"port {port}" if port is not None else "no TCP port"
        if names:
            detail += f", databases: {', '.join(names)}"
        items.append(
            InventoryItem(
                kind="postgres",
                key=data_dir,
                detail=detail,
                path=data_dir,
                port=port,
                sockets=socket_dirs,
                databases=names,
            )
        )
    return items, errors
