"""Prometheus metrics read from the catalog at scrape time.

In-process counters would reset whenever a coordinator restarts or a standby takes over,
and two coordinators would disagree. The catalog is the durable record both share, so
every scrape reads it once (:func:`read_snapshot`, async) and a custom collector turns
that snapshot into metric families (plain values in, metrics out, so it is testable
without a server). The collector lives in its own ``CollectorRegistry``, never the
process-global one, so importing this module registers nothing anywhere. Storage, lag,
3-2-1 and heartbeat series come from the same status read (coordinator/status.py), which
adds the agents' last heartbeats to the catalog's aggregates.

Limitation: ``backup_failure_total`` is counted from the newest
:data:`FAILURE_SCAN_LIMIT` failed jobs (the catalog has no per-dataset failure count).
Past that many failures in the catalog the oldest stop being counted, and the counter
can go down; ``rate()`` over it is right as long as failures are fewer than that.
``backup_window_exceeded_total`` counts the ``window_exceeded`` audit entries (one per
run seen exceeding its maintenance window, coordinator/windows.py; the trail is
append-only) over the newest :data:`WINDOW_SCAN_LIMIT` of them, the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from coordinator.catalog.base import Catalog
from coordinator.windows import WINDOW_ACTION, exceeded_counts
from shared.wire.records import JobRecord
from shared.wire.status import StatusReply

FAILURE_SCAN_LIMIT = 10_000
WINDOW_SCAN_LIMIT = 10_000
# The classic text format, which every Prometheus version reads (what generate_latest
# writes for our names; newer clients advertise version=1.0.0 for UTF-8 names).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What one scrape reads from the catalog."""

    status: StatusReply
    failures: list[JobRecord]
    windows_exceeded: dict[str, int] = {}  # dataset → runs seen exceeding their window


# Every dataset, not one page: metrics carry one series per dataset.
ALL_DATASETS = 1 << 31


async def read_snapshot(
    catalog: Catalog, status: Callable[..., Awaitable[StatusReply]]
) -> Snapshot:
    return Snapshot(
        status=await status(limit=ALL_DATASETS),
        failures=await catalog.recent_failures(limit=FAILURE_SCAN_LIMIT),
        windows_exceeded=dict(
            exceeded_counts(await catalog.list_audit(limit=WINDOW_SCAN_LIMIT, action=WINDOW_ACTION))
        ),
    )


def metric_families(snap: Snapshot) -> Iterator[Metric]:
    """The metrics of one snapshot. A value the catalog does not know is left out (not
    exported as 0), so ``absent()`` alerts see the gap."""
    dt = ("dataset", "target")
    last_ok = GaugeMetricFamily(
        "backup_last_success_timestamp",
        "Unix time the last successful backup of the dataset finished.",
        labels=dt,
    )
    duration = GaugeMetricFamily(
        "backup_duration_seconds", "Duration of the last successful backup.", labels=dt
    )
    size = GaugeMetricFamily(
        "backup_size_bytes", "Bytes read from the source by the last successful backup.", labels=dt
    )
    for row in snap.status.datasets:
        b = row.last_backup
        if b is None:
            continue
        labels = [row.dataset, b.target]
        last_ok.add_metric(labels, b.finished_at.timestamp())
        duration.add_metric(labels, b.duration_s)
        size.add_metric(labels, b.bytes_read)
    yield from (last_ok, duration, size)

    failed = Counter(j.dataset for j in snap.failures if j.job_kind == "backup")
    failures = CounterMetricFamily(
        "backup_failure",
        f"Failed backup jobs in the catalog (counted over the newest {FAILURE_SCAN_LIMIT}).",
        labels=["dataset"],
    )
    for name in sorted({r.dataset for r in snap.status.datasets} | set(failed)):
        failures.add_metric([name], failed[name])
    yield failures
    exceeded = CounterMetricFamily(
        "backup_window_exceeded",
        "Scheduled backups seen running past, or finishing after, the end of their "
        f"maintenance window (audit entries, counted over the newest {WINDOW_SCAN_LIMIT}).",
        labels=["dataset"],
    )
    windowed = {r.dataset for r in snap.status.datasets if r.window is not None}
    for name in sorted(windowed | set(snap.windows_exceeded)):
        exceeded.add_metric([name], snap.windows_exceeded.get(name, 0))
    yield exceeded
    yield from _heartbeat_families(snap.status)
    yield _unprotected_family(snap.status)
    yield GaugeMetricFamily(
        "mosaic_catalog_backups_total",
        "Backups recorded in the catalog (a gauge: prune lowers it).",
        value=snap.status.backups_total,
    )


def _heartbeat_families(st: StatusReply) -> Iterator[Metric]:
    """Series from heartbeats, replication and 3-2-1 (coordinator/status.py)."""
    used = GaugeMetricFamily(
        "backup_storage_used_percent",
        "Used space of a target as df counts it, 100 * used / (used + available) "
        "(reserved blocks excluded), from its agent's last heartbeat.",
        labels=("agent", "target"),
    )
    for t in st.targets:
        if t.used_percent is not None:
            used.add_metric([t.agent, t.target], t.used_percent)
    lag = GaugeMetricFamily(
        "backup_replication_lag_seconds",
        "How long the primary target's newest backup has waited for a copy on this target.",
        labels=("dataset", "target"),
    )
    compliant = GaugeMetricFamily(
        "backup_321_compliant",
        "1 if the dataset meets 3-2-1 (3 copies, 2 media, 1 offsite), else 0.",
        labels=("dataset",),
    )
    for row in st.datasets:
        for c in row.targets:
            if c.lag_s is not None:
                lag.add_metric([row.dataset, c.target], c.lag_s)
        if row.compliance is not None and row.compliance.compliant is not None:
            compliant.add_metric([row.dataset], 1.0 if row.compliance.compliant else 0.0)
    heartbeat = GaugeMetricFamily(
        "backup_agent_last_heartbeat_timestamp",
        "Unix time of the agent's last heartbeat (absent: none since the coordinator started).",
        labels=("agent",),
    )
    for a in st.agents:
        if a.last_heartbeat is not None:
            heartbeat.add_metric([a.agent], a.last_heartbeat.timestamp())
    yield from (used, lag, compliant, heartbeat)


def _unprotected_family(st: StatusReply) -> Metric:
    """Inventory items no dataset covers, not ignored (coordinator/coverage.py); ``host``
    is the agent's name. A host and kind without such items has no series."""
    family = GaugeMetricFamily(
        "backup_unprotected_items",
        "Items an agent's inventory found that no dataset covers (ignored ones excluded).",
        labels=("host", "kind"),
    )
    counts = Counter((u.agent, u.kind) for u in st.unprotected if not u.ignored)
    for (host, kind), n in sorted(counts.items()):
        family.add_metric([host, kind], n)
    return family


class CatalogCollector:
    """Serves the snapshot that :meth:`render` was given (collectors are synchronous)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is not None:
            yield from metric_families(self.snapshot)


class Metrics:
    """The coordinator's registry; other parts may register their collectors on it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._catalog = CatalogCollector()
        self.registry.register(self._catalog)

    def render(self, snap: Snapshot) -> bytes:
        # No await between setting the snapshot and encoding: concurrent scrapes on the
        # event loop cannot see each other's snapshot.
        self._catalog.snapshot = snap
        try:
            return generate_latest(self.registry)
        finally:
            self._catalog.snapshot = None
