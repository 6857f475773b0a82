"""The strategy's validation checklist, computed: one verdict per line with its evidence.

The lines (``CheckLine.name``), in the strategy's order:

- ``backups``: every dataset has a backup and its newest backup job did not fail.
- ``coverage``: all discovered data is covered (agents' inventories, coordinator/coverage).
- ``windows``: the newest scheduled runs stayed inside their maintenance windows.
- ``keys``: each agent proved lately that its key opens each target's repository
  (``KeyCheck`` in its heartbeat, agent/target_health.py).
- ``replication``: each dataset's copy on each replica target lags less than
  :data:`coordinator.alerts.REPLICATION_MAX_LAG_S` (the ``replication_lag`` alert's limit).
- ``compliance``: each dataset is 3-2-1 compliant (coordinator/compliance.py).
- ``drill``: each backed-up dataset's newest restore drill within :data:`DRILL_MAX_AGE`
  passed (a dataset without one fails: the strategy asks for a monthly drill).
- ``verify``: the newest verify of each target passed.
- ``storage``: each target has more free space than ``alerts.storage_min_free`` (as
  ``df`` counts it); targets that report no space (object stores) are not counted.

``unknown`` means there is no evidence either way (no inventory yet, no window
configured, a key not checked yet, a target never verified): not a failure, but not a
proof. A line fails when any of its items fails, else is unknown when any item is
unknown (``storage``: when no item could be measured), else passes.

Pure functions of the status reply and the maintenance results (tested with plain
values); :class:`Checklist` does the two reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from coordinator import alerts
from coordinator.catalog.base import Catalog
from shared.config.coordinator import CoordinatorConfig
from shared.vocab import utcnow
from shared.wire.api import ApiReply
from shared.wire.check import CheckItem, CheckLine, CheckReport, CheckRequest, Verdict
from shared.wire.records import MaintenanceRecord
from shared.wire.status import DatasetStatus, StatusReply

DRILL_MAX_AGE = timedelta(days=35)
# Maintenance results read per check (newest first); beyond them a dataset counts as
# never drilled. Enough for a monthly drill of every dataset of a large estate.
DRILL_SCAN_MIN = 2000
VERIFY_SCAN = 1000
ALL_DATASETS = 1 << 30  # the status page size that covers every dataset
# Failing and unknown items listed per line at most (the counts cover all): keeps the
# reply well under NATS's 1 MiB message limit on a large estate.
MAX_ITEMS = 200

StatusFn = Callable[..., Awaitable[StatusReply]]


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC") if t else "never"


def _age(now: datetime, t: datetime) -> str:
    s = max((now - t).total_seconds(), 0.0)
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    if s < 172800:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.1f} days ago"


def line(
    name: str,
    title: str,
    items: Sequence[CheckItem],
    *,
    passed_items: int,
    empty: str,
    summary: str = "",
    unknown_counts: bool = True,
) -> CheckLine:
    """A line from its items: fail if any fails, else unknown if any is unknown (or
    there are none; ``unknown_counts`` False: only when none passed), else pass."""
    by = {v: [i for i in items if i.status == v] for v in ("fail", "unknown", "pass")}
    status: Verdict
    if by["fail"]:
        status = "fail"
    elif not items or (by["unknown"] and (unknown_counts or not by["pass"])):
        status = "unknown"
    else:
        status = "pass"
    if not items:
        evidence = empty
    else:
        counts = ", ".join(f"{len(by[v])} {v}" for v in ("pass", "fail", "unknown") if by[v])
        worst = by["fail"] or by["unknown"] or by["pass"]  # the first that tells most
        shown = f"; {worst[0].subject}: {worst[0].evidence}"
        evidence = f"{summary + ': ' if summary else ''}{counts}{shown}"
    return CheckLine(
        name=name,
        title=title,
        status=status,
        evidence=evidence,
        passed=len(by["pass"]),
        failed=len(by["fail"]),
        unknown=len(by["unknown"]),
        items=(by["fail"] + by["unknown"])[:MAX_ITEMS] + by["pass"][: max(passed_items, 0)],
    )


def failing(d: DatasetStatus) -> bool:
    """The dataset's newest backup job failed (newer than its newest backup)."""
    f = d.last_failure
    if f is None or f.job_kind != "backup":
        return False
    return d.last_backup is None or f.updated_at > d.last_backup.finished_at


