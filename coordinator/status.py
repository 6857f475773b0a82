"""The status of every dataset, agent and target, assembled for the API, metrics and alerts.

Sources: the catalog's aggregates (one row per dataset × target, kept by triggers; the
newest failed job per dataset), the agents' last heartbeats (coordinator/heartbeats.py:
liveness, target tags and free space) and the schedules (next run). Three reads of the
catalog per status (the third: replicated copies, summarised the same way), whatever
the number of backups; the per-dataset work is a loop over
plain values, and full backup rows are fetched only for the page of datasets shown.

Choices that matter at scale (10,000 datasets, a million backups):

- One page of per-dataset detail: datasets that need attention first (failing, never
  backed up, not 3-2-1 compliant, replication behind), then the others by name. The
  totals and counters always cover every dataset.
- Next runs are cached per dataset until they pass, and computed once per distinct
  schedule (``schedule.FireTimes``; croniter costs ~0.1 ms per call).
- Replication lag of a replica target is how long the primary's newest backup has waited
  for a copy there (0 once the replica holds a backup at least as new). It is a lower
  bound of "age of the oldest backup not yet copied", which would need one more catalog
  query per lagging dataset × target.
- Replicated copies recorded in the catalog (``backup_copies``, from replicate results)
  count like backups on their target: a replica holding the newest backup is a real
  copy, not an estimate; the replicate result's lag is used only for a replica without
  catalog copies of the dataset (its event carried no backup ids, an older agent).
- A dataset that never had a backup is "pending" (not a problem, not a reason for
  "degraded", no 3-2-1 finding) until its first scheduled time after its first
  appearance in the config (``Catalog.datasets_seen``) plus ``missing_grace_s`` has
  passed: a fresh install is healthy. First appearances are read once per process.
- Skipped scheduled runs (coordinator/scheduler.py writes them as ``schedule_skipped``
  audit entries) are shown per dataset of the page, the newest per schedule, from the
  newest :data:`SKIPPED_SCAN` entries (one query).
- Who holds the coordinators' lease and since when comes from ``lease``
  (coordinator/leader.py ``Leader.holder``), so a standby answers it too.
- 3-2-1 counts production plus each target that holds the dataset's newest backup, with
  the media/location tags its agent reports in heartbeats; a target whose tags no
  heartbeat has reported yet makes the result unknown (None), not a violation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from coordinator import alerts
from coordinator.catalog.base import Catalog
from coordinator.heartbeats import HeartbeatStore
from coordinator.overview import (
    DEFAULT_HEARTBEAT_S,
    Base,
    Overview,
    Replicas,
    Row,
    agent_statuses,
    compute,
    free_ratio,
    pending,
    tags_of,
    target_statuses,
)
from coordinator.schedule import FireTimes
from coordinator.scheduler import SKIPPED_ACTION
from shared.config.coordinator import CoordinatorConfig, ScheduleConfig
from shared.vocab import utcnow
from shared.wire.events import ReplicateCompleted
from shared.wire.monitoring import TargetSpace
from shared.wire.records import BackupRecord, JobRecord
from shared.wire.status import DatasetStatus, SkippedRuns, StatusReply, TargetCopy

# Replication results read per status (newest first; one per source → destination is used).
REPLICATE_SCAN = 200
# Audit entries of skipped runs read per status (newest first).
SKIPPED_SCAN = 500
_replicate_decoder = msgspec.json.Decoder(ReplicateCompleted)
_skipped_decoder = msgspec.json.Decoder(SkippedRuns)
# who holds the lease (``name/instance``) and since when; None: nobody, or unknown
Lease = Callable[[], Awaitable[tuple[str, datetime | None] | None]]


class NextRuns:
    """Each dataset's next scheduled run, recomputed only once it has passed."""

    def __init__(self, schedules: Mapping[str, Sequence[ScheduleConfig]]) -> None:
        self._schedules = {d: tuple(s) for d, s in schedules.items() if s}
        self._next: dict[str, datetime] = {}
        self._soonest: datetime | None = None
        self._times = FireTimes()  # shared by the datasets on the same schedule

    def get(self, dataset: str, now: datetime) -> datetime | None:
        t = self._next.get(dataset)
        if t is None or t <= now:
            scheds = self._schedules.get(dataset)
            if not scheds:
                return None
            t = self._next[dataset] = min(self._times.next(s, now) for s in scheds)
        return t

    def soonest(self, now: datetime) -> datetime | None:
        # Every cached run is later than the soonest one, so only its passing needs a
        # new pass over all datasets.
        if self._soonest is None or self._soonest <= now:
            self._soonest = min(
                (t for d in self._schedules if (t := self.get(d, now))), default=None
            )
        return self._soonest


