"""Alert rules and the alert state machine: pure functions over plain values.

Deciding *whether* something is wrong is kept apart from reading the catalog and from
sending notifications (``alerter.py``, ``alert_sinks.py``), so every rule and every
transition is tested with plain values and a fixed ``now``.

A rule returns a :class:`Finding` ("this is wrong right now") or None. :func:`step`
turns the findings of one evaluation into state: a finding whose fingerprint is not
firing yet starts an alert; a firing alert without a finding resolves. Only those two
transitions are notified, so an alert that keeps firing is announced once, and the same
problem seen twice in one evaluation is one alert (fingerprint = rule, dataset, target).

Rules:

- ``backup_failed``: the newest backup job of a dataset failed after its newest
  successful backup; resolves when a later backup succeeds.
- ``backup_missing``: the dataset has schedules, and no backup succeeded since the
  newest scheduled time that is more than the grace period ago. A dataset that never
  had a backup is pending, not missing, while that time is older than its first
  appearance in the config (``first_seen``): a fresh install does not alert at once.
- ``duration_anomaly``: the newest backup took more than ``factor`` × the average of the
  previous ones of the same type (a weekly full is not compared with daily incrementals),
  looking at up to :data:`DURATION_WINDOW` of them and only when there are at least
  :data:`DURATION_MIN_HISTORY`.
- ``verification_failed``, ``replication_lag``, ``storage_low``: take their measurements
  as arguments; :func:`evaluate` does not call them. ``coordinator/status.py`` calls
  ``replication_lag`` (catalog, per dataset × replica target), ``storage_low`` (per
  agent × target, from heartbeats; ``dataset`` holds the agent's name), and the two
  below, and the alerter adds those findings.
- ``heartbeat_lost``: no heartbeat from an agent for :data:`HEARTBEATS_MISSED` of its
  intervals (``dataset`` holds the agent's name); resolves with the next heartbeat.
- ``not_compliant``: a dataset's 3-2-1 evaluation has reasons (coordinator/compliance.py).
- ``verify_failed``: the newest scheduled verify of a target found damage (or failed);
  one alert per dataset stored there; resolves when a later verify passes.
- ``drill_failed``: the newest restore drill of a dataset failed; resolves when a later
  drill passes. Both are fed by ``coordinator/maintenance.py`` from the catalog.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from coordinator.schedule import FireTimes
from shared.config.coordinator import AlertsConfig, ScheduleConfig
from shared.wire.monitoring import Alert

Severity = Literal["critical", "warning"]
DURATION_WINDOW = 5
DURATION_MIN_HISTORY = 3
STORAGE_MIN_FREE = 0.20
REPLICATION_MAX_LAG_S = 3600.0
HEARTBEATS_MISSED = 3


@dataclass(frozen=True)
class Finding:
    """One rule that holds right now for one dataset (and target)."""

    rule: str
    dataset: str
    severity: Severity
    summary: str
    description: str = ""
    target: str | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.dataset, self.target)


def fingerprint(rule: str, dataset: str, target: str | None = None) -> str:
    return f"{rule}/{dataset}/{target or ''}"


@dataclass(frozen=True)
class RecentBackup:
    backup_type: str
    duration_s: float


@dataclass(frozen=True)
class DatasetSnapshot:
    """What the rules know about one dataset at one moment (read from the catalog)."""

    dataset: str
    target: str
    schedules: Sequence[ScheduleConfig] = ()
    last_success: datetime | None = None  # finished_at of the newest successful backup
    last_failure: datetime | None = None  # when the newest failed backup job failed
    failure: str = ""  # that job's id, code and message
    recent: Sequence[RecentBackup] = ()  # successful backups, newest first
    first_seen: datetime | None = None  # first appearance in the config (None: unknown)


# --- rules -----------------------------------------------------------------------------


def backup_failed(ds: DatasetSnapshot) -> Finding | None:
    if ds.last_failure is None:
        return None
    if ds.last_success is not None and ds.last_success >= ds.last_failure:
        return None
    return Finding(
        rule="backup_failed",
        dataset=ds.dataset,
        severity="critical",
        summary=f"backup of {ds.dataset} failed",
        description=f"failed at {ds.last_failure.isoformat()}: {ds.failure}".rstrip(": "),
    )


def last_due(
    schedules: Iterable[ScheduleConfig], before: datetime, times: FireTimes | None = None
) -> datetime | None:
    """The newest fire time at or before ``before`` over all ``schedules`` (UTC).
    ``times`` shares the croniter work between datasets on the same schedules."""
    times = times or FireTimes()
    return max((times.prev(s, before) for s in schedules), default=None)


def backup_missing(
    ds: DatasetSnapshot, now: datetime, grace_s: float, times: FireTimes | None = None
) -> Finding | None:
    due = last_due(ds.schedules, now - timedelta(seconds=grace_s), times)
    if due is None or (ds.last_success is not None and ds.last_success >= due):
        return None
    if ds.last_success is None and ds.first_seen is not None and due < ds.first_seen:
        return None  # pending: its first scheduled run plus grace is still ahead
    since = ds.last_success.isoformat() if ds.last_success else "ever"
    return Finding(
        rule="backup_missing",
        dataset=ds.dataset,
        severity="critical",
        summary=f"no successful backup of {ds.dataset} since {since}",
        description=(
            f"a backup was scheduled at {due.isoformat()} and none succeeded within "
            f"the {grace_s:.0f}s grace period"
        ),
    )


def duration_anomaly(
    dataset: str,
    recent: Sequence[RecentBackup],
    factor: float,
    *,
    window: int = DURATION_WINDOW,
    min_history: int = DURATION_MIN_HISTORY,
) -> Finding | None:
    """``recent``: successful backups, newest first."""
    if not recent:
        return None
    last = recent[0]
    previous = [b.duration_s for b in recent[1:] if b.backup_type == last.backup_type][:window]
    if len(previous) < max(min_history, 3):
        return None
    average = sum(previous) / len(previous)
    if last.duration_s <= factor * average:
        return None
    return Finding(
        rule="duration_anomaly",
        dataset=dataset,
        severity="warning",
        summary=f"last {last.backup_type} backup of {dataset} took {last.duration_s:.0f}s",
        description=(
            f"more than {factor:g}× the {average:.1f}s average of the previous "
            f"{len(previous)} {last.backup_type} backups"
        ),
    )


def verification_failed(
    dataset: str, target: str, ok: bool | None, detail: str = ""
) -> Finding | None:
    """``ok``: the newest verification of the dataset's backups on ``target`` (None: never
    verified, which is not a failure)."""
    if ok is None or ok:
        return None
    return Finding(
        rule="verification_failed",
        dataset=dataset,
        target=target,
        severity="critical",
        summary=f"verification of {dataset} on {target} failed",
        description=detail,
    )


def replication_lag(
    dataset: str, target: str, lag_s: float | None, max_lag_s: float = REPLICATION_MAX_LAG_S
) -> Finding | None:
    """``lag_s``: age of the oldest backup not yet copied to ``target`` (None: unknown)."""
    if lag_s is None or lag_s <= max_lag_s:
        return None
    return Finding(
        rule="replication_lag",
        dataset=dataset,
        target=target,
        severity="warning",
        summary=f"replication of {dataset} to {target} is {lag_s:.0f}s behind",
        description=f"more than the allowed {max_lag_s:.0f}s",
    )


def storage_low(
    dataset: str, target: str, free_ratio: float | None, min_free: float = STORAGE_MIN_FREE
) -> Finding | None:
    """``free_ratio``: free space of ``target`` as a fraction 0…1 as ``df`` counts it,
    available / (used + available) (coordinator/overview.py ``free_ratio``; None:
    unknown, as for object stores without quotas). The summary shows 100 − df's Use%
    (which df rounds up), so it never reads "20 % free" for a target under 20 %."""
    if free_ratio is None or free_ratio >= min_free:
        return None
    shown = math.floor(round(free_ratio * 100, 6))  # round(): no 28.999… from float noise
    return Finding(
        rule="storage_low",
        dataset=dataset,
        target=target,
        severity="warning",
        summary=f"target {target} of {dataset} has {shown}% free",
        description=f"less than {min_free:.0%} free",
    )


def heartbeat_lost(
    agent: str, last_seen: datetime | None, interval_s: float, now: datetime, since: datetime
) -> Finding | None:
    """``last_seen``: when the agent's newest heartbeat arrived (None: none since
    ``since``, when the coordinator started listening)."""
    limit = timedelta(seconds=HEARTBEATS_MISSED * interval_s)
    if now - (last_seen or since) <= limit:
        return None
    seen = f"last heartbeat at {last_seen.isoformat()}" if last_seen else "no heartbeat yet"
    return Finding(
        rule="heartbeat_lost",
        dataset=agent,
        severity="critical",
        summary=f"agent {agent} is silent ({seen})",
        description=(
            f"no heartbeat for more than {HEARTBEATS_MISSED} × {interval_s:g}s: the agent is "
            "down, cannot reach NATS, or its clock is far off"
        ),
    )


def not_compliant(dataset: str, reasons: Sequence[str]) -> Finding | None:
    """``reasons``: the dataset's 3-2-1 shortfalls (empty: compliant or unknown)."""
    if not reasons:
        return None
    return Finding(
        rule="not_compliant",
        dataset=dataset,
        severity="warning",
        summary=f"{dataset} does not meet 3-2-1: {', '.join(reasons)}",
        description="3 copies (production counts), on 2 media, 1 offsite",
    )