def backup_items(st: StatusReply, now: datetime) -> list[CheckItem]:
    out = []
    for d in st.datasets:
        if failing(d):
            assert d.last_failure is not None
            why = " ".join((d.last_failure.error_message or "failed").split())[:200]
            out.append(CheckItem(subject=d.dataset, status="fail", evidence=f"failed: {why}"))
        elif d.last_backup is not None:
            at = d.last_backup.finished_at
            out.append(CheckItem(subject=d.dataset, status="pass", evidence=f"{_age(now, at)}"))
        elif d.pending:
            out.append(CheckItem(subject=d.dataset, status="unknown", evidence="pending: not due"))
        else:
            out.append(CheckItem(subject=d.dataset, status="fail", evidence="no backup"))
    return out


def coverage_line(st: StatusReply, passed_items: int) -> CheckLine:
    title = "all discovered data is covered"
    if not st.inventories:
        return CheckLine(
            name="coverage",
            title=title,
            status="unknown",
            evidence="no agent has sent an inventory of its host yet",
        )
    items = [
        CheckItem(
            subject=f"{u.agent}/{u.kind}",
            status="fail",
            evidence=f"{u.key} not backed up{' (' + u.detail + ')' if u.detail else ''}",
        )
        for u in st.unprotected
        if not u.ignored
    ]
    ignored = sum(1 for u in st.unprotected if u.ignored)
    evidence = f"{st.inventories} host inventories, {st.unprotected_total} unprotected item(s)"
    evidence += f", {ignored} ignored" if ignored else ""
    return CheckLine(
        name="coverage",
        title=title,
        status="fail" if st.unprotected_total or items else "pass",
        evidence=evidence,
        failed=max(st.unprotected_total, len(items)),
        items=items,
    )


def window_items(st: StatusReply) -> list[CheckItem]:
    out = []
    for d in st.datasets:
        w = d.window
        if w is None:
            continue
        where = f"{w.schedule} window {w.window}"
        if w.exceeded:
            over = f"{w.exceeded_s / 60:.0f} min" if w.exceeded_s >= 60 else f"{w.exceeded_s:.0f} s"
            verb = "still running" if w.running else "finished"
            out.append(
                CheckItem(subject=d.dataset, status="fail", evidence=f"{where}: {verb} {over} late")
            )
        else:
            out.append(CheckItem(subject=d.dataset, status="pass", evidence=f"{where}: inside"))
    return out


def key_items(st: StatusReply, now: datetime) -> list[CheckItem]:
    lost = {a.agent for a in st.agents if a.lost}
    out = []
    for t in st.targets:
        subject = f"{t.agent}/{t.target}"
        kc = t.key_check
        if t.agent in lost:
            out.append(CheckItem(subject=subject, status="unknown", evidence="agent is silent"))
        elif kc is None:
            out.append(
                CheckItem(
                    subject=subject,
                    status="unknown",
                    evidence="no key check reported (not checked yet, or an older agent)",
                )
            )
        else:
            status: Verdict = "pass" if kc.ok else "fail" if kc.ok is False else "unknown"
            when = f" ({_age(now, kc.at)})" if kc.at else ""
            kind = "write-only key: " if kc.write_only and "write-only" not in kc.detail else ""
            out.append(
                CheckItem(subject=subject, status=status, evidence=f"{kind}{kc.detail}{when}")
            )
    return out


def replication_items(st: StatusReply, max_lag_s: float) -> list[CheckItem]:
    out = []
    for d in st.datasets:
        for c in d.targets:
            if c.primary or c.lag_s is None:
                continue
            ok = c.lag_s <= max_lag_s
            out.append(
                CheckItem(
                    subject=f"{d.dataset}@{c.target}",
                    status="pass" if ok else "fail",
                    evidence=f"lag {c.lag_s / 60:.0f} min (limit {max_lag_s / 60:.0f} min)",
                )
            )
    return out