class StatusBuilder:
    def __init__(
        self,
        cfg: CoordinatorConfig,
        catalog: Catalog,
        heartbeats: HeartbeatStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        active: Callable[[], bool | None] = lambda: None,
        lease: Lease | None = None,
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.heartbeats = heartbeats
        self.clock = clock
        self.active = active
        self.lease = lease
        self._first_seen: dict[str, datetime] | None = None  # read once (datasets_seen)
        self._times = FireTimes()
        self.next_runs = NextRuns({n: d.schedules for n, d in cfg.datasets.items()})
        self._names = sorted(cfg.datasets)
        self._cache: tuple[object, Base] | None = None
        # more parts of the reply, each given it and returning it completed
        # (coordinator/coverage.py adds the unprotected items and certificates)
        self.fillers: list[Callable[[StatusReply], Awaitable[StatusReply]]] = []

    # --- the read over all datasets ---------------------------------------------------

    async def _compute(
        self,
        replicas: Replicas,
        by_agent: Mapping[tuple[str, str], TargetSpace],
        by_name: Mapping[str, TargetSpace],
    ) -> Base:
        """The part of the overview that depends only on the catalog and target tags."""
        return compute(
            self.cfg.datasets,
            self._names,
            await self.catalog.target_summaries(),
            await self.catalog.copy_summaries(),
            await self.catalog.last_failures(job_kind="backup", unresolved=True),
            replicas,
            by_agent,
            by_name,
        )

    async def read(self) -> Overview:
        """Everything over all datasets. The per-dataset pass runs again only when the
        catalog's aggregates, the replication results or the targets' tags changed
        (one cheap marker query tells); what depends on the time is recomputed."""
        now = self.clock()
        marker = await self.catalog.summary_marker()
        replicas = await self._replicas()
        heartbeats = self.heartbeats.last()
        by_agent, by_name = tags_of(heartbeats)
        key = (
            marker,
            tuple(sorted((s, to, at) for s, entries in replicas.items() for to, at, _ in entries)),
            tuple(sorted((k, t.media, t.location) for k, t in by_agent.items())),
        )
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, await self._compute(replicas, by_agent, by_name))
        base = self._cache[1]
        limit = now - timedelta(seconds=alerts.REPLICATION_MAX_LAG_S)
        lagging = {
            id(r) for r in base.behind if any(t is not None and t < limit for t in r.since.values())
        }
        grace = timedelta(seconds=self.cfg.alerts.missing_grace_s)
        waiting = pending(
            (r for r in base.rows if r.newest is None),
            self.cfg.datasets,
            await self.first_seen(now),
            now - grace,
            self._times,
        )
        return Overview(
            now=now,
            rows=base.rows,
            problems=[
                r for r in base.rows if (r.problem and r.name not in waiting) or id(r) in lagging
            ],
            heartbeats=heartbeats,
            agents=agent_statuses(
                (d.agent for d in self.cfg.datasets.values()),
                heartbeats,
                now,
                self.heartbeats.started_at,
            ),
            targets=target_statuses(heartbeats, base.catalog_bytes),
            failing=base.failing,
            without_backup=base.without_backup - len(waiting),
            not_compliant=base.not_compliant,
            backups_total=base.backups_total,
            newest_at=base.newest_at,
            pending=waiting,
        )

    async def first_seen(self, now: datetime) -> dict[str, datetime]:
        """Each dataset's first appearance in the config, recorded as ``now`` for the
        ones the catalog has not seen; read once (the datasets do not change while the
        process runs)."""
        if self._first_seen is None:
            self._first_seen = await self.catalog.datasets_seen(self._names, now)
        return self._first_seen

    async def _replicas(self) -> dict[str, list[tuple[str, datetime, dict[str, float | None]]]]:
        """The newest replication result per source → destination target, by source
        target: (destination, when, seconds behind per dataset): how far each dataset's
        copy was behind when it ran. Used for replicas without catalog copies of the
        dataset (``copy_summaries``; a result from an agent that sent no backup ids)."""
        newest: dict[tuple[str, str], tuple[str, datetime, dict[str, float | None]]] = {}
        for rec in await self.catalog.list_maintenance(kind="replicate", limit=REPLICATE_SCAN):
            try:
                ev = _replicate_decoder.decode(rec.detail)
            except msgspec.DecodeError:
                continue  # a failed replicate job: its detail is the JobFailed event
            newest.setdefault((ev.target, ev.to_target), (ev.to_target, ev.at, ev.lag_s))
        out: dict[str, list[tuple[str, datetime, dict[str, float | None]]]] = defaultdict(list)
        for (source, _), entry in newest.items():
            out[source].append(entry)
        return out

    # --- the reply ----------------------------------------------------------------------

    def page(
        self, ov: Overview, *, limit: int, offset: int, dataset: str | None = None
    ) -> list[Row]:
        if dataset is not None:
            return [r for r in ov.rows if r.name == dataset]
        shown = {r.name for r in ov.problems}
        wanted = ov.problems[offset : offset + limit]
        rest = limit - len(wanted)
        if rest > 0:
            skip = max(offset - len(ov.problems), 0)
            others = (r for r in ov.rows if r.name not in shown)
            for i, r in enumerate(others):
                if i >= skip + rest:
                    break
                if i >= skip:
                    wanted.append(r)
        return wanted

    async def detail(self, ov: Overview, rows: Iterable[Row]) -> list[DatasetStatus]:
        rows = list(rows)
        ids = [r.newest.backup_id for r in rows if r.newest is not None]
        found: dict[str, BackupRecord] = {
            b.backup_id: b for b in await self.catalog.get_backups(ids)
        }
        failures = await self.catalog.last_failures(datasets=[r.name for r in rows])
        skipped = await self._skipped({r.name for r in rows})
        appeared = self._first_seen or {}
        free = {
            (agent, t.name): t.free
            for agent, seen in ov.heartbeats.items()
            for t in seen.heartbeat.targets
        }
        return [
            msgspec.structs.replace(
                self._one(r, ov.now, found, failures, free),
                pending=r.name in ov.pending,
                first_seen=appeared.get(r.name),
                skipped_runs=skipped.get(r.name, []),
            )
            for r in rows
        ]

    async def _skipped(self, names: set[str]) -> dict[str, list[SkippedRuns]]:
        """The newest skip of each schedule (tier, type) of the datasets in ``names``."""
        out: dict[str, dict[tuple[str, str], SkippedRuns]] = defaultdict(dict)
        for e in await self.catalog.list_audit(limit=SKIPPED_SCAN, action=SKIPPED_ACTION):
            if e.dataset not in names:
                continue
            try:
                s = _skipped_decoder.decode(e.detail)
            except msgspec.DecodeError:
                continue  # not written by this version's scheduler
            out[e.dataset].setdefault((s.tier, s.backup_type), s)  # newest first
        return {d: list(by.values()) for d, by in out.items()}

    def _one(
        self,
        r: Row,
        now: datetime,
        found: Mapping[str, BackupRecord],
        failures: Mapping[str, JobRecord],
        free: Mapping[tuple[str, str], int | None],
    ) -> DatasetStatus:
        lags = r.lags(now)
        return DatasetStatus(
            dataset=r.name,
            agent=r.agent,
            target=r.target,
            last_backup=found.get(r.newest.backup_id) if r.newest else None,
            last_failure=failures.get(r.name),  # of any kind, failing or not
            next_backup=self.next_runs.get(r.name, now),
            storage_used=sum(c.bytes_stored for c in r.copies),
            storage_free=free.get((r.agent, r.target)),
            targets=[
                TargetCopy(
                    target=c.target,
                    primary=c.target == r.target,
                    last_backup_at=c.finished_at,
                    backups=c.backups,
                    bytes_stored=c.bytes_stored,
                    lag_s=lags.get(c.target),
                )
                for c in r.copies
            ]
            + [
                TargetCopy(target=t, lag_s=lag)  # a replica known from replication
                for t, lag in sorted(lags.items())
                if all(c.target != t for c in r.copies)
            ],
            compliance=r.compliance,
        )

    async def reply(
        self, *, limit: int = 1000, offset: int = 0, dataset: str | None = None
    ) -> StatusReply:
        ov = await self.read()
        rows = await self.detail(ov, self.page(ov, limit=limit, offset=offset, dataset=dataset))
        status: Literal["healthy", "degraded", "failing"] = "healthy"
        if ov.failing and ov.failing == len(ov.rows):
            status = "failing"
        elif ov.failing or ov.without_backup:
            status = "degraded"
        holder = await self.lease() if self.lease is not None else None
        reply = StatusReply(
            status=status,
            coordinator=self.cfg.name,
            datasets=rows,
            recent_failures=await self.catalog.recent_failures(limit=10),
            backups_total=ov.backups_total,
            active=self.active(),
            datasets_total=len(ov.rows),
            datasets_failing=ov.failing,
            datasets_without_backup=ov.without_backup,
            datasets_pending=len(ov.pending),
            active_coordinator=holder[0] if holder else None,
            active_since=holder[1] if holder else None,
            datasets_not_compliant=ov.not_compliant,
            next_backup=self.next_runs.soonest(ov.now),
            last_backup_at=ov.newest_at,
            agents=ov.agents,
            targets=ov.targets,
        )
        for fill in self.fillers:
            reply = await fill(reply)
        return reply

    # --- alert findings (the rules are pure, in alerts.py) ----------------------------

    async def findings(self, now: datetime) -> list[alerts.Finding]:
        """Heartbeat lost, storage low, replication lag and 3-2-1 findings at ``now``."""
        ov = await self.read()
        out: list[alerts.Finding | None] = []
        for a in ov.agents:
            seen = ov.heartbeats.get(a.agent)
            interval = seen.heartbeat.interval_s if seen else DEFAULT_HEARTBEAT_S
            out.append(
                alerts.heartbeat_lost(
                    a.agent, a.last_heartbeat, interval, now, self.heartbeats.started_at
                )
            )
        out.extend(  # df's figures (overview.free_ratio), straight from the heartbeats
            alerts.storage_low(agent, t.name, free_ratio(t), self.cfg.alerts.storage_min_free)
            for agent, seen in ov.heartbeats.items()
            for t in seen.heartbeat.targets
        )
        for r in ov.rows:
            for target, lag in r.lags(now).items():
                out.append(alerts.replication_lag(r.name, target, lag))
            if r.compliance.compliant is False and r.name not in ov.pending:
                out.append(alerts.not_compliant(r.name, r.compliance.reasons))
        return [f for f in out if f is not None]
