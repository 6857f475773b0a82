"""Redis source: an RDB snapshot streamed through an agent, restored into a new server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from agent.sources.command import require
from mosaic import operator
from shared.config import LocalTargetConfig
from shared.errors import SourceError
from shared.messages import BackupCompleted, RedisSource
from tests.fixtures.redis import RedisServer, start_redis
from tests.harness import running_stack

QUIET = Console(quiet=True)


async def test_redis_backup_restores_into_a_new_server(
    nats_url: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    for i in range(500):
        redis_server.cli("SET", f"key:{i}", f"value {i} " * 20)
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
    from shared.natsserver import free_port

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