def compliance_items(st: StatusReply) -> list[CheckItem]:
    out = []
    for d in st.datasets:
        c = d.compliance
        if d.pending or c is None:
            why = "pending its first backup" if d.pending else "not evaluated"
            out.append(CheckItem(subject=d.dataset, status="unknown", evidence=why))
            continue
        facts = f"{c.copies} copies, {len(c.media)} media, {c.offsite} offsite"
        reasons = f": {'; '.join(c.reasons)}" if c.reasons else ""
        status: Verdict = "pass" if c.compliant else "fail" if c.compliant is False else "unknown"
        out.append(CheckItem(subject=d.dataset, status=status, evidence=f"{facts}{reasons}"))
    return out


def drill_items(
    st: StatusReply, drills: Iterable[MaintenanceRecord], now: datetime
) -> list[CheckItem]:
    newest: dict[str, MaintenanceRecord] = {}
    for r in drills:  # newest first
        if r.finished_at >= now - DRILL_MAX_AGE:
            newest.setdefault(r.dataset, r)
    out = []
    for d in st.datasets:
        found = newest.get(d.dataset)
        if found is None:
            if d.last_backup is None:
                continue  # nothing to drill yet: the backups line says so
            days = DRILL_MAX_AGE.days
            out.append(
                CheckItem(subject=d.dataset, status="fail", evidence=f"no drill in {days} days")
            )
            continue
        r = found
        rto = f", RTO {r.rto_s:.0f} s" if r.rto_s is not None else ""
        evidence = f"{r.outcome} {_age(now, r.finished_at)}{rto}"
        if r.outcome != "passed" and r.summary:
            evidence += f": {' '.join(r.summary.split())[:200]}"
        status: Verdict = "pass" if r.outcome == "passed" else "fail"
        out.append(CheckItem(subject=d.dataset, status=status, evidence=evidence))
    return out


def verify_items(
    st: StatusReply, verifies: Iterable[MaintenanceRecord], now: datetime
) -> list[CheckItem]:
    newest: dict[str, MaintenanceRecord] = {}
    for r in verifies:  # newest first
        newest.setdefault(r.target, r)
    targets = {c.target for d in st.datasets for c in d.targets} | {d.target for d in st.datasets}
    out = []
    for name in sorted(targets | set(newest)):
        seen = newest.get(name)
        if seen is None:
            out.append(CheckItem(subject=name, status="unknown", evidence="never verified"))
            continue
        r = seen
        evidence = f"{r.outcome} {_age(now, r.finished_at)}"
        if r.summary:
            evidence += f": {' '.join(r.summary.split())[:200]}"
        status: Verdict = "pass" if r.outcome == "passed" else "fail"
        out.append(CheckItem(subject=name, status=status, evidence=evidence))
    return out


def storage_items(st: StatusReply, min_free: float) -> list[CheckItem]:
    out = []
    for t in st.targets:
        subject = f"{t.agent}/{t.target}"
        if t.used_percent is None:
            out.append(CheckItem(subject=subject, status="unknown", evidence="no space figures"))
            continue
        free = 100.0 - t.used_percent
        ok = free / 100.0 >= min_free
        out.append(
            CheckItem(
                subject=subject,
                status="pass" if ok else "fail",
                evidence=f"{free:.1f} % free (minimum {min_free * 100:.0f} %)",
            )
        )
    return out


