"""The datasets: the rows the overview shows (one page of them, problems first), and a
dataset's own page (``/datasets/{name}``): its state, the 30-day strip, charts of
backup size, duration and storage used, its newest backups, drills and verifies."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web
from markupsafe import Markup

from coordinator.http import redact
from coordinator.schedule import FireTimes
from coordinator.web import charts, view
from coordinator.web.context import WebContext
from coordinator.web.guard import require
from coordinator.web.progress import feed_of
from coordinator.web.render import page
from shared.wire.records import BackupRecord, JobRecord, MaintenanceRecord
from shared.wire.status import DatasetStatus

SPARK_N = 20  # backups in a row's sparklines
FAILURE_SCAN = 500  # newest failed jobs read for the strips of one page
HISTORY = 200  # backups charted on a dataset page


@dataclass
class DatasetRow:
    s: DatasetStatus
    state: str
    strip: list[view.Cell]
    size_spark: Markup
    duration_spark: Markup
    last_drill: MaintenanceRecord | None
    last_verify: MaintenanceRecord | None
    failure: str | None  # the unresolved failure, redacted
    lag_s: float | None  # the largest replication lag


async def dataset_rows(ctx: WebContext, statuses: Sequence[DatasetStatus]) -> list[DatasetRow]:
    """What a row shows, for one page of datasets: 2 queries per dataset (its backups
    of the strip's days, its newest drill), 1 per target (newest verify), 1 in all."""
    now = ctx.clock()
    since = now - timedelta(days=view.STRIP_DAYS)
    ov = await ctx.status.read()
    failing = {r.name for r in ov.problems if r.failing}
    running = feed_of(ctx).running_datasets()
    fails: dict[str, list[JobRecord]] = defaultdict(list)
    for f in await ctx.catalog.recent_failures(limit=FAILURE_SCAN):
        if f.dataset and f.updated_at >= since:
            fails[f.dataset].append(f)
    verifies: dict[str, MaintenanceRecord | None] = {}
    times, first_seen = FireTimes(), await ctx.status.first_seen(now)
    due = view.DueDays(now, times)
    out = []
    for s in statuses:
        cfg = ctx.cfg.datasets[s.dataset]
        backups = await ctx.catalog.list_backups(dataset=s.dataset, since=since, limit=400)
        drills = await ctx.catalog.list_maintenance(kind="drill", dataset=s.dataset, limit=1)
        if s.target not in verifies:
            found = await ctx.catalog.list_maintenance(kind="verify", target=s.target, limit=1)
            verifies[s.target] = found[0] if found else None
        newest = s.last_backup.finished_at if s.last_backup else None
        state = view.state_of(
            s.dataset,
            cfg,
            now=now,
            newest=newest,
            failing=s.dataset in failing,
            pending=bool(s.pending),
            running=s.dataset in running,
            grace_s=ctx.cfg.alerts.missing_grace_s,
            times=times,
        )
        spark = backups[:SPARK_N]
        lags = [t.lag_s for t in s.targets if t.lag_s is not None]
        lf = s.last_failure
        out.append(
            DatasetRow(
                s=s,
                state=state,
                strip=view.strip(
                    cfg,
                    now=now,
                    backups=backups,
                    failures=fails.get(s.dataset, []),
                    running=s.dataset in running,
                    first_seen=first_seen.get(s.dataset),
                    due=due,
                ),
                size_spark=charts.sparkline(
                    view.trend(spark, "bytes_read"), title=f"size of the last {len(spark)}"
                ),
                duration_spark=charts.sparkline(
                    view.trend(spark, "duration_s"), title=f"duration of the last {len(spark)}"
                ),
                last_drill=drills[0] if drills else None,
                last_verify=verifies[s.target],
                failure=redact(f"{lf.error_code}: {lf.error_message}")
                if lf is not None and state == "failed"
                else None,
                lag_s=max(lags) if lags else None,
            )
        )
    return out


def _charts(history: list[BackupRecord]) -> dict[str, Markup]:
    old_first = list(reversed(history))
    stored, total = [], 0
    for b in old_first:
        total += b.bytes_stored
        stored.append((b.finished_at, float(total)))
    return {
        "size": charts.line_chart(
            [(b.finished_at, float(b.bytes_read)) for b in old_first],
            title="backup size (bytes read)",
            fmt=view.human_bytes,
        ),
        "duration": charts.line_chart(
            [(b.finished_at, b.duration_s) for b in old_first],
            title="duration",
            fmt=view.human_duration,
        ),
        "stored": charts.line_chart(
            stored,
            title=f"storage added by the last {len(old_first)} backups (cumulative)",
            fmt=view.human_bytes,
        ),
    }


def routes(ctx: WebContext) -> list[web.RouteDef]:
    view.install_filters(ctx.templates)

    @require("viewer")
    async def dataset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ctx.cfg.datasets:
            raise web.HTTPNotFound(text=f"no dataset {name!r} in this coordinator's config")
        reply = await ctx.status.reply(dataset=name, limit=1)
        rows = await dataset_rows(ctx, reply.datasets)
        history = await ctx.catalog.list_backups(dataset=name, limit=HISTORY)
        drills = await ctx.catalog.list_maintenance(kind="drill", dataset=name, limit=20)
        copies = await ctx.catalog.copies_of([b.backup_id for b in history[:50]])
        values: dict[str, Any] = {
            "row": rows[0] if rows else None,
            "name": name,
            "backups": history[:50],
            "copies": copies,
            "drills": drills,
            "charts": _charts(history),
            "now": ctx.clock(),
            "age": view.age,
        }
        return page(ctx, request, "dataset.html", **values)

    return [web.get("/datasets/{name}", dataset)]
