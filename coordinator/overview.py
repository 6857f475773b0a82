"""The per-dataset pass of a status read (coordinator/status.py): plain values in, rows
and totals out, no I/O, so it runs over 10,000s of datasets without a catalog query
each and can be tested with plain values.

A row holds what a dataset's status needs that does not depend on the time: its
copies per target, the newest backup, an unresolved failure, the 3-2-1 verdict and,
per replica target, since when it is behind (:meth:`Row.lags` turns that into seconds
at the time of the read).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter

import msgspec

from coordinator import alerts, compliance
from coordinator.catalog.records import TargetSummary
from coordinator.heartbeats import Seen
from coordinator.schedule import FireTimes
from shared.config.coordinator import DatasetConfig
from shared.wire.monitoring import TargetSpace
from shared.wire.records import JobRecord
from shared.wire.status import AgentStatus, Compliance321, TargetSpaceStatus

# Heartbeat interval assumed for an agent that has not sent one yet (AgentConfig's default).
DEFAULT_HEARTBEAT_S = 30.0

# source target → (replica target, when, seconds behind per dataset) of replication results
Replicas = Mapping[str, Sequence[tuple[str, datetime, Mapping[str, float | None]]]]


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


class Row(msgspec.Struct, gc=False):
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
class Base:
    """The time-independent part of an overview, cached until the catalog changes."""

    rows: list[Row] = field(default_factory=list)
    behind: list[Row] = field(default_factory=list)  # rows with a replica behind
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
    rows: list[Row]
    problems: list[Row]  # failing, without backup, not compliant or lagging, by name
    heartbeats: Mapping[str, Seen]
    agents: list[AgentStatus]
    targets: list[TargetSpaceStatus]
    failing: int
    without_backup: int
    not_compliant: int
    backups_total: int
    newest_at: datetime | None
    # never backed up, not failing, and no scheduled time since the dataset first
    # appeared is more than the grace period ago: not a problem yet (:func:`pending`)
    pending: frozenset[str] = frozenset()


def pending(
    rows: Iterable[Row],
    datasets: Mapping[str, DatasetConfig],
    first_seen: Mapping[str, datetime],
    before: datetime,
    times: FireTimes,
) -> frozenset[str]:
    """The rows without a backup (and not failing) of scheduled datasets whose newest
    fire time at or before ``before`` (now − grace) is older than their first
    appearance: their first run plus grace has not passed yet. The same test as the
    ``backup_missing`` rule (alerts.py), so "pending" ends when that alert may fire."""
    out: set[str] = set()
    for r in rows:
        seen = first_seen.get(r.name)
        if r.newest is not None or r.failing or seen is None:
            continue
        due = alerts.last_due(datasets[r.name].schedules, before, times)
        if due is not None and due < seen:
            out.add(r.name)
    return frozenset(out)


def tags_of(
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


def with_copies(
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


def comply(
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


def compute(
    datasets: Mapping[str, DatasetConfig],
    names: Sequence[str],
    summaries: list[TargetSummary],
    copy_summaries: list[TargetSummary],
    failures: Mapping[str, JobRecord],
    replicas: Replicas,
    by_agent: Mapping[tuple[str, str], TargetSpace],
    by_name: Mapping[str, TargetSpace],
) -> Base:
    """The part of the overview that depends only on the catalog and target tags:
    ``names`` (sorted) of ``datasets``, the catalog's summaries of backups and copies,
    the newest unresolved backup failure per dataset, the replication results."""
    summaries, copied = with_copies(summaries, copy_summaries)
    memo: dict[tuple[str, tuple[str, ...]], Compliance321] = {}  # few distinct per read
    # tuples of untracked Structs: the garbage collector stops looking at them
    per_dataset = {d: tuple(g) for d, g in itertools.groupby(summaries, key=attrgetter("dataset"))}
    base = Base()
    catalog_bytes = base.catalog_bytes
    no_copies: tuple[TargetSummary, ...] = ()
    for name in names:  # 10,000s of datasets: every step here counts
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
            comp = memo[key] = comply(ds.agent, holding, by_agent, by_name)
        row = Row(name, ds.agent, ds.target, copies, newest, fail, is_failing, comp, since)
        row.problem = is_failing or newest is None or comp.compliant is False
        base.rows.append(row)
        if any(since.values()):
            base.behind.append(row)
        base.failing += is_failing
        base.without_backup += newest is None
        base.not_compliant += comp.compliant is False
        if newest is not None and (base.newest_at is None or newest.finished_at > base.newest_at):
            base.newest_at = newest.finished_at
    return base


def agent_statuses(
    configured: Iterable[str],
    heartbeats: Mapping[str, Seen],
    now: datetime,
    started_at: datetime,
) -> list[AgentStatus]:
    """Every agent a dataset names or a heartbeat came from; ``started_at``: when
    heartbeats began to be watched (an agent is not lost before it could be seen)."""
    names = set(configured) | set(heartbeats)
    out = []
    for agent in sorted(names):
        seen = heartbeats.get(agent)
        hb = seen.heartbeat if seen else None
        interval = hb.interval_s if hb else DEFAULT_HEARTBEAT_S
        lost = alerts.heartbeat_lost(agent, seen.at if seen else None, interval, now, started_at)
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


def df_space(t: TargetSpace) -> tuple[int, int] | None:
    """(used, used + available) bytes of a heartbeat's target, as ``df`` counts them, so
    used % = used / (used + available) and free share = available / (used + available)
    (df's Use% is this, rounded up). Blocks reserved for root are in neither: on an ext4
    with 5 % reserved, (total − free) / total would read far higher than ``df``.
    None: unknown (no statvfs, or an empty file system)."""
    if t.free is None:
        return None
    if t.used is not None:
        used, whole = t.used, t.used + t.free
    elif t.total:
        # Fallback ONLY for an agent older than the ``used`` field: it sent total and
        # free alone, so reserved blocks count as used here (reads high on ext4).
        used, whole = t.total - t.free, t.total
    else:
        return None
    return (used, whole) if whole > 0 else None


def used_percent(t: TargetSpace) -> float | None:
    """``backup_storage_used_percent``: 100 × used / (used + available), unrounded (so
    rounding it up gives df's Use%)."""
    space = df_space(t)
    return None if space is None else 100.0 * space[0] / space[1]


def free_ratio(t: TargetSpace) -> float | None:
    """What ``storage_low`` compares with ``storage_min_free``: available / (used +
    available), 0…1, the complement of :func:`used_percent`."""
    space = df_space(t)
    return None if space is None else (space[1] - space[0]) / space[1]


def target_statuses(
    heartbeats: Mapping[str, Seen], catalog_bytes: Mapping[tuple[str, str], int]
) -> list[TargetSpaceStatus]:
    out: dict[tuple[str, str], TargetSpaceStatus] = {}
    for agent, seen in heartbeats.items():
        for t in seen.heartbeat.targets:
            out[agent, t.name] = TargetSpaceStatus(
                agent=agent,
                target=t.name,
                kind=t.kind,
                media=t.media,
                location=t.location,
                tier=t.tier,
                total=t.total,
                free=t.free,
                used_percent=used_percent(t),
                catalog_bytes=catalog_bytes.get((agent, t.name), 0),
                key_check=t.key_check,
            )
    for (agent, target), n in catalog_bytes.items():
        if (agent, target) not in out:  # known to the catalog, no heartbeat (yet)
            out[agent, target] = TargetSpaceStatus(agent=agent, target=target, catalog_bytes=n)
    return [out[k] for k in sorted(out)]