def evaluate(
    st: StatusReply,
    drills: Sequence[MaintenanceRecord],
    verifies: Sequence[MaintenanceRecord],
    *,
    now: datetime,
    min_free: float = alerts.STORAGE_MIN_FREE,
    max_lag_s: float = alerts.REPLICATION_MAX_LAG_S,
    passed_items: int = 20,
) -> CheckReport:
    """The checklist over ``st`` (a status reply covering every dataset) and the
    maintenance results (newest first)."""
    n = passed_items
    lines = [
        line(
            "backups",
            "every dataset has a recent backup",
            backup_items(st, now),
            passed_items=n,
            empty="no dataset configured",
            summary=f"{st.datasets_total} dataset(s)",
        ),
        coverage_line(st, n),
        line(
            "windows",
            "backups complete within their maintenance windows",
            window_items(st),
            passed_items=n,
            empty='no schedule has a window (window = "02:00-04:00")',
        ),
        line(
            "keys",
            "encryption keys are accessible and working",
            key_items(st, now),
            passed_items=n,
            empty="no agent has reported a target yet",
        ),
        line(
            "replication",
            "remote replication is functioning",
            replication_items(st, max_lag_s),
            passed_items=n,
            empty="no replica target measured (configure [maintenance] replicate)",
        ),
        line(
            "compliance",
            "3-2-1 compliant (3 copies, 2 media, 1 offsite)",
            compliance_items(st),
            passed_items=n,
            empty="no dataset configured",
        ),
        line(
            "drill",
            f"last restore drill passed within {DRILL_MAX_AGE.days} days",
            drill_items(st, drills, now),
            passed_items=n,
            empty="no dataset has a backup to drill yet",
        ),
        line(
            "verify",
            "last verify passed",
            verify_items(st, verifies, now),
            passed_items=n,
            empty="no target to verify",
        ),
        line(
            "storage",
            f"storage over {min_free * 100:.0f} % free",
            storage_items(st, min_free),
            passed_items=n,
            empty="no agent has reported a target yet",
            unknown_counts=False,
        ),
    ]
    status: Verdict = "pass"
    if any(x.status == "fail" for x in lines):
        status = "fail"
    elif any(x.status == "unknown" for x in lines):
        status = "unknown"
    return CheckReport(status=status, coordinator=st.coordinator, at=now, lines=lines)


def ours(st: StatusReply, cfg: CoordinatorConfig) -> StatusReply:
    """The status with only the agents this coordinator gives jobs to (its datasets' and
    the maintenance agent): a decommissioned agent's last heartbeat, kept on NATS for
    days, or another coordinator's agents on a shared NATS are not this estate's."""
    agents = {d.agent for d in cfg.datasets.values()}
    if cfg.maintenance is not None and cfg.maintenance.agent:
        agents.add(cfg.maintenance.agent)
    return msgspec.structs.replace(
        st,
        agents=[a for a in st.agents if a.agent in agents],
        targets=[t for t in st.targets if t.agent in agents],
    )


class Checklist:
    """The ``check`` verb and ``GET /api/v1/check``: one status read over every dataset
    and two reads of maintenance results."""

    def __init__(
        self,
        cfg: CoordinatorConfig,
        catalog: Catalog,
        status: StatusFn,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.status = status
        self.clock = clock

    async def report(self, passed_items: int = 20) -> CheckReport:
        st = ours(await self.status(limit=ALL_DATASETS, offset=0), self.cfg)
        scan = max(DRILL_SCAN_MIN, 3 * len(self.cfg.datasets))
        drills = await self.catalog.list_maintenance(kind="drill", limit=scan)
        verifies = await self.catalog.list_maintenance(kind="verify", limit=VERIFY_SCAN)
        return evaluate(
            st,
            drills,
            verifies,
            now=self.clock(),
            min_free=self.cfg.alerts.storage_min_free,
            passed_items=passed_items,
        )

    async def request(self, req: CheckRequest) -> ApiReply:
        return await self.report(req.passed_items)


# --- the HTTP document (``GET /api/v1/check``) --------------------------------------------


def public(report: CheckReport, redact: Callable[[str], str]) -> CheckReport:
    """``report`` for an unauthenticated reader: every evidence text through ``redact``
    (failed jobs' messages and key checks may name paths and hosts)."""
    lines = [
        msgspec.structs.replace(
            x,
            evidence=redact(x.evidence),
            items=[msgspec.structs.replace(i, evidence=redact(i.evidence)) for i in x.items],
        )
        for x in report.lines
    ]
    return msgspec.structs.replace(report, lines=lines)


def with_check_path(doc: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The OpenAPI document ``doc`` with ``GET {prefix}/check`` and its schema added."""
    (schema,), components = msgspec.json.schema_components(
        [CheckReport], ref_template="#/components/schemas/{name}"
    )
    doc["components"]["schemas"].update(components)
    doc["paths"][f"{prefix}/check"] = {
        "get": {
            "operationId": "check",
            "summary": "The validation checklist: pass / fail / unknown with evidence",
            "responses": {
                "200": {
                    "description": "the checklist (evidence redacted)",
                    "content": {"application/json": {"schema": schema}},
                }
            },
        }
    }
    return doc
