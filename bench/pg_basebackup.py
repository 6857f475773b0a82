"""PostgreSQL base-backup throughput and point-in-time restore time (RTO).

Creates a throwaway PostgreSQL 15 cluster with WAL archiving through ``wal-archive``,
fills it with ``pgbench -i -s SCALE`` (scale 70 ≈ 1.05 GiB), then measures:

(a) ``pg_basebackup -Ft -Xf -c fast -D - > /dev/null`` alone;
(b) a full (base) backup of the same cluster through a real agent (nats-server,
    coordinator and agent in this process, as ``quickstart`` runs them) into a local
    repository;
(c) after a few seconds of ``pgbench`` load, a log backup, then a point-in-time restore
    through the agent: RTO = seconds from sending the restore until the restored server,
    started on a new port, has finished recovery and answers a query.

Needs root (the cluster runs as ``postgres`` through runuser) and about 3× the database
size free in ``--workdir``. Not part of the test suite.

    /tmp/venv/bin/python bench/pg_basebackup.py [--scale 70] [--runs 2] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread
import psycopg
from rich.console import Console

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import open_catalog
from coordinator.service import Coordinator
from engine.storage.open import open_target
from mosaic import operator
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import CatalogConfig, CoordinatorConfig, DatasetConfig
from shared.config.targets import LocalTargetConfig
from shared.natsserver import NatsServer, free_port
from shared.wire.events import BackupCompleted
from shared.wire.sources import PostgresSource

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REPO = Path(__file__).resolve().parent.parent
QUIET = Console(quiet=True)
MB = 1e6


def as_pg(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def sh(argv: list[str], **kw: object) -> None:
    subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Cluster:
    def __init__(self, base: Path, data: Path) -> None:
        self.base, self.data, self.port = base, data, free_port()
        self.sock = base / f"sock-{self.port}"
        self.logfile = base / f"server-{self.port}.log"

    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.sock.mkdir()
        sh(["chown", "-R", "postgres:postgres", str(self.base)])
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1"
        ctl = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile)]
        sh(as_pg([*ctl, "-w", "-t", "600", "-o", opts, "start"]), stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            ctl = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
            subprocess.run(as_pg(ctl), capture_output=True)


def make_source_cluster(work: Path, spool: Path) -> Cluster:
    data = work / "data"
    spool.mkdir()
    sh(["chown", "-R", "postgres:postgres", str(work)])
    sh(
        as_pg([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
        stdout=subprocess.DEVNULL,
    )
    archive = f"/usr/bin/python3 {REPO / 'agent' / 'walarchive.py'} --spool {spool} %p %f"
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            "wal_level = replica\narchive_mode = on\n"
            f"archive_command = '{archive}'\nmax_wal_senders = 4\n"
            "shared_buffers = 256MB\nmax_wal_size = 4GB\nfsync = off\nsynchronous_commit = off\n"
        )
    cluster = Cluster(work, data)
    cluster.start()
    return cluster


def time_pg_basebackup(port: int) -> float:
    argv = ["pg_basebackup", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    argv += ["-Ft", "-Xf", "-c", "fast", "-D", "-"]
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        sh(argv, stdout=null)
    return time.perf_counter() - t0


def pgbench(port: int, *args: str) -> None:
    argv = [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    sh([*argv, *args, "postgres"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(args: argparse.Namespace, work: Path) -> list[tuple[str, str, str]]:
    spool = work / "spool"
    src = make_source_cluster(work, spool)
    rows: list[tuple[str, str, str]] = []
    try:
        log(f"pgbench -i -s {args.scale} (a few minutes)")
        t0 = time.perf_counter()
        pgbench(src.port, "-i", "-s", str(args.scale), "-q")
        with psycopg.connect(src.url()) as conn:
            row = conn.execute("SELECT pg_database_size('postgres')").fetchone()
            db_bytes = int(row[0]) if row else 0
        log(f"loaded {db_bytes / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s")
        rows.append(("database size (pgbench)", f"{db_bytes / 2**30:.2f} GiB", ""))
        with NatsServer(work / "nats") as nats:
            rows += await _through_agent(args, work, nats.url, src, spool)
    finally:
        src.stop()
    return rows


async def _through_agent(
    args: argparse.Namespace, work: Path, url: str, src: Cluster, spool: Path
) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    agent_cfg = AgentConfig(
        name="bench-agent",
        nats_url=url,
        key_file=str(work / "repository.key"),
        targets={"local": LocalTargetConfig(path=str(work / "repository"))},
        ack_wait_s=60.0,
    )
    source = PostgresSource(port=src.port, wal_spool=str(spool))
    coord_cfg = CoordinatorConfig(
        nats_url=url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={"pg": DatasetConfig(agent=agent_cfg.name, target="local", source=source)},
    )
    targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
    key, _ = await prepare_key(agent_cfg, targets)
    catalog = await open_catalog(coord_cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(Coordinator(coord_cfg, catalog).run)
            await tg.start(AgentRunner(agent_cfg, key, targets).run)
            bus = await Bus.connect(url, name="bench")
            try:
                base_times, agent_times, agent_cpu = [], [], []
                done: BackupCompleted | None = None
                for i in range(args.runs):
                    log(f"run {i + 1}: pg_basebackup > /dev/null")
                    base_times.append(await anyio.to_thread.run_sync(time_pg_basebackup, src.port))
                    log(f"run {i + 1}: full backup through the agent")
                    t0 = time.perf_counter()
                    ev = await operator.backup(bus, "pg", "full", QUIET, QUIET, timeout=1800)
                    agent_times.append(time.perf_counter() - t0)
                    assert isinstance(ev, BackupCompleted)
                    agent_cpu.append(ev.summary.duration_s)
                    done = done or ev  # the first run: what a first backup stores
                assert done is not None
                size = done.summary.bytes_read
                rows.append(("base backup size (tar)", f"{size / 2**30:.2f} GiB", ""))
                for name, times in (
                    ("(a) pg_basebackup -Ft -Xf > /dev/null", base_times),
                    ("(b) full backup through the agent (job wall time)", agent_times),
                    ("(b) same, the agent's backup_dataset time", agent_cpu),
                ):
                    best = min(times)
                    rows.append(
                        (
                            name,
                            f"{best:.1f} s (runs: {', '.join(f'{t:.1f}' for t in times)})",
                            f"{size / MB / best:.0f} MB/s",
                        )
                    )
                rows.append(
                    (
                        "(b) new bytes stored (compressed, encrypted), first run",
                        f"{done.summary.bytes_stored / MB:.0f} MB",
                        "",
                    )
                )
                # Ship the WAL of the load itself, then take the base the PITR starts
                # from: the log backup measured below then holds only its own WAL.
                log("drain the spool (log backup), then a new base backup")
                await operator.backup(bus, "pg", "incremental", QUIET, QUIET, timeout=1800)
                await operator.backup(bus, "pg", "full", QUIET, QUIET, timeout=1800)
                rows += await _pitr(bus, work, src)
            finally:
                await bus.aclose()
            tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()
    return rows


def start_and_query(copy: Cluster) -> tuple[object, ...] | None:
    """Start the restored copy, wait for the end of recovery, run the check query."""
    copy.start()
    with psycopg.connect(copy.url(), autocommit=True) as conn:
        while conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
            time.sleep(0.05)
        return conn.execute("SELECT sum(abalance) FROM pgbench_accounts").fetchone()


async def _pitr(bus: Bus, work: Path, src: Cluster) -> list[tuple[str, str, str]]:
    log("pgbench load 5 s, instant T, load 5 s, log backup")
    await anyio.to_thread.run_sync(pgbench, src.port, "-T", "5", "-c", "2")
    with psycopg.connect(src.url()) as conn:
        row = conn.execute("SELECT sum(abalance) FROM pgbench_accounts").fetchone()
        expected = row[0] if row else None
    await anyio.sleep(1)
    instant = datetime.now(UTC)
    await anyio.sleep(1)
    await anyio.to_thread.run_sync(pgbench, src.port, "-T", "5", "-c", "2")
    ev = await operator.backup(bus, "pg", "incremental", QUIET, QUIET, timeout=1800)
    assert isinstance(ev, BackupCompleted)
    rows = [
        (
            "log backup (WAL since the base)",
            f"{ev.summary.bytes_read / MB:.0f} MB, {ev.summary.duration_s:.1f} s",
            f"lag {ev.log_lag_s or 0:.1f} s",
        ),
    ]
    restore_base = Path(tempfile.mkdtemp(prefix="pitr-", dir=work))
    os.chmod(restore_base, 0o755)
    dest = restore_base / "restored"
    log("point-in-time restore through the agent, then start and query")
    t0 = time.perf_counter()
    await operator.restore(bus, ev.backup_id, str(dest), QUIET, QUIET, timeout=1800, pitr=instant)
    t_restore = time.perf_counter() - t0
    copy = Cluster(restore_base, dest / "pgdata")
    try:
        row = await anyio.to_thread.run_sync(start_and_query, copy)
        rto = time.perf_counter() - t0
    finally:
        copy.stop()
    ok = "matches" if row and row[0] == expected else f"MISMATCH ({row} != {expected})"
    rows.append(("(c) PITR: restore through the agent", f"{t_restore:.1f} s", ""))
    rows.append(("(c) PITR: RTO, restore start → server answers", f"{rto:.1f} s", ok))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, default=70, help="pgbench scale (70 ≈ 1 GiB)")
    p.add_argument("--runs", type=int, default=2, help="runs of (a) and (b), best reported")
    p.add_argument("--workdir", default=None, help="default: a new folder under /tmp")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mosaic-pgbench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    try:
        rows = anyio.run(measure, args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nPostgreSQL base backup and PITR, pgbench scale {args.scale}, {os.cpu_count()} cores\n"
    )
    print("| measure | value | rate / check |\n| --- | ---: | --- |")
    for what, value, extra in rows:
        print(f"| {what} | {value} | {extra} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
