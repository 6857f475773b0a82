"""Redis source: an RDB snapshot streamed through an agent, restored into a new server;
with AOF on, the AOF files too, from which a server started with ``--appendonly yes``
holds every key, also those written after the last rewrite."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

from agent.sources import redis
from agent.sources.command import require
from mosaic import operator
from shared.config.targets import LocalTargetConfig
from shared.errors import SourceError
from shared.natsserver import free_port
from shared.wire.events import BackupCompleted
from shared.wire.sources import RedisSource
from tests.fixtures.redis import RedisServer, start_redis
from tests.harness import running_stack

QUIET = Console(quiet=True)


async def test_redis_backup_restores_into_a_new_server(
    nats_url: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.load([["SET", f"key:{i}", f"value {i} " * 20] for i in range(500)])
    redis_server.cli("RPUSH", "queue", "a", "b", "c")
    source = RedisSource(port=redis_server.port)
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted) and done.summary.files == 1
        redis_server.cli("FLUSHALL")  # the original is lost
        dest = tmp_path / "restored"
        await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60)
    rdb = dest / "dump.rdb"
    check = subprocess.run(["redis-check-rdb", str(rdb)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fresh = start_redis(dest, "--dbfilename", "dump.rdb")
    try:
        assert fresh.cli("DBSIZE") == "501"
        assert fresh.cli("GET", "key:499") == ("value 499 " * 20).strip()
        assert fresh.cli("LRANGE", "queue", "0", "-1").split() == ["a", "b", "c"]
    finally:
        fresh.stop()


async def test_unreachable_redis_fails_the_job_naming_host_and_port(
    nats_url: str, tmp_path: Path
) -> None:
    port = free_port()
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), RedisSource(port=port)
    ) as st:
        with pytest.raises(operator.OperatorError) as exc:
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
    msg = str(exc.value)
    assert f"127.0.0.1:{port}" in msg and "failed" in msg
    assert not (tmp_path / "r" / "manifests").exists() or not any(
        (tmp_path / "r" / "manifests").iterdir()
    )


def test_missing_tool_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SourceError, match="install the Debian package 'redis-tools'"):
        require("redis-cli")


def _rewrite_aof(server: RedisServer) -> None:
    """BGREWRITEAOF and wait for it: what is written next lives only in an incr file."""
    server.cli("BGREWRITEAOF")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = server.cli("INFO", "persistence")
        if "aof_rewrite_in_progress:0" in info and "aof_rewrite_scheduled:0" in info:
            return
        time.sleep(0.05)
    raise AssertionError(f"AOF rewrite did not finish: {info}")


async def test_aof_backup_restores_every_key_from_the_aof_alone(
    nats_url: str, tmp_path: Path, redis_aof_server: RedisServer
) -> None:
    server = redis_aof_server
    server.load([["SET", f"old:{i}", f"base {i}"] for i in range(300)])
    _rewrite_aof(server)  # old:* now in the base file
    server.load([["SET", f"new:{i}", f"incr {i}"] for i in range(200)])
    server.cli("DEL", "old:0")
    server.cli("RPUSH", "queue", "a", "b", "c")
    source = RedisSource(port=server.port)
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        assert done.summary.files == 4  # dump.rdb, the AOF manifest, base and incr files
        server.cli("FLUSHALL")  # the original is lost
        dest = tmp_path / "restored"
        await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60)
    manifest = dest / "appendonlydir" / "appendonly.aof.manifest"
    check = subprocess.run(["redis-check-aof", str(manifest)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    (dest / "dump.rdb").unlink()  # prove the keys come from the AOF
    fresh = start_redis(dest, "--appendonly", "yes")
    try:
        assert fresh.cli("DBSIZE") == "500"
        assert fresh.cli("EXISTS", "old:0") == "0"
        assert fresh.cli("GET", "old:299") == "base 299"
        assert fresh.cli("GET", "new:199") == "incr 199"
        assert fresh.cli("LRANGE", "queue", "0", "-1").split() == ["a", "b", "c"]
    finally:
        fresh.stop()


def test_aof_is_left_out_when_asked_or_when_the_server_has_it_off(
    redis_aof_server: RedisServer, redis_server: RedisServer
) -> None:
    names = [s.name for s in redis.streams(RedisSource(port=redis_aof_server.port, aof=False))]
    assert names == [b"dump.rdb"]
    assert [s.name for s in redis.streams(RedisSource(port=redis_server.port))] == [b"dump.rdb"]


def test_aof_on_another_host_says_where_it_looked(
    tmp_path: Path, redis_aof_server: RedisServer
) -> None:
    elsewhere = tmp_path / "not-mounted"
    with pytest.raises(SourceError, match=r"not-mounted/appendonlydir.* is not on this host"):
        redis.streams(RedisSource(port=redis_aof_server.port, aof_dir=str(elsewhere)))