def verify_failed(
    dataset: str, target: str, passed: bool | None, detail: str = ""
) -> Finding | None:
    """``passed``: the outcome of the newest verify of ``target`` (None: never verified)."""
    if passed is None or passed:
        return None
    return Finding(
        rule="verify_failed",
        dataset=dataset,
        target=target,
        severity="critical",
        summary=f"verify of target {target} holding {dataset} failed",
        description=detail,
    )


def drill_failed(dataset: str, passed: bool | None, detail: str = "") -> Finding | None:
    """``passed``: the outcome of the dataset's newest restore drill (None: none yet)."""
    if passed is None or passed:
        return None
    return Finding(
        rule="drill_failed",
        dataset=dataset,
        severity="critical",
        summary=f"restore drill of {dataset} failed",
        description=detail,
    )


def evaluate(
    snapshots: Iterable[DatasetSnapshot], cfg: AlertsConfig, now: datetime
) -> list[Finding]:
    """Every rule whose data exists today, over every dataset."""
    out: list[Finding] = []
    times = FireTimes()  # one croniter call per distinct schedule, not per dataset
    for ds in snapshots:
        found = (
            backup_failed(ds),
            backup_missing(ds, now, cfg.missing_grace_s, times),
            duration_anomaly(ds.dataset, ds.recent, cfg.duration_factor),
        )
        out.extend(f for f in found if f is not None)
    return out


