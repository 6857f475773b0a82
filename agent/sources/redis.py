"""Redis: an RDB snapshot fetched over the replication protocol (``redis-cli --rdb -``).

The server writes a consistent point-in-time snapshot for a replica and streams it; we
chunk it as it arrives. The password is never in a job or a config file: redis-cli reads
``REDISCLI_AUTH`` from the agent's environment. Restore puts ``dump.rdb`` into the
destination folder, ready for ``redis-server --dir DEST --dbfilename dump.rdb`` (and
``redis-check-rdb``).
"""

from __future__ import annotations

from agent.sources.base import Stream, StreamHandle
from agent.sources.command import CommandStream
from shared.messages import RedisSource


def streams(src: RedisSource) -> list[Stream]:
    def open_rdb() -> StreamHandle:
        argv = ["redis-cli", "-h", src.host, "-p", str(src.port), "--no-auth-warning"]
        if src.user:
            argv += ["--user", src.user]
        return CommandStream([*argv, "--rdb", "-"], f"redis-cli --rdb from {src.host}:{src.port}")

    return [Stream(b"dump.rdb", open_rdb)]
