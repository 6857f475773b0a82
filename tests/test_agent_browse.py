"""The agent API over real NATS (agent/browse.py): a real agent lists a real backup's
folders and streams a file's bytes in bounded chunks; secrets are masked unless names may
be revealed and their content is never sent; paths outside the backup are refused. And
the restore roots of agent.toml: a restore job outside them is refused naming them."""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from rich.console import Console

from agent.jobs.context import agent_context
from agent.jobs.restore import run_restore
from engine.keys.files import load_any_key_file
from engine.storage.open import open_target
from mosaic import operator
from shared.asking import ask_agent
from shared.config.agent import AgentConfig
from shared.config.load import load
from shared.config.targets import LocalTargetConfig
from shared.errors import ConfigError
from shared.vocab import utcnow
from shared.wire.browse import (
    MAX_CHUNK,
    SECRET_NAME,
    AgentApiError,
    FileChunk,
    FileChunkRequest,
    TreeListing,
    TreeRequest,
)
from shared.wire.events import BackupCompleted
from shared.wire.jobs import RestoreJob
from shared.wire.sources import FilesSource
from tests.harness import Stack, running_stack

BIG = 3 * MAX_CHUNK + 12345  # several chunk requests, the last one short


@asynccontextmanager
async def backed_up(nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[Stack, str]]:
    """A coordinator and agent on NATS, and one full backup of a small tree with secrets
    (a context manager, not a fixture: its task group stays in the test's task)."""
    src = tmp_path / "src"
    (src / "etc" / "app").mkdir(parents=True)
    (src / "etc" / "app" / "app.conf").write_text("listen = 8080\n")
    (src / "etc" / "app" / "tls.key").write_text("-----BEGIN PRIVATE KEY----- sekrit\n")
    (src / "etc" / "app" / "db.key").write_text("another secret\n")
    (src / "data.bin").write_bytes(random.Random(3).randbytes(BIG))
    source = FilesSource(path=str(src), secret=["*.key"])
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_url, tmp_path, target, source) as st:
        quiet = Console(file=io.StringIO())
        ev = await operator.backup(st.bus, st.dataset, "full", quiet, quiet, timeout=120)
        assert isinstance(ev, BackupCompleted)
        yield st, ev.backup_id


async def tree(
    st: Stack,
    backup_id: str,
    path: str = "",
    *,
    reveal_secret_names: bool = False,
    offset: int = 0,
    limit: int = 200,
) -> TreeListing:
    req = TreeRequest(
        backup_id=backup_id,
        path=path,
        reveal_secret_names=reveal_secret_names,
        offset=offset,
        limit=limit,
    )
    reply = await ask_agent(st.bus, st.agent.name, "tree", req)
    assert isinstance(reply, TreeListing), reply
    return reply


async def test_lists_folders_masks_secrets_and_streams_a_file(
    nats_url: str, tmp_path: Path
) -> None:
    async with backed_up(nats_url, tmp_path) as (st, bid):
        await lists_and_masks(st, bid)
        await streams_a_file(st, bid)
        await refuses_secrets_and_paths_outside(st, bid)
        await a_newer_backup_is_browsed_too(st)


async def a_newer_backup_is_browsed_too(st: Stack) -> None:
    """A backup made after the agent opened its repository (its trees and index were
    read before it existed) lists and reads as well."""
    src = Path(st.source.path)  # type: ignore[union-attr]
    (src / "later.txt").write_bytes(b"written after the first browse\n" * 1000)
    quiet = Console(file=io.StringIO())
    ev = await operator.backup(st.bus, st.dataset, "incremental", quiet, quiet, timeout=120)
    assert isinstance(ev, BackupCompleted)
    listing = await tree(st, ev.backup_id)
    assert "later.txt" in [e.name for e in listing.entries]
    req = FileChunkRequest(backup_id=ev.backup_id, path="later.txt")
    reply = await ask_agent(st.bus, st.agent.name, "chunk", req)
    assert isinstance(reply, FileChunk) and reply.eof
    assert reply.data == (src / "later.txt").read_bytes()