# --- state -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertState:
    """The alerts firing now, by fingerprint. Resolved alerts are dropped: if the same
    problem comes back it is a new alert with a new start time."""

    firing: Mapping[str, Alert] = field(default_factory=dict)


def step(
    state: AlertState, findings: Iterable[Finding], now: datetime, *, coordinator: str = ""
) -> tuple[AlertState, list[Alert]]:
    """The next state, and the alerts that started firing or resolved at ``now``."""
    current: dict[str, Finding] = {}
    for f in findings:
        current.setdefault(f.fingerprint, f)
    firing: dict[str, Alert] = {}
    transitions: list[Alert] = []
    for fp, f in current.items():
        old = state.firing.get(fp)
        if old is not None:
            firing[fp] = old  # still firing: no new notification
            continue
        new = Alert(
            status="firing",
            rule=f.rule,
            dataset=f.dataset,
            target=f.target,
            severity=f.severity,
            fingerprint=fp,
            summary=f.summary,
            description=f.description,
            starts_at=now,
            coordinator=coordinator,
        )
        firing[fp] = new
        transitions.append(new)
    for fp, old in state.firing.items():
        if fp not in current:
            transitions.append(msgspec.structs.replace(old, status="resolved", ends_at=now))
    return AlertState(firing=firing), transitions
