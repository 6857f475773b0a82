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
- 3-2-1 counts production plus each target that holds the dataset's newest backup, with
  the media/location tags its agent reports in heartbeats; a target whose tags no
  heartbeat has reported yet makes the result unknown (None), not a violation.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Literal

import msgspec

from coordinator import alerts, compliance
from coordinator.catalog.base import Catalog, TargetSummary
from coordinator.heartbeats import HeartbeatStore, Seen
from coordinator.schedule import FireTimes
from shared.config.coordinator import CoordinatorConfig, ScheduleConfig
from shared.vocab import utcnow
from shared.wire.events import ReplicateCompleted
from shared.wire.monitoring import TargetSpace
from shared.wire.records import BackupRecord, JobRecord
from shared.wire.status import (
    AgentStatus,
    Compliance321,
    DatasetStatus,
    StatusReply,
    TargetCopy,
    TargetSpaceStatus,
)

# Replication results read per status (newest first; one per source → destination is used).
REPLICATE_SCAN = 200
_replicate_decoder = msgspec.json.Decoder(ReplicateCompleted)


def _replica_since(
    primary: TargetSummary | None, behind_then: float | None, at: datetime
) -> tuple[bool, datetime | None]:
    """(known, behind since) of a replica, from a replication result of ``at`` that found
    it ``behind_then`` seconds behind (0: in sync; None: the dataset is not in it).
    In sync then and no newer backup since: in sync (None). In sync then, but a newer
    backup since: behind since that backup finished (a lower bound of the lag). Behind
    then: since the oldest missing backup finished."""
    if behind_then is None or primary is None:
        return False, None
    if behind_then > 0:
        return True, at - timedelta(seconds=behind_then)
    if primary.finished_at <= at:
        return True, None
    return True, primary.finished_at


# Heartbeat interval assumed for an agent that has not sent one yet (AgentConfig's default).
DEFAULT_HEARTBEAT_S = 30.0


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


class _Row(msgspec.Struct, gc=False):
    """One dataset, computed for every dataset when the catalog changed (keep it cheap:
    a Struct without GC tracking, since 10,000s live in the cache; no cycles)."""

    name: str
    agent: str
    target: str
    copies: tuple[TargetSummary, ...]
    newest: TargetSummary | None
    failure: JobRecord | None
    failing: bool
    compliance: Compliance321
    since: dict[str, datetime | None]  # replica target → behind since (None: in sync)
    problem: bool = False  # failing, never backed up or not 3-2-1 (lag is added per read)

    def lags(self, now: datetime) -> dict[str, float]:
        return {
            t: 0.0 if at is None else max((now - at).total_seconds(), 0.0)
            for t, at in self.since.items()
        }


@dataclass
class _Base:
    """The time-independent part of an overview, cached until the catalog changes."""

    rows: list[_Row] = field(default_factory=list)
    behind: list[_Row] = field(default_factory=list)  # rows with a replica behind
    catalog_bytes: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    failing: int = 0
    without_backup: int = 0
    not_compliant: int = 0
    backups_total: int = 0
    newest_at: datetime | None = None


@dataclass
class Overview:
    """Everything one read found, over all datasets."""

    now: datetime
    rows: list[_Row]
    problems: list[_Row]  # failing, without backup, not compliant or lagging, by name
    heartbeats: Mapping[str, Seen]
    agents: list[AgentStatus]
    targets: list[TargetSpaceStatus]
    failing: int
    without_backup: int
    not_compliant: int
    backups_total: int
    newest_at: datetime | None


def _tags(
    heartbeats: Mapping[str, Seen],
) -> tuple[dict[tuple[str, str], TargetSpace], dict[str, TargetSpace]]:
    """Target reports by (agent, target), and by target name alone (replicas written by
    another agent, such as a maintenance agent, are found by name)."""
    by_agent: dict[tuple[str, str], TargetSpace] = {}
    by_name: dict[str, TargetSpace] = {}
    for agent, seen in sorted(heartbeats.items()):
        for t in seen.heartbeat.targets:
            by_agent[agent, t.name] = t
            by_name.setdefault(t.name, t)
    return by_agent, by_name


def _with_copies(
    summaries: list[TargetSummary], copies: list[TargetSummary]
) -> tuple[list[TargetSummary], dict[str, int]]:
    """Backups and replicated copies as one summary per (dataset, target), in that
    order, and how many of each dataset's counted backups are copies."""
    if not copies:
        return summaries, {}
    merged = {(s.dataset, s.target): s for s in summaries}
    copied: dict[str, int] = defaultdict(int)
    for c in copies:
        copied[c.dataset] += c.backups
        s = merged.get((c.dataset, c.target))
        if s is not None:
            newest = max(s, c, key=attrgetter("finished_at", "backup_id"))
            c = msgspec.structs.replace(
                newest, backups=s.backups + c.backups, bytes_stored=s.bytes_stored + c.bytes_stored
            )
        merged[c.dataset, c.target] = c
    return [merged[k] for k in sorted(merged)], copied


