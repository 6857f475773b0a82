"""The first page (``/``): one verdict for the whole estate (the worst state wins, with
its reasons), then one page of datasets (problems first), the alerts that hold now,
the agents, and the running jobs (kept live by ``static/console.js`` from
``/events/progress``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web

from coordinator import alerts
from coordinator.overview import Overview
from coordinator.schedule import FireTimes
from coordinator.web import progress, view
from coordinator.web.context import WebContext
from coordinator.web.guard import require
from coordinator.web.pages.datasets import dataset_rows
from coordinator.web.render import page
from shared.wire.status import StatusReply, TargetSpaceStatus

ALERTS_SHOWN = 20
AGENTS_SHOWN = 10  # lost ones first; the rest on /agents


@dataclass(frozen=True)
class Verdict:
    state: str  # healthy, degraded, failing
    reasons: list[str]
    notes: list[str]  # shown with it, not changing it (3-2-1: a policy finding)

    @property
    def line(self) -> str:
        if not self.reasons:
            return "healthy: every dataset is backed up"
        return f"{self.state}: {', '.join(self.reasons)}"


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def overdue_count(ctx: WebContext, ov: Overview) -> int:
    """Datasets whose newest backup is older than their last due time (minus grace)."""
    times = FireTimes()
    before = ov.now - timedelta(seconds=ctx.cfg.alerts.missing_grace_s)
    n = 0
    for r in ov.rows:
        if r.newest is None or r.failing:
            continue
        due = alerts.last_due(ctx.cfg.datasets[r.name].schedules, before, times)
        if due is not None and r.newest.finished_at < due:
            n += 1
    return n


def verdict(
    ctx: WebContext, ov: Overview, reply: StatusReply, findings: list[alerts.Finding]
) -> Verdict:
    """Worst wins: failing (a dataset failing, an agent lost), degraded (never backed up,
    overdue, replication behind, a window exceeded, storage low), healthy. Datasets
    short of 3-2-1 are a note beside it (as in the status document, whose ``status``
    they do not change either): they are backed up, on too few copies."""
    bad, warn = [], []
    if ov.failing:
        bad.append(_n(ov.failing, "dataset failed", "datasets failed"))
    lost = sum(1 for a in ov.agents if a.lost)
    if lost:
        bad.append(_n(lost, "agent lost", "agents lost"))
    if ov.without_backup:
        warn.append(_n(ov.without_backup, "dataset never backed up", "datasets never backed up"))
    overdue = overdue_count(ctx, ov)
    if overdue:
        warn.append(_n(overdue, "dataset overdue", "datasets overdue"))
    lagging = {f.dataset for f in findings if f.rule == "replication_lag"}
    if lagging:
        warn.append(_n(len(lagging), "replica behind", "replicas behind"))
    if reply.windows_exceeded:
        warn.append(_n(reply.windows_exceeded, "window exceeded", "windows exceeded"))
    low = sum(1 for f in findings if f.rule == "storage_low")
    if low:
        warn.append(_n(low, "target low on space", "targets low on space"))
    state = "failing" if bad else "degraded" if warn else "healthy"
    notes = []
    if ov.not_compliant:
        notes.append(_n(ov.not_compliant, "dataset is not 3-2-1", "datasets are not 3-2-1"))
    return Verdict(state, bad + warn, notes)


async def alerts_now(ctx: WebContext, ov: Overview) -> list[alerts.Finding]:
    """What holds now by the alerter's own rules: failing datasets plus the status
    findings (agent lost, storage low, replication lag, 3-2-1)."""
    findings = await ctx.status.findings(ov.now)
    failed = [
        alerts.Finding(
            rule="backup_failed",
            dataset=r.name,
            severity="critical",
            summary=f"the newest backup of {r.name} failed",
        )
        for r in ov.problems
        if r.failing
    ]
    return failed + findings


def routes(ctx: WebContext) -> list[web.RouteDef]:
    view.install_filters(ctx.templates)
    feed = progress.feed_of(ctx)

    @require("viewer")
    async def overview(request: web.Request) -> web.StreamResponse:
        await feed.start()
        p = view.paging(request)
        reply = await ctx.status.reply(limit=p.limit, offset=p.offset)
        ov = await ctx.status.read()
        found = await alerts_now(ctx, ov)
        rows = await dataset_rows(ctx, reply.datasets)
        prev, nxt = p.links(len(rows), len(ov.rows))
        agents = sorted(reply.agents, key=lambda a: (not a.lost, a.agent))
        targets: dict[str, list[TargetSpaceStatus]] = defaultdict(list)
        for t in reply.targets:
            targets[t.agent].append(t)
        return page(
            ctx,
            request,
            "overview.html",
            verdict=verdict(ctx, ov, reply, found),
            reply=reply,
            rows=rows,
            alerts=found[:ALERTS_SHOWN],
            alerts_total=len(found),
            jobs=feed.running(),
            agents=agents[:AGENTS_SHOWN],
            agents_total=len(agents),
            targets=targets,
            now=ov.now,
            age=view.age,
            paging=p,
            prev=prev,
            next=nxt,
            total=len(ov.rows),
        )

    return [web.get("/", overview), *progress.routes(ctx)]
