"""MariaDB and MySQL servers running on the host, found by their processes.

A ``mariadbd``/``mysqld`` process; its data directory is ``--datadir`` or its working
folder (the server chdirs there), its port and socket are ``--port``/``--socket`` or,
when the command line does not say (a my.cnf did), its listening sockets. Nothing is
asked of the server itself, so no credentials are needed.
"""

from __future__ import annotations

import os

from agent.inventory.procs import processes, resolve
from shared.config.inventory import InventoryConfig
from shared.wire.inventory import InventoryItem, ProbeError

NAMES = ("mariadbd", "mysqld")


def probe(cfg: InventoryConfig) -> tuple[list[InventoryItem], list[ProbeError]]:
    items: list[InventoryItem] = []
    errors: list[ProbeError] = []
    seen: set[str] = set()
    for p in processes(cfg.proc_root):
        if p.name not in NAMES:
            continue
        given = p.option("--datadir")
        if given is None and p.cwd is None:
            errors.append(
                ProbeError(probe="mariadb", message=f"pid {p.pid}: data directory unknown")
            )
            continue
        data_dir = resolve(given, p.cwd) if given else os.path.normpath(p.cwd or "/")
        if data_dir in seen:
            continue
        seen.add(data_dir)
        ports, sockets = p.listening()
        opt_port = p.option("--port")
        port = int(opt_port) if opt_port and opt_port.isdigit() else (ports[0] if ports else None)
        opt_socket = p.option("--socket")
        socks = [resolve(opt_socket, data_dir)] if opt_socket else sockets
        where = [f"port {port}"] if port else []
        where += [f"socket {s}" for s in socks]
        items.append(
            InventoryItem(
                kind="mariadb",
                key=data_dir,
                detail=", ".join(where) or "no port or socket found",
                path=data_dir,
                port=port or None,
                sockets=socks,
            )
        )
    return items, errors
