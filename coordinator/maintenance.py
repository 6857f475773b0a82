"""Maintenance the coordinator orders: verify, prune, replicate, and restore drills.

The coordinator owns the schedule, the catalog and the retention policy; agents own the
data. So the coordinator decides (which backups retention expires on a target, which
backup a drill restores, how much a verify reads) and publishes one job; the agent that
holds the target carries it out and reports one result event, which lands here, in the
catalog's ``maintenance`` table, and feeds two alert rules (``verify_failed``,
``drill_failed``).

Tasks come from the datasets: every (agent, target) that stores a dataset gets verify
and prune (run by ``[maintenance] agent`` when set: the maintenance role that may
delete), each ``replicate`` pair gets a copy job, every dataset gets a drill. They fire
through the same :class:`~coordinator.scheduler.Scheduler` as backups, so a run missed
while the coordinator was down still runs inside the grace window and nothing fires
twice: a run's job id is ``<task>-<agent>-<target>[-<to>]-<UTC minute>`` (a drill:
``drill-<dataset>-<minute>``), checked against the catalog and used as the JetStream
``Nats-Msg-Id``.

Retention needs each backup's tier: the catalog's ``tier`` column (the schedule that
fired, or the operator's ``backup --tier``). Rows recorded before that column existed
fall back to the scheduled backup id (``sched-<dataset>-<tier>-<type>-<time>``), and
any other old backup counts as ``daily``, the shortest-lived tier. The newest backup of
a dataset is always kept.

A replicate result lists the backups the replica holds; they are recorded as catalog
copies (``backup_copies``), which ``list`` and the 3-2-1 check read. Every replica
target is pruned too (by the agent that replicates to it), with its own target tier
(``[maintenance] target_tiers``: daily 14 days on a remote target where the local one
keeps 7), over its copies; a finished prune there removes those copy rows.

This module is the plan, pure: which tasks the config implies, their job ids, a
backup's tier, a result's one-line summary. The :class:`Maintenance` that schedules and
builds the jobs is in ``coordinator/jobs/maintenance.py``; the results are recorded by
``coordinator/jobs/record.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, get_args

from shared.config.coordinator import CoordinatorConfig, MaintenanceConfig
from shared.vocab import Tier
from shared.wire.events import (
    DrillCompleted,
    Event,
    JobFailed,
    PruneCompleted,
    ReplicateCompleted,
    VerifyCompleted,
)

Kind = Literal["verify", "prune", "replicate", "drill"]
KINDS: tuple[str, ...] = get_args(Kind)
_MAX_TOKEN = 128


@dataclass(frozen=True)
class Task:
    """One recurring maintenance task (what a schedule fires)."""

    kind: Kind
    agent: str
    target: str
    to_target: str = ""
    dataset: str = ""  # drills
    datasets: tuple[str, ...] = ()  # datasets stored on ``target`` (verify, prune, replicate)

    @property
    def name(self) -> str:
        if self.kind == "drill":
            return self.dataset
        return "-".join(p for p in (self.agent, self.target, self.to_target) if p)


def token(*parts: str) -> str:
    """Parts joined by ``-``; too long for one subject token: shortened plus a hash."""
    text = "-".join(parts)
    if len(text) <= _MAX_TOKEN:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{text[: _MAX_TOKEN - 13]}-{digest}"


def plan_tasks(cfg: CoordinatorConfig) -> list[Task]:
    """Every maintenance task the config implies (pure; in a stable order)."""
    m = cfg.maintenance or MaintenanceConfig()
    stored: dict[tuple[str, str], list[str]] = {}
    for name, ds in sorted(cfg.datasets.items()):
        stored.setdefault((m.agent or ds.agent, ds.target), []).append(name)
    tasks: list[Task] = []
    for (agent, target), names in sorted(stored.items()):
        tasks.append(Task("verify", agent, target, datasets=tuple(names)))
        tasks.append(Task("prune", agent, target, datasets=tuple(names)))
        tasks.extend(
            Task("replicate", agent, target, to_target=to, datasets=tuple(names))
            for to in m.replicate.get(target, [])
        )
    tasks.extend(
        Task("drill", ds.agent, ds.target, dataset=name)
        for name, ds in sorted(cfg.datasets.items())
    )
    return tasks


def with_replica_upkeep(tasks: list[Task]) -> list[Task]:
    """``tasks`` plus a verify and a prune of every replica target, by the agent that
    replicates to it, over the datasets copied there (pure): a replica is checked and
    expired by its own tier like any target. A replica that is also a primary target of
    that agent gets its datasets added to the existing task instead, so one job checks
    or prunes one target. Appended, so the keys of the other tasks do not move."""
    out = list(tasks)
    for kind in ("verify", "prune"):
        for task in tasks:
            if task.kind != "replicate":
                continue
            at = next(
                (
                    i
                    for i, t in enumerate(out)
                    if t.kind == kind and (t.agent, t.target) == (task.agent, task.to_target)
                ),
                None,
            )
            if at is None:
                out.append(Task(kind, task.agent, task.to_target, datasets=task.datasets))
            else:
                merged = tuple(sorted({*out[at].datasets, *task.datasets}))
                out[at] = Task(kind, task.agent, task.to_target, datasets=merged)
    return out


def tier_of(backup_id: str, dataset: str, recorded: Tier | None = None) -> Tier:
    """The retention tier of a backup: the catalog's (``recorded``), else from its
    scheduled job id, else ``daily``."""
    if recorded is not None:
        return recorded
    head = f"sched-{dataset}-"
    if backup_id.startswith(head):
        tier = backup_id[len(head) :].split("-", 1)[0]
        if tier in get_args(Tier):
            return tier  # type: ignore[return-value]
    return "daily"


def known_tier(value: str | None) -> Tier | None:
    """``value`` if it names a tier (a catalog column read back as text), else None."""
    return value if value in get_args(Tier) else None  # type: ignore[return-value]


def summarize(ev: Event) -> str:
    """One line for ``drill report`` and the catalog."""
    if isinstance(ev, VerifyCompleted):
        if ev.damaged:
            return f"{ev.damaged} damaged object(s): {', '.join(ev.damaged_objects[:3])}"
        return f"{ev.backups} backups, {ev.packs_read}/{ev.packs} packs read, no damage"
    if isinstance(ev, PruneCompleted):
        dry = "would forget" if ev.dry_run else "forgot"
        text = f"{dry} {len(ev.forgotten)} backup(s), {ev.packs_removed} pack(s) removed"
        if ev.locked:
            text += f", {ev.locked} Object-Locked pack(s) kept"
        return text + (f"; deferred: {ev.deferred}" if ev.deferred else "")
    if isinstance(ev, ReplicateCompleted):
        behind = {d: v for d, v in ev.lag_s.items() if v}
        lag = ", ".join(f"{d} {v:.0f}s behind" for d, v in sorted(behind.items())) or "in sync"
        return f"copied {ev.copied} object(s) to {ev.to_target}; {lag}"
    if isinstance(ev, DrillCompleted):
        return "; ".join(f"{c.name}: {'ok' if c.ok else 'FAILED'} ({c.detail})" for c in ev.checks)
    if isinstance(ev, JobFailed):
        return f"{ev.code}: {ev.message}"
    return ""
