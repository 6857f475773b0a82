"""Console at scale: the server time of every read page over a PostgreSQL catalog of a
million backups and 10,000 datasets.

Builds the catalog with bench/catalog_scale.py's generator (``fill``: one backup a day
per dataset, completed jobs, failures), adds drills, verifies and audit entries, starts
a nats-server and the console in this process (``Console(cfg).run``, the real app with
its auth middleware), injects a heartbeat per agent, makes a viewer API token, and
requests each page ``--requests`` times one at a time (after a warm-up) from a client
thread, printing median / p95 / max per page as a markdown table. The client is on
loopback, so the times are the server's plus well under a millisecond.

    .venv/bin/python bench/console_scale.py                              # 1M rows, ~4 min
    .venv/bin/python bench/console_scale.py --rows 50000 --datasets 1000 # smoke

Not a test: it asserts nothing, it measures.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import anyio
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.catalog_scale import END, fill, pct  # noqa: E402
from tests.fixtures.postgres import PostgresServer, free_port  # noqa: E402

BUDGET_MS = 200.0


def extras(url: str, datasets: int) -> None:
    """Drills (one per dataset of every 10th), verifies (one per target) and audit."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO maintenance
            SELECT 'drill-' || d, 'drill', 'agent-0', 'local', 'ds-' || lpad(d::text, 6, '0'),
                NULL, CASE WHEN d %% 50 = 0 THEN 'failed' ELSE 'passed' END,
                %(end)s - d * interval '1 minute', %(end)s - d * interval '1 minute'
                + interval '90 seconds', 90.0 + d %% 30, 3600.0 + d, 'drill', ''
            FROM generate_series(0, %(n)s - 1, 10) d""",
            {"n": datasets, "end": END},
        )
        conn.execute(
            """INSERT INTO maintenance VALUES ('verify-local', 'verify', 'agent-0', 'local',
            '', NULL, 'passed', %(end)s, %(end)s + interval '1 hour', NULL, NULL,
            'verify: 0 damaged', '')""",
            {"end": END},
        )
        conn.execute(
            """INSERT INTO audit (entry_id, at, action, actor, dataset, backup_id, job_id, detail)
            SELECT 'a-' || g, %(end)s + g * interval '1 second',
                CASE WHEN g %% 3 = 0 THEN 'backup_requested' ELSE 'backup_scheduled' END,
                CASE WHEN g %% 3 = 0 THEN 'alice' ELSE 'scheduler' END,
                'ds-' || lpad((g %% %(n)s)::text, 6, '0'), NULL, 'job-' || g, ''
            FROM generate_series(0, 99999) g""",
            {"n": datasets, "end": END},
        )
        conn.execute("VACUUM ANALYZE")


def measure(port: int, token: str, path: str, n: int, warmup: int) -> tuple[list[float], int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/html"}
    times, size = [], 0
    for i in range(warmup + n):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - t0) * 1000
        if resp.status != 200:
            raise SystemExit(f"{path}: HTTP {resp.status}: {body[:300]!r}")
        if i >= warmup:
            times.append(elapsed)
            size = len(body)
    conn.close()
    return times, size


CASES = (
    ("overview, first page (25 datasets)", "/"),
    ("overview, page 200", "/?offset=5000"),
    ("dataset page", "/datasets/ds-000042"),
    ("backup page", "/backups/b-42"),
    ("drills", "/drills"),
    ("audit, newest 50", "/audit"),
    ("audit, filtered by actor", "/audit?actor=alice"),
    ("audit, filtered by action + dataset", "/audit?action=backup_requested&dataset=ds-000003"),
    ("agents", "/agents"),
    ("alerts", "/alerts"),
)


async def run(args: argparse.Namespace, url: str, nats_url: str) -> list[str]:
    from coordinator.web.authparts import parts as auth_parts
    from coordinator.web.server import Console
    from shared import subjects
    from shared.config.coordinator import (
        CatalogConfig,
        CoordinatorConfig,
        DatasetConfig,
        ScheduleConfig,
    )
    from shared.config.web import WebConfig
    from shared.vocab import utcnow
    from shared.wire.base import encode
    from shared.wire.monitoring import Heartbeat, TargetSpace
    from shared.wire.sources import FilesSource

    daily = [ScheduleConfig(cron="0 2 * * *", backup_type="incremental")]
    cfg = CoordinatorConfig(
        nats_url=nats_url,
        catalog=CatalogConfig(url=url),
        datasets={
            f"ds-{d:06d}": DatasetConfig(
                agent=f"agent-{d % args.agents}",
                target="local",
                source=FilesSource(path="/srv"),
                schedules=daily,
            )
            for d in range(args.datasets)
        },
        web=WebConfig(port=0),
    )
    console = Console(cfg)
    lines: list[str] = []
    async with anyio.create_task_group() as tg:
        await tg.start(console.run)
        ctx = console.ctx
        assert ctx is not None and console.port is not None
        for a in range(args.agents):
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
                    )
                ],
            )
            ctx.heartbeats.record(subjects.heartbeat(hb.agent), encode(hb), utcnow())
        _, token = await auth_parts(ctx).tokens.create(
            "bench", "viewer", timedelta(hours=1), actor="bench"
        )
        lines += [
            f"catalog: PostgreSQL, {args.rows:,} backups, {args.datasets:,} datasets, "
            f"{args.failures:,} failed jobs, {args.agents} agents; {args.requests} requests "
            f"per page after {args.warmup} warm-up; budget {BUDGET_MS:.0f} ms",
            "",
            "| page | path | p50 ms | p95 ms | max ms | KiB | within budget |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for label, path in CASES:
            times, size = await anyio.to_thread.run_sync(
                measure, console.port, token, path, args.requests, args.warmup
            )
            p95 = pct(times, 95)
            lines.append(
                f"| {label} | `{path}` | {statistics.median(times):.1f} | {p95:.1f} | "
                f"{max(times):.1f} | {size / 1024:.0f} | {'yes' if p95 < BUDGET_MS else 'NO'} |"
            )
        tg.cancel_scope.cancel()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--datasets", type=int, default=10_000)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--failures", type=int, default=1_000)
    ap.add_argument("--replicas", type=int, default=5_000)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    from shared.natsserver import NatsServer

    base = Path(tempfile.mkdtemp(prefix="mosaic-bench-console-pg-", dir="/tmp"))
    server = PostgresServer(base, free_port())  # its own folder, as catalog_scale's
    nats_dir = Path(tempfile.mkdtemp(prefix="mosaic-bench-console-nats-", dir="/tmp"))
    nats = NatsServer(nats_dir)
    try:
        server.init()
        server.start()
        server.create_database("catalog")
        url = server.url("catalog")
        nats.start()

        async def migrate() -> None:
            from coordinator.catalog import open_catalog

            await (await open_catalog(url)).aclose()

        anyio.run(migrate)
        t0 = time.perf_counter()
        fill(url, args.rows, args.datasets, args.agents, args.failures, args.replicas)
        extras(url, args.datasets)
        print(f"filled in {time.perf_counter() - t0:.0f}s", flush=True)
        print("\n".join(anyio.run(run, args, url, nats.url)))
    finally:
        nats.stop()
        try:
            server.stop()
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(nats_dir, ignore_errors=True)


if __name__ == "__main__":
    threading.excepthook = lambda a: print(a.exc_value, file=sys.stderr)
    main()
