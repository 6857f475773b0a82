"""The alert loop: every ``[alerts] interval_s``, read the catalog, evaluate the rules,
advance the alert state and send the transitions to the sinks.

The rules and the state machine are pure (``alerts.py``); this module only gathers
their inputs and moves the results. The firing alerts are kept in memory and served by
``GET /api/v1/alerts``. Nothing is persisted: after a restart every problem that still
holds fires again (receivers such as Alertmanager deduplicate by labels), and an alert
that resolved while the coordinator was down is not announced as resolved. The clock is
injected, like the scheduler's, so tests move time instead of waiting for it.

A catalog error skips one evaluation (logged) instead of stopping the coordinator: the
next one reads the catalog again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

from coordinator.alert_sinks import NatsSink, Sink, WebhookSink
from coordinator.alerts import (
    DURATION_WINDOW,
    AlertState,
    DatasetSnapshot,
    Finding,
    RecentBackup,
    evaluate,
    step,
)
from coordinator.api_models import API_PREFIX
from coordinator.catalog.base import Catalog
from coordinator.notify import AppriseSink
from shared.bus import Bus
from shared.config.coordinator import CoordinatorConfig, DatasetConfig
from shared.errors import MosaicError
from shared.vocab import utcnow
from shared.wire.monitoring import Alert

log = logging.getLogger(__name__)

# Backups of the newest one's type read per dataset for the duration rule: the newest
# and the previous DURATION_WINDOW (a weekly full is compared with fulls only).
HISTORY = DURATION_WINDOW + 1


class HistoryCache:
    """Duration histories by dataset, kept while the dataset's newest backup stays the
    same: after the first tick only datasets with a new backup are read again (one
    query for all of them), so a tick over 10,000 quiet datasets reads no history."""

    def __init__(self) -> None:
        self._by_dataset: dict[str, tuple[str, tuple[RecentBackup, ...]]] = {}

    async def get(
        self, catalog: Catalog, newest: Mapping[str, str]
    ) -> dict[str, tuple[RecentBackup, ...]]:
        """``newest``: dataset → the id of its newest backup."""
        stale = [d for d, b in newest.items() if self._by_dataset.get(d, ("",))[0] != b]
        if stale:
            fresh = await catalog.duration_history(stale, limit=HISTORY)
            for name in stale:
                rows = fresh.get(name, [])
                self._by_dataset[name] = (
                    newest[name],
                    tuple(RecentBackup(r.backup_type, r.duration_s) for r in rows),
                )
        for gone in self._by_dataset.keys() - newest.keys():
            del self._by_dataset[gone]
        return {d: h for d, (_, h) in self._by_dataset.items()}


async def read_snapshots(
    catalog: Catalog,
    datasets: Mapping[str, DatasetConfig],
    history: HistoryCache | None = None,
    first_seen: Mapping[str, datetime] | None = None,
) -> list[DatasetSnapshot]:
    """What the rules need about each configured dataset, from the catalog, in a fixed
    number of queries whatever the number of datasets: the per-(dataset, target)
    summary (newest backups), the newest failed backup job of every dataset, and the
    duration history of the datasets whose newest backup changed (``history`` keeps the
    others; without one, every dataset's is read, still in one query).

    Only backup jobs count as failures: a failed restore says nothing about whether the
    dataset is protected."""
    newest: dict[str, tuple[datetime, str]] = {}
    for s in await catalog.target_summaries():
        if s.dataset in datasets and (s.finished_at, s.backup_id) > newest.get(
            s.dataset, (datetime.min.replace(tzinfo=UTC), "")
        ):
            newest[s.dataset] = (s.finished_at, s.backup_id)
    fails = await catalog.last_failures(job_kind="backup")
    recent = await (history or HistoryCache()).get(catalog, {d: b for d, (_, b) in newest.items()})
    out: list[DatasetSnapshot] = []
    for name, ds in sorted(datasets.items()):
        fail = fails.get(name)
        failure = ""
        if fail is not None:
            failure = f"job {fail.job_id}: {fail.error_code or 'error'}: {fail.error_message or ''}"
        last = newest.get(name)
        out.append(
            DatasetSnapshot(
                dataset=name,
                target=ds.target,
                schedules=tuple(ds.schedules),
                last_success=last[0] if last else None,
                last_failure=fail.updated_at if fail else None,
                failure=failure.rstrip(": "),
                recent=recent.get(name, ()),
                first_seen=(first_seen or {}).get(name),
            )
        )
    return out


class Alerter:
    """Evaluates the alert rules of ``cfg``'s datasets; ``clock`` is the time source."""

    def __init__(
        self,
        cfg: CoordinatorConfig,
        catalog: Catalog,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.clock = clock
        self.state = AlertState()
        self.history = HistoryCache()
        self.first_seen: dict[str, datetime] | None = None  # read once (datasets_seen)
        # More rule inputs read elsewhere (maintenance results: coordinator/maintenance.py),
        # each called with ``now`` on every evaluation.
        self.sources: list[Callable[[datetime], Awaitable[list[Finding]]]] = []

    def firing(self) -> list[Alert]:
        """The alerts firing now, oldest first."""
        return sorted(self.state.firing.values(), key=lambda a: (a.starts_at, a.fingerprint))

    def _generator_url(self, http_port: int | None) -> str | None:
        """Where a human finds the alert: this coordinator's API, if it serves one on a
        concrete address (a wildcard listen address says nothing about how to reach it)."""
        http = self.cfg.http
        if http is None or not http_port or http.listen in ("0.0.0.0", "::"):
            return None
        host = f"[{http.listen}]" if ":" in http.listen else http.listen
        return f"http://{host}:{http_port}{API_PREFIX}/alerts"

    async def run(
        self,
        bus: Bus,
        http_port: int | None = None,
        *,
        task_status: Any = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Set up the sinks, signal readiness, then evaluate every ``interval_s``."""
        alerts = self.cfg.alerts
        nats = NatsSink(bus)
        await nats.prepare()
        async with contextlib.AsyncExitStack() as stack:
            sinks: list[Sink] = [nats]
            if alerts.webhook_url:
                hook = WebhookSink(alerts.webhook_url, generator_url=self._generator_url(http_port))
                sinks.append(await stack.enter_async_context(hook))
            if self.cfg.notify:  # Apprise routes (coordinator/notify.py)
                sinks.append(AppriseSink(self.cfg.notify))
            task_status.started()
            while True:
                await self.tick(sinks)
                await anyio.sleep(alerts.interval_s)

    async def tick(self, sinks: Sequence[Sink] = ()) -> list[Alert]:
        """One evaluation; returns (and sends) the transitions."""
        now = self.clock()
        try:
            if self.first_seen is None:  # a dataset without a backup is pending until then
                self.first_seen = await self.catalog.datasets_seen(sorted(self.cfg.datasets), now)
            snapshots = await read_snapshots(
                self.catalog, self.cfg.datasets, self.history, self.first_seen
            )
            findings = evaluate(snapshots, self.cfg.alerts, now)
            for source in self.sources:
                findings += await source(now)
            findings = [f for f in findings if f.rule not in self.cfg.alerts.disabled]
        except MosaicError as exc:
            log.error("alert rules not evaluated, the catalog failed: %s", exc)
            return []
        self.state, transitions = step(self.state, findings, now, coordinator=self.cfg.name)
        for a in transitions:
            log.warning("alert %s %s: %s", a.fingerprint, a.status, a.summary)
        for sink in sinks:
            await sink.send(transitions)
        return transitions
