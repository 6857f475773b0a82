"""Catalog at scale: the status endpoint over a PostgreSQL catalog of a million backups.

Starts a throwaway PostgreSQL 15 cluster (tests/fixtures/postgres.py's class, on a free
loopback port in a temporary folder), fills the catalog with ``--rows`` backups over
``--datasets`` datasets (generate_series inside the server; the summary triggers are
switched off for the bulk load and the summary is rebuilt with the migration's own
statement), plus one completed job per backup and ``--failures`` failed ones. Then a
child process serves the coordinator's HTTP API on that catalog (the same StatusBuilder
the coordinator uses, with a heartbeat from each of ``--agents`` agents and a daily
schedule per dataset), and this process measures ``GET /api/v1/backup/status`` over HTTP,
one request at a time after a warm-up, and prints a markdown table. It also times the
alerter's evaluation (``Alerter.tick``) over the same catalog: the first tick (every
dataset's duration history read), steady ticks, a tick after a new backup, and, for
comparison, the per-dataset reading it replaced (2 queries per dataset).

    /tmp/venv/bin/python bench/catalog_scale.py                       # 1M rows, ~3 min
    /tmp/venv/bin/python bench/catalog_scale.py --rows 100000 --datasets 1000   # smoke

Not a test: it asserts nothing, it measures.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coordinator.catalog.pg_schema import REBUILD_TARGET_SUMMARY  # noqa: E402
from tests.fixtures.postgres import PostgresServer, free_port  # noqa: E402

END = datetime(2026, 1, 1, tzinfo=UTC)


def fill(url: str, rows: int, datasets: int, agents: int, failures: int, replicas: int) -> None:
    """Backups: dataset d gets one a day (rows / datasets days); the first ``replicas``
    datasets have every other one on the ``offsite`` target."""
    days = max(rows // datasets, 1)
    start = END - timedelta(days=days)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE backups DISABLE TRIGGER backups_summary_insert")
        conn.execute(
            """INSERT INTO backups
            SELECT 'b-' || g, 'ds-' || lpad(d::text, 6, '0'), 'agent-' || (d %% %(agents)s),
                CASE WHEN d < %(replicas)s AND i %% 2 = 1 THEN 'offsite' ELSE 'local' END,
                'repo-' || (d %% %(agents)s),
                CASE WHEN i %% 7 = 0 THEN 'full' ELSE 'incremental' END,
                %(start)s + i * interval '1 day' + d * interval '1 second',
                %(start)s + i * interval '1 day' + d * interval '1 second' + interval '5 minutes',
                1000 + i, 50000000 + d, 1000000 + i, 400000 + (g %% 1000), 300.0
            FROM generate_series(0, %(rows)s - 1) g,
                LATERAL (SELECT g %% %(datasets)s AS d, g / %(datasets)s AS i) x""",
            {
                "rows": rows,
                "datasets": datasets,
                "agents": agents,
                "replicas": replicas,
                "start": start,
            },
        )
        conn.execute("ALTER TABLE backups ENABLE TRIGGER backups_summary_insert")
        conn.execute("TRUNCATE target_summary")
        conn.execute(REBUILD_TARGET_SUMMARY)
        conn.execute(
            """INSERT INTO jobs
            SELECT 'job-' || g, 'backup', 'ds-' || lpad((g %% %(datasets)s)::text, 6, '0'),
                'agent-' || ((g %% %(datasets)s) %% %(agents)s), 'local', 'completed',
                %(start)s + (g / %(datasets)s) * interval '1 day',
                %(start)s + (g / %(datasets)s) * interval '1 day' + interval '5 minutes',
                'b-' || g, NULL, NULL
            FROM generate_series(0, %(rows)s - 1) g""",
            {"rows": rows, "datasets": datasets, "agents": agents, "start": start},
        )
        # failures: spread over the datasets; the newest ones are newer than any backup,
        # so their datasets count as failing
        conn.execute(
            """INSERT INTO jobs
            SELECT 'fail-' || g, 'backup', 'ds-' || lpad(((g * 7) %% %(datasets)s)::text, 6, '0'),
                'agent-0', 'local', 'failed', t, t, NULL, 'source', 'pg_dump exited with 1'
            FROM generate_series(0, %(failures)s - 1) g,
                LATERAL (SELECT %(end)s - (g * interval '1 hour') AS t) x""",
            {"failures": failures, "datasets": datasets, "end": END + timedelta(hours=12)},
        )
        conn.execute("VACUUM ANALYZE")


def serve(url: str, datasets: int, agents: int, port_queue: Any) -> None:
    """The child process: the coordinator's HTTP API on the filled catalog."""
    import anyio

    from coordinator.catalog import open_catalog
    from coordinator.heartbeats import HeartbeatStore
    from coordinator.http import HttpApi
    from coordinator.status import StatusBuilder
    from shared import subjects
    from shared.config.coordinator import (
        CoordinatorConfig,
        DatasetConfig,
        HttpConfig,
        ScheduleConfig,
    )
    from shared.vocab import utcnow
    from shared.wire.base import encode
    from shared.wire.monitoring import Heartbeat, TargetSpace
    from shared.wire.sources import FilesSource

    daily = [ScheduleConfig(cron="0 2 * * *", backup_type="incremental")]
    cfg = CoordinatorConfig(
        datasets={
            f"ds-{d:06d}": DatasetConfig(
                agent=f"agent-{d % agents}",
                target="local",
                source=FilesSource(path="/srv"),
                schedules=daily,
            )
            for d in range(datasets)
        },
        http=HttpConfig(port=0, anonymous=True),
    )

    async def main() -> None:
        catalog = await open_catalog(url)
        beats = HeartbeatStore()
        for a in range(agents):
            hb = Heartbeat(
                agent=f"agent-{a}",
                hostname=f"host-{a}",
                version="bench",
                at=utcnow(),
                interval_s=30.0,
                uptime_s=3600.0,
                targets=[
                    TargetSpace(
                        name="local",
                        kind="local",
                        media="disk",
                        location="onsite",
                        tier="local",
                        total=4 << 40,
                        free=1 << 40,
                    ),
                    TargetSpace(
                        name="offsite", kind="s3", media="object", location="offsite", tier="remote"
                    ),
                ],
            )
            beats.record(subjects.heartbeat(hb.agent), encode(hb), utcnow())
        builder = StatusBuilder(cfg, catalog, beats)
        api = HttpApi(cfg.http, catalog, builder.reply)
        async with anyio.create_task_group() as tg:
            await tg.start(api.serve)
            port_queue.put(api.port)

    anyio.run(main)