async def lists_and_masks(st: Stack, bid: str) -> None:
    top = await tree(st, bid)
    assert [(e.name, e.type) for e in top.entries] == [("etc", "dir"), ("data.bin", "file")]
    assert top.entries[1].size == BIG and top.dataset == st.dataset

    app = await tree(st, bid, "etc/app")
    names = [(e.name, e.size, e.secret) for e in app.entries]
    assert names == [("app.conf", 14, False), (SECRET_NAME, None, True)]  # two keys, one row

    revealed = await tree(st, bid, "/etc/app/", reveal_secret_names=True)
    shown = {e.name: (e.size, e.secret) for e in revealed.entries}
    assert shown == {"app.conf": (14, False), "db.key": (None, True), "tls.key": (None, True)}

    page = await tree(st, bid, "etc/app", reveal_secret_names=True, offset=1, limit=1)
    assert page.total == 3 and [e.name for e in page.entries] == ["db.key"]


async def streams_a_file(st: Stack, bid: str) -> None:
    got = b""
    replies = 0
    while True:
        req = FileChunkRequest(backup_id=bid, path="data.bin", offset=len(got), length=1 << 30)
        reply = await ask_agent(st.bus, st.agent.name, "chunk", req)
        assert isinstance(reply, FileChunk), reply
        assert len(reply.data) <= MAX_CHUNK and reply.size == BIG
        got += reply.data
        replies += 1
        if reply.eof:
            break
    assert got == (Path(st.source.path) / "data.bin").read_bytes()  # type: ignore[union-attr]
    assert replies == 4


REFUSALS = [
    ("chunk", "etc/app/tls.key", "secret", "etc/app/<secret> is secret"),
    ("chunk", "etc", "not_a_file", "a dir, not a file"),
    ("chunk", "nope.txt", "not_found", "not in this backup"),
    ("tree", "../../etc", "bad_request", "leaves the backup"),
    ("tree", "data.bin", "bad_request", "is not a folder"),
    ("tree", "etc/app/tls.key", "bad_request", "etc/app/<secret> is not a folder"),
]


async def refuses_secrets_and_paths_outside(st: Stack, bid: str) -> None:
    for verb, path, code, says in REFUSALS:
        req = (
            FileChunkRequest(backup_id=bid, path=path)
            if verb == "chunk"
            else TreeRequest(backup_id=bid, path=path)
        )
        reply = await ask_agent(st.bus, st.agent.name, verb, req)
        assert isinstance(reply, AgentApiError) and reply.code == code, (path, reply)
        assert says in reply.message, reply.message
        assert "tls.key" not in reply.message and "sekrit" not in reply.message


async def test_restore_outside_the_restore_roots_is_refused(nats_url: str, tmp_path: Path) -> None:
    async with backed_up(nats_url, tmp_path / "stack") as (st, bid):
        await restore_roots_refuse(st, bid, tmp_path)


async def restore_roots_refuse(st: Stack, bid: str, tmp_path: Path) -> None:
    roots = [str(tmp_path / "restore"), str(tmp_path / "more")]
    cfg = AgentConfig(
        name=st.agent.name,
        key_file=st.agent.key_file,
        targets=st.agent.targets,
        restore_roots=roots,
    )
    targets = {n: open_target(n, t) for n, t in cfg.targets.items()}
    ctx = agent_context(cfg, load_any_key_file(cfg.key_file), targets, _no_events)

    def job(dest: Path) -> RestoreJob:
        return RestoreJob(
            job_id=f"r-{dest.name}",
            backup_id=bid,
            dataset=st.dataset,
            agent=cfg.name,
            target="t",
            destination=str(dest),
            requested_at=utcnow(),
            paths=["etc/app/app.conf"],
        )

    outside = tmp_path / "restore-evil"  # a prefix of a root's name is not inside it
    with pytest.raises(ConfigError) as err:
        await run_restore(ctx, job(outside))
    assert str(err.value) == (
        f"restore destination {outside} is outside the restore roots of agent {cfg.name} "
        f"({roots[0]}, {roots[1]}); choose a folder inside one of them, or add one to "
        "restore_roots in its agent.toml"
    )
    assert not outside.exists()
    inside = tmp_path / "restore" / "one"
    await run_restore(ctx, job(inside))
    assert (inside / "etc" / "app" / "app.conf").read_text() == "listen = 8080\n"
    for t in targets.values():
        await t.aclose()


async def _no_events(_ev: object) -> None:
    return None


def test_restore_roots_must_be_absolute(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        f'name = "a1"\nkey_file = "{tmp_path / "k"}"\nrestore_roots = ["srv/restore"]\n'
        f'[targets.t]\ntype = "local"\npath = "{tmp_path}"\n'
    )
    with pytest.raises(ConfigError) as err:
        load(toml, AgentConfig)
    assert "restore_roots" in str(err.value) and "'srv/restore' is not an absolute" in str(
        err.value
    )