class StatusBuilder:
    def __init__(
        self,
        cfg: CoordinatorConfig,
        catalog: Catalog,
        heartbeats: HeartbeatStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        active: Callable[[], bool | None] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.heartbeats = heartbeats
        self.clock = clock
        self.active = active
        self.next_runs = NextRuns({n: d.schedules for n, d in cfg.datasets.items()})
        self._names = sorted(cfg.datasets)
        self._cache: tuple[object, _Base] | None = None

    # --- the read over all datasets ---------------------------------------------------

    def _comply(
        self,
        agent: str,
        holding: tuple[str, ...],
        by_agent: Mapping[tuple[str, str], TargetSpace],
        by_name: Mapping[str, TargetSpace],
    ) -> Compliance321:
        copies: list[compliance.Copy] = []
        unknown: list[str] = []
        for name in holding:
            t = by_agent.get((agent, name)) or by_name.get(name)
            if t is None:
                unknown.append(name)
            else:
                location: compliance.Location = "offsite" if t.location == "offsite" else "onsite"
                copies.append(compliance.Copy(name, t.media, location))
        result = compliance.evaluate(copies)
        if unknown:
            return Compliance321(
                compliant=None,
                copies=result.copies + len(unknown),
                media=list(result.media),
                offsite=result.offsite,
                reasons=[f"tags of target {', '.join(unknown)} unknown (no heartbeat yet)"],
            )
        return Compliance321(
            compliant=result.compliant,
            copies=result.copies,
            media=list(result.media),
            offsite=result.offsite,
            reasons=list(result.reasons),
        )

    async def _compute(
        self,
        replicas: Mapping[str, Sequence[tuple[str, datetime, Mapping[str, float | None]]]],
        by_agent: Mapping[tuple[str, str], TargetSpace],
        by_name: Mapping[str, TargetSpace],
    ) -> _Base:
        """The part of the overview that depends only on the catalog and target tags."""
        summaries, copied = _with_copies(
            await self.catalog.target_summaries(), await self.catalog.copy_summaries()
        )
        failures = await self.catalog.last_failures(job_kind="backup", unresolved=True)
        memo: dict[tuple[str, tuple[str, ...]], Compliance321] = {}  # few distinct per read
        # tuples of untracked Structs: the garbage collector stops looking at them
        per_dataset = {
            d: tuple(g) for d, g in itertools.groupby(summaries, key=attrgetter("dataset"))
        }
        base = _Base()
        catalog_bytes = base.catalog_bytes
        no_copies: tuple[TargetSummary, ...] = ()
        datasets = self.cfg.datasets
        for name in self._names:  # 10,000s of datasets: every step here counts
            ds = datasets[name]
            copies = per_dataset.get(name, no_copies)
            newest = primary = None
            for c in copies:
                base.backups_total += c.backups
                catalog_bytes[ds.agent, c.target] += c.bytes_stored
                if newest is None or c.finished_at > newest.finished_at:
                    newest = c
                if c.target == ds.target:
                    primary = c
            base.backups_total -= copied.get(name, 0)  # copies are not more backups
            fail = failures.get(name)  # only failing ones: newer than every backup
            is_failing = fail is not None
            since: dict[str, datetime | None] = {}  # replica → behind since (None: in sync)
            reference = primary or newest
            holding: tuple[str, ...] = ()
            if reference is not None and len(copies) == 1:
                holding = (reference.target,)
            elif reference is not None:
                ref_at = reference.finished_at
                holding = tuple(c.target for c in copies if c.finished_at >= ref_at)
                for c in copies:
                    if c is not reference:
                        since[c.target] = ref_at if c.finished_at < ref_at else None
            for to, at, measured in replicas.get(ds.target, ()):
                known, behind = _replica_since(reference, measured.get(name), at)
                if known and to not in since:
                    since[to] = behind
                    if behind is None:
                        holding = (*holding, to)
            key = (ds.agent, holding)
            comp = memo.get(key)
            if comp is None:
                comp = memo[key] = self._comply(ds.agent, holding, by_agent, by_name)
            row = _Row(name, ds.agent, ds.target, copies, newest, fail, is_failing, comp, since)
            row.problem = is_failing or newest is None or comp.compliant is False
            base.rows.append(row)
            if any(since.values()):
                base.behind.append(row)
            base.failing += is_failing
            base.without_backup += newest is None
            base.not_compliant += comp.compliant is False
            if newest is not None and (
                base.newest_at is None or newest.finished_at > base.newest_at
            ):
                base.newest_at = newest.finished_at
        return base

    async def read(self) -> Overview:
        """Everything over all datasets. The per-dataset pass runs again only when the
        catalog's aggregates, the replication results or the targets' tags changed
        (one cheap marker query tells); what depends on the time is recomputed."""
        now = self.clock()
        marker = await self.catalog.summary_marker()
        replicas = await self._replicas()
        heartbeats = self.heartbeats.last()
        by_agent, by_name = _tags(heartbeats)
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
        return Overview(
            now=now,
            rows=base.rows,
            problems=[r for r in base.rows if r.problem or id(r) in lagging],
            heartbeats=heartbeats,
            agents=self._agents(heartbeats, now),
            targets=self._targets(heartbeats, base.catalog_bytes),
            failing=base.failing,
            without_backup=base.without_backup,
            not_compliant=base.not_compliant,
            backups_total=base.backups_total,
            newest_at=base.newest_at,
        )

    def _agents(self, heartbeats: Mapping[str, Seen], now: datetime) -> list[AgentStatus]:
        names = {d.agent for d in self.cfg.datasets.values()} | set(heartbeats)
        out = []
        for agent in sorted(names):
            seen = heartbeats.get(agent)
            hb = seen.heartbeat if seen else None
            interval = hb.interval_s if hb else DEFAULT_HEARTBEAT_S
            lost = alerts.heartbeat_lost(
                agent, seen.at if seen else None, interval, now, self.heartbeats.started_at
            )
            out.append(
                AgentStatus(
                    agent=agent,
                    hostname=hb.hostname if hb else "",
                    version=hb.version if hb else "",
                    last_heartbeat=seen.at if seen else None,
                    running_job=hb.running_job if hb else None,
                    uptime_s=hb.uptime_s if hb else 0.0,
                    lost=lost is not None,
                )
            )
        return out

    @staticmethod
    def _targets(
        heartbeats: Mapping[str, Seen], catalog_bytes: Mapping[tuple[str, str], int]
    ) -> list[TargetSpaceStatus]:
        out: dict[tuple[str, str], TargetSpaceStatus] = {}
        for agent, seen in heartbeats.items():
            for t in seen.heartbeat.targets:
                used = None
                if t.total and t.free is not None:
                    used = round(100.0 * (t.total - t.free) / t.total, 2)
                out[agent, t.name] = TargetSpaceStatus(
                    agent=agent,
                    target=t.name,
                    kind=t.kind,
                    media=t.media,
                    location=t.location,
                    tier=t.tier,
                    total=t.total,
                    free=t.free,
                    used_percent=used,
                    catalog_bytes=catalog_bytes.get((agent, t.name), 0),
                )
        for (agent, target), n in catalog_bytes.items():
            if (agent, target) not in out:  # known to the catalog, no heartbeat (yet)
                out[agent, target] = TargetSpaceStatus(agent=agent, target=target, catalog_bytes=n)
        return [out[k] for k in sorted(out)]

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
    ) -> list[_Row]:
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

    async def detail(self, ov: Overview, rows: Iterable[_Row]) -> list[DatasetStatus]:
        rows = list(rows)
        ids = [r.newest.backup_id for r in rows if r.newest is not None]
        found: dict[str, BackupRecord] = {
            b.backup_id: b for b in await self.catalog.get_backups(ids)
        }
        failures = await self.catalog.last_failures(datasets=[r.name for r in rows])
        free = {
            (agent, t.name): t.free
            for agent, seen in ov.heartbeats.items()
            for t in seen.heartbeat.targets
        }
        return [self._one(r, ov.now, found, failures, free) for r in rows]

    def _one(
        self,
        r: _Row,
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
        return StatusReply(
            status=status,
            coordinator=self.cfg.name,
            datasets=rows,
            recent_failures=await self.catalog.recent_failures(limit=10),
            backups_total=ov.backups_total,
            active=self.active(),
            datasets_total=len(ov.rows),
            datasets_failing=ov.failing,
            datasets_without_backup=ov.without_backup,
            datasets_not_compliant=ov.not_compliant,
            next_backup=self.next_runs.soonest(ov.now),
            last_backup_at=ov.newest_at,
            agents=ov.agents,
            targets=ov.targets,
        )

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
        out.extend(
            alerts.storage_low(
                t.agent, t.target, t.free / t.total, self.cfg.alerts.storage_min_free
            )
            for t in ov.targets
            if t.total and t.free is not None
        )
        for r in ov.rows:
            for target, lag in r.lags(now).items():
                out.append(alerts.replication_lag(r.name, target, lag))
            if r.compliance.compliant is False:
                out.append(alerts.not_compliant(r.name, r.compliance.reasons))
        return [f for f in out if f is not None]