async def alerter_ticks(url: str, datasets: int, agents: int) -> list[tuple[str, list[float]]]:
    """Times of the alerter's tick over the catalog (milliseconds, per case)."""
    from coordinator.alerter import Alerter, read_snapshots
    from coordinator.catalog import open_catalog
    from shared.config.coordinator import CoordinatorConfig, DatasetConfig, ScheduleConfig
    from shared.wire.sources import FilesSource

    daily = [ScheduleConfig(cron="0 2 * * *", backup_type="incremental")]
    cfg = CoordinatorConfig(
        datasets={
            f"ds-{d:06d}": DatasetConfig(
                agent=f"agent-{d % agents}",
                target="local",
                source=FilesSource(path="/srv"),
                schedules=daily,
            )
            for d in range(datasets)
        },
    )
    catalog = await open_catalog(url)
    out: list[tuple[str, list[float]]] = []
    try:
        alerter = Alerter(cfg, catalog, clock=lambda: END + timedelta(hours=1))
        logging.getLogger("coordinator.alerter").setLevel(logging.ERROR)  # 10,000s of alerts

        async def timed(n: int) -> list[float]:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                await alerter.tick()
                times.append((time.perf_counter() - t0) * 1000)
            return times

        out.append(("alerter tick, first (every history read)", await timed(1)))
        out.append(("alerter tick, steady", await timed(10)))
        reads = []
        for _ in range(10):
            t0 = time.perf_counter()
            await read_snapshots(catalog, cfg.datasets, alerter.history)
            reads.append((time.perf_counter() - t0) * 1000)
        out.append(("alerter tick, steady: its catalog reads (3 queries)", reads))
        from coordinator.alerts import evaluate

        snapshots = await read_snapshots(catalog, cfg.datasets, alerter.history)
        rules = []
        for i in range(10):  # a new tick time each round, as the alerter sees it
            t0 = time.perf_counter()
            evaluate(snapshots, cfg.alerts, END + timedelta(hours=1, seconds=i))
            rules.append((time.perf_counter() - t0) * 1000)
        out.append(("alerter tick, steady: its rule evaluation", rules))
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(
                "INSERT INTO backups (backup_id, dataset, agent, target, repository_id,"
                " backup_type, started_at, finished_at, files, bytes_read, bytes_new,"
                " bytes_stored, duration_s) SELECT 'tick-new', dataset, agent, target,"
                " repository_id, backup_type, started_at + interval '1 day',"
                " finished_at + interval '1 day', files, bytes_read, bytes_new,"
                " bytes_stored, duration_s FROM backups WHERE backup_id = 'b-0'"
            )
        out.append(("alerter tick after a new backup", await timed(1)))
        # before: what read_snapshots did until issue 5's follow-up, per dataset
        t0 = time.perf_counter()
        for name in sorted(cfg.datasets):
            await catalog.list_backups(dataset=name, limit=50)
            await catalog.last_failure(name)
        out.append(
            ("alerter tick, before (2 queries per dataset)", [(time.perf_counter() - t0) * 1000])
        )
    finally:
        await catalog.aclose()
    return out


