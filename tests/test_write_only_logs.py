"""Log backups on write-only agents: a PostgreSQL base backup and a WAL backup taken by
an agent that holds only the write-only key, then a point-in-time restore with the full
key (on the coordinator's host) that holds exactly the rows committed before the instant.
A write-only agent cannot read the chain, so without its own record of the base (a lost
state_dir) the next incremental becomes a new base backup instead of a broken log backup.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import psycopg
import pytest
from rich.console import Console

from agent.runner import AgentRunner
from engine.keys.files import create_key_file, load_any_key_file
from engine.keys.ops import write_only_entry
from engine.keys.writeonly import WriteOnlyKey, write_write_only_key
from engine.repository import Repository
from engine.storage.local import LocalTarget
from engine.storage.open import open_target
from mosaic import operator
from shared.config.agent import AgentConfig
from shared.config.targets import LocalTargetConfig
from shared.wire.events import BackupCompleted, RestoreCompleted
from shared.wire.sources import PostgresSource
from tests.fixtures.postgres import ArchivingPostgres
from tests.harness import running_stack, unique
from tests.test_source_postgres_pitr import restored_server

QUIET = Console(quiet=True)


@pytest.fixture
def restore_root() -> Iterator[Path]:
    # postgres must reach the restored data directory: pytest's tmp_path is root-only
    base = Path(tempfile.mkdtemp(prefix="mosaic-wo-pitr-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@asynccontextmanager
async def _agent(cfg: AgentConfig) -> AsyncIterator[None]:
    """The agent ``cfg`` describes, running until the block ends."""
    key = load_any_key_file(cfg.key_file)
    targets = {n: open_target(n, t) for n, t in cfg.targets.items()}
    runner = AgentRunner(cfg, key, targets)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        try:
            yield
        finally:
            await runner.aclose()
            tg.cancel_scope.cancel()


def _ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM wo_items ORDER BY id").fetchall()]


async def test_write_only_agent_log_backup_restores_to_a_point_in_time(
    nats_url: str, tmp_path: Path, archiving_postgres: ArchivingPostgres, restore_root: Path
) -> None:
    server = archiving_postgres
    repo_dir = tmp_path / "repo"
    target = LocalTargetConfig(path=str(repo_dir))
    full_key = tmp_path / "full.key"
    master = create_key_file(full_key)
    local = LocalTarget("t", repo_dir)
    repo = await Repository.open(local, master, create=True)
    wo_key = tmp_path / "write-only.key"
    write_write_only_key(wo_key, [await write_only_entry(repo, master)])
    assert isinstance(load_any_key_file(wo_key), WriteOnlyKey)

    name = unique("agent")
    state = tmp_path / "state"
    wo_cfg = AgentConfig(
        name=name,
        nats_url=nats_url,
        key_file=str(wo_key),
        targets={"t": target},
        ack_wait_s=5.0,
        state_dir=str(state),
    )
    source = PostgresSource(port=server.port, wal_spool=str(server.spool))
    async with running_stack(
        nats_url, tmp_path, target, source, with_agent=False, agent_name=name
    ) as st:
        async with _agent(wo_cfg):
            base = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=120)
            assert isinstance(base, BackupCompleted)
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS wo_items")
                conn.execute("CREATE TABLE wo_items (id int primary key, note text)")
                conn.execute("INSERT INTO wo_items SELECT g, 'A' FROM generate_series(1, 300) g")
                time.sleep(1)
                instant = datetime.now(UTC)
                time.sleep(1)
                conn.execute("INSERT INTO wo_items SELECT g, 'B' FROM generate_series(301, 450) g")
            log = await operator.backup(
                st.bus, st.dataset, "incremental", QUIET, QUIET, timeout=120
            )
            # a log backup, not a fall-back to a new base
            assert isinstance(log, BackupCompleted) and log.backup_type == "incremental"
            assert log.log_lag_s is not None
            assert not [
                n for n in os.listdir(server.spool) if not n.endswith(".history") and n[0] != "."
            ]

            # a lost state_dir: the agent cannot vouch for any base, so it takes a new one
            shutil.rmtree(state)
            again = await operator.backup(
                st.bus, st.dataset, "incremental", QUIET, QUIET, timeout=120
            )
            assert isinstance(again, BackupCompleted) and again.backup_type == "full"

        full = await Repository.open(local, master)
        stored = await full.load_manifest(log.backup_id)
        assert stored.backup_type == "incremental" and stored.parent == base.backup_id
        assert (await full.load_manifest(again.backup_id)).parent is None

        # the restore runs where the full key is kept: the same agent name, full key file
        full_cfg = AgentConfig(
            name=name,
            nats_url=nats_url,
            key_file=str(full_key),
            targets={"t": target},
            ack_wait_s=5.0,
            state_dir=str(tmp_path / "full-state"),
        )
        at = restore_root / "at-instant"
        async with _agent(full_cfg):
            done = await operator.restore(
                st.bus, log.backup_id, str(at), QUIET, QUIET, timeout=120, pitr=instant
            )
            assert isinstance(done, RestoreCompleted)

    with restored_server(at) as url:
        assert _ids(url) == list(range(1, 301))  # batch A, none of batch B
