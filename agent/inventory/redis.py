"""Redis servers running on the host, found by their processes.

Redis retitles itself ``redis-server HOST:PORT``; the port is read from its listening
sockets (the title is the fallback), its folder (``dir``, where the RDB and AOF live)
from its working folder: Redis chdirs into ``dir``.
"""

from __future__ import annotations

from agent.inventory.procs import processes
from shared.config.inventory import InventoryConfig
from shared.wire.inventory import InventoryItem, ProbeError


def _title_port(argv0: str) -> int | None:
    parts = argv0.split()
    if len(parts) > 1 and ":" in parts[1]:
        tail = parts[1].rsplit(":", 1)[1]
        return int(tail) if tail.isdigit() and int(tail) > 0 else None
    return None


def probe(cfg: InventoryConfig) -> tuple[list[InventoryItem], list[ProbeError]]:
    items: list[InventoryItem] = []
    seen: set[str] = set()
    for p in processes(cfg.proc_root):
        if not p.argv[0].split(" ", 1)[0].endswith("redis-server"):
            continue
        ports, sockets = p.listening()
        port = ports[0] if ports else _title_port(p.argv[0])
        key = str(port) if port else (sockets[0] if sockets else f"pid {p.pid}")
        if key in seen:
            continue
        seen.add(key)
        detail = [f"port {port}"] if port else []
        detail += [f"dir {p.cwd}"] if p.cwd else []
        items.append(
            InventoryItem(
                kind="redis",
                key=key,
                detail=", ".join(detail),
                path=p.cwd,
                port=port,
                sockets=sockets,
            )
        )
    return items, []