def measure(
    port: int, path: str, n: int, warmup: int, *, write_url: str | None = None
) -> tuple[list[float], int]:
    """``n`` sequential GETs after ``warmup``; with ``write_url``, a new backup is
    recorded before each one (untimed), so every status recomputes its overview."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    db = psycopg.connect(write_url, autocommit=True) if write_url else None
    size = 0
    times: list[float] = []
    for i in range(warmup + n):
        if db is not None:
            db.execute(
                "INSERT INTO backups SELECT 'new-' || %s, dataset, agent, target, repository_id,"
                " backup_type, started_at + interval '1 day', finished_at + interval '1 day',"
                " files, bytes_read, bytes_new, bytes_stored, duration_s"
                " FROM backups WHERE backup_id = 'b-' || %s",
                (i, i),
            )
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200:
            raise SystemExit(f"GET {path}: HTTP {resp.status}: {body[:300]!r}")
        size = len(body)
        if i >= warmup:
            times.append(elapsed * 1000)
    conn.close()
    if db is not None:
        db.close()
    return times, size


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--datasets", type=int, default=10_000)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--failures", type=int, default=10_000)
    ap.add_argument("--replicas", type=int, default=5_000, help="datasets with an offsite copy")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="mosaic-bench-pg-", dir="/tmp"))
    server = PostgresServer(base, free_port())
    child: BaseProcess | None = None
    try:
        server.init()
        server.start()
        server.create_database("catalog")
        url = server.url("catalog")
        import anyio

        from coordinator.catalog import open_catalog

        async def migrate() -> None:
            await (await open_catalog(url)).aclose()

        anyio.run(migrate)
        t0 = time.perf_counter()
        fill(url, args.rows, args.datasets, args.agents, args.failures, args.replicas)
        fill_s = time.perf_counter() - t0
        print(f"filled {args.rows:,} backups over {args.datasets:,} datasets in {fill_s:.0f}s")

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        child = ctx.Process(target=serve, args=(url, args.datasets, args.agents, q), daemon=True)
        child.start()
        port = q.get(timeout=120)
        cases = [
            ("status, default page (100 datasets)", "/api/v1/backup/status", args.requests),
            ("status, one dataset", "/api/v1/backup/status?dataset=ds-000042", args.requests),
            ("status, 1,000 datasets", "/api/v1/backup/status?limit=1000", 50),
            ("/metrics (every dataset)", "/metrics", 10),
        ]
        lines = [
            f"catalog: PostgreSQL 15, {args.rows:,} backups, {args.datasets:,} datasets, "
            f"{args.rows + args.failures:,} jobs ({args.failures:,} failed), {args.agents} agents",
            "",
            "| request | n | p50 ms | p95 ms | p99 ms | max ms | body KiB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        cases.append(("status after each new backup (recomputed)", "/api/v1/backup/status", 50))
        for label, path, n in cases:
            write = url if "after each" in label else None
            times, size = measure(port, path, n, args.warmup if n > 20 else 2, write_url=write)
            lines.append(
                f"| {label} | {n} | {statistics.median(times):.1f} | {pct(times, 95):.1f} | "
                f"{pct(times, 99):.1f} | {max(times):.1f} | {size / 1024:.0f} |"
            )
        for label, times in anyio.run(alerter_ticks, url, args.datasets, args.agents):
            lines.append(
                f"| {label} | {len(times)} | {statistics.median(times):.1f} | "
                f"{pct(times, 95):.1f} | {pct(times, 99):.1f} | {max(times):.1f} | — |"
            )
        print("\n".join(lines))
    finally:
        if child is not None:
            child.terminate()
            child.join(10)
        if (server.data / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
