"""``mosaic-backup quickstart``: the whole system on one machine, end to end.

Starts a private nats-server with JetStream, a coordinator with the SQLite catalog and
one agent (both in this process), backs up a folder through NATS into an encrypted
local repository, restores it into a fresh folder, compares every byte and prints what
happened. Exit code 1 if anything differs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import anyio
from rich.console import Console
from rich.table import Table

from agent.keysetup import key_notice, prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import open_catalog
from coordinator.service import Coordinator
from engine.storage.open import open_target
from mosaic import operator
from mosaic.compare import tree_differences
from mosaic.setup.sample import make_sample
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import CatalogConfig, CoordinatorConfig, DatasetConfig
from shared.config.targets import LocalTargetConfig
from shared.natsserver import NatsServer
from shared.wire.events import BackupCompleted
from shared.wire.sources import FilesSource

HELP = "run NATS, a coordinator and an agent locally; back up, restore, compare"


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", default=None, help="folder to back up (default: generated sample)")
    p.add_argument("--workdir", default=None, help="keep everything in this folder")


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    return await quickstart(args.path, args.workdir, out, err)


async def quickstart(path: str | None, workdir: str | None, out: Console, err: Console) -> int:
    keep = workdir is not None
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mosaic-quickstart-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        if path is None:
            source = make_sample(work / "sample")
            err.print(f"generated a sample tree in {source}")
        else:
            source = Path(await anyio.Path(path).resolve())
        with NatsServer(work / "nats") as nats:
            err.print(f"nats-server with JetStream on {nats.url}")
            return await _run(nats.url, source, work, out, err, t0)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


async def _run(url: str, source: Path, work: Path, out: Console, err: Console, t0: float) -> int:
    agent_cfg = AgentConfig(
        name="quickstart-agent",
        nats_url=url,
        key_file=str(work / "repository.key"),
        targets={"local": LocalTargetConfig(path=str(work / "repository"))},
        progress_interval_s=0.5,
    )
    coord_cfg = CoordinatorConfig(
        nats_url=url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={
            "sample": DatasetConfig(
                agent=agent_cfg.name, target="local", source=FilesSource(path=str(source))
            )
        },
    )
    targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
    key, created = await prepare_key(agent_cfg, targets)
    if created:
        err.print(key_notice(agent_cfg.key_file))
    catalog = await open_catalog(coord_cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(Coordinator(coord_cfg, catalog).run)
            await tg.start(AgentRunner(agent_cfg, key, targets).run)
            bus = await Bus.connect(url, name="quickstart")
            try:
                code = await _backup_and_check(bus, source, work, out, err, t0)
            finally:
                await bus.aclose()
            tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()
    return code


async def _backup_and_check(
    bus: Bus, source: Path, work: Path, out: Console, err: Console, t0: float
) -> int:
    done = await operator.backup(bus, "sample", "full", out, err)
    assert isinstance(done, BackupCompleted)
    restored = work / "restored"
    await operator.restore(bus, done.backup_id, str(restored), out, err)
    diffs = await anyio.to_thread.run_sync(tree_differences, source, restored)
    t = Table(title="quickstart result", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("source", str(source))
    t.add_row("repository", str(work / "repository"))
    t.add_row("restored into", str(restored))
    t.add_row("byte-for-byte comparison", "identical" if not diffs else f"{len(diffs)} differences")
    t.add_row("total time", f"{time.monotonic() - t0:.1f} s")
    out.print(t)
    for d in diffs[:20]:
        err.print(f"  {d}")
    return 1 if diffs else 0
