"""The audit trail: who or what started backups and restores, and changed the policy.

Each entry is appended to the catalog's ``audit`` table first (the database refuses
UPDATE and DELETE on it), then published on ``mosaic.audit.<action>`` into the
``MOSAIC_AUDIT`` stream for any system that listens (a SIEM, a chat bot). The catalog
write comes first and must succeed: a job is dispatched only after its entry is stored,
so nothing the coordinator starts goes unrecorded. A failed publish is logged, not
fatal: the catalog holds the entry, and ``mosaic-backup audit`` reads it from there.

What is recorded (``action``; ``actor``):

- ``backup_requested`` / ``restore_requested``: an operator's request (``requested_by``
  of the API request), with dataset, backup id and job id; a restore's destination and
  paths go into ``detail``.
- ``backup_scheduled``: a scheduled run (actor ``scheduler``).
- ``drill_requested``: an operator's restore drill.
- ``verify_scheduled``, ``prune_scheduled`` (with how many backups it is to forget),
  ``replicate_scheduled``, ``drill_scheduled``: the maintenance schedules' jobs (actor
  ``scheduler``).

Every job entry is written by the one dispatch path (``coordinator/jobs/dispatch.py``)
before the job is published, under the id ``<action>:<job id>``, so a scheduled run
dispatched again after a fail-over leaves one line.
- ``backups_deleted``: a prune job's result, with every backup it forgot (actor: the
  agent that deleted them, carrying out the coordinator's retention decision).
- ``config_changed``: at start, the coordinator hashes its policy (datasets, schedules,
  retention, alerts, maintenance) and records the hash when it differs from the last one
  recorded, so every policy change leaves a line (actor: the coordinator's name).

- ``keys_rotated``, ``keys_rewrapped``, ``key_exported``, ``write_only_key_exported``,
  ``pruned``: a repository tool run on an agent's host with that agent's config (``repo
  keys …``, ``repo prune``), reported as a ``local_action`` event on the agent's own
  subject (actor: ``<user@host> (repo tool on agent <name>)``). The event waits in the
  events stream while the coordinator is down; a tool that cannot reach NATS says the
  change was not audited.
"""

from __future__ import annotations

import hashlib
import logging
import os

import msgspec
from nats.errors import Error as NatsError
from nats.js import api

from coordinator.catalog.base import Catalog
from coordinator.catalog.records import AuditEntry
from shared import replicas, subjects
from shared.bus import Bus
from shared.config.coordinator import CoordinatorConfig
from shared.vocab import utcnow
from shared.wire.events import LocalAction, PruneCompleted

log = logging.getLogger(__name__)

AUDIT_MAX_AGE_S = 400 * 86400.0  # a year and a month: the catalog keeps everything
CONFIG_CHANGED = "config_changed"


def policy_hash(cfg: CoordinatorConfig) -> str:
    """SHA-256 of what decides which backups happen and how long they stay.

    Connection settings (NATS URL, users, TLS files, catalog URL) are left out: moving
    the catalog is not a policy change, and the hash must never depend on secrets.
    """
    policy = {
        "datasets": cfg.datasets,
        "retention": cfg.retention,
        "alerts": cfg.alerts,
        "maintenance": cfg.maintenance,  # verify/prune/replicate/drill plans, target tiers
        "scheduler_interval_s": cfg.scheduler_interval_s,
    }
    return hashlib.sha256(msgspec.json.encode(policy, order="sorted")).hexdigest()


class AuditTrail:
    """Appends entries to the catalog and publishes them; one per coordinator."""

    def __init__(self, catalog: Catalog, *, bus: Bus | None = None) -> None:
        self.catalog = catalog
        self.bus = bus

    async def ensure_stream(self) -> None:
        assert self.bus is not None
        cfg = api.StreamConfig(
            name=subjects.AUDIT_STREAM,
            subjects=[subjects.audit_all()],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=AUDIT_MAX_AGE_S,
            duplicate_window=3600.0,
        )
        await replicas.ensure_stream(self.bus.js, cfg)  # R copies (shared/replicas.py)

    async def record(
        self,
        action: str,
        actor: str,
        *,
        entry_id: str | None = None,
        dataset: str | None = None,
        backup_id: str | None = None,
        job_id: str | None = None,
        detail: str = "",
    ) -> AuditEntry:
        entry = AuditEntry(
            entry_id=entry_id or f"{action}:{job_id or os.urandom(8).hex()}",
            at=utcnow(),
            action=subjects.check_token("audit action", action),
            actor=actor,
            dataset=dataset,
            backup_id=backup_id,
            job_id=job_id,
            detail=detail,
        )
        await self.catalog.append_audit(entry)
        if self.bus is not None:
            try:
                await self.bus.js.publish(
                    subjects.audit(action),
                    msgspec.json.encode(entry),
                    stream=subjects.AUDIT_STREAM,
                    headers={"Nats-Msg-Id": entry.entry_id},
                )
            except NatsError as exc:
                log.warning("audit entry %s stored, but not published: %r", entry.entry_id, exc)
        return entry

    async def record_prune(self, ev: PruneCompleted) -> AuditEntry:
        """Backups a prune job deleted (their manifests), with the agent that did it."""
        shown = ", ".join(ev.forgotten[:20]) + (" …" if len(ev.forgotten) > 20 else "")
        return await self.record(
            "backups_deleted",
            f"agent {ev.agent}",
            entry_id=f"backups_deleted:{ev.job_id}",
            job_id=ev.job_id,
            backup_id=ev.forgotten[0] if len(ev.forgotten) == 1 else None,
            detail=f"prune on target {ev.target} forgot {len(ev.forgotten)} backup(s): {shown}; "
            f"{ev.packs_removed} packs removed",
        )

    async def record_local(self, ev: LocalAction) -> AuditEntry:
        """A key change or prune a repository tool did beside an agent."""
        where = " ".join(
            part
            for part in (
                f"target {ev.target}" if ev.target else "",
                f"repository {ev.repository_id}" if ev.repository_id else "",
            )
            if part
        )
        return await self.record(
            ev.action,
            f"{ev.actor} (repo tool on agent {ev.agent})",
            entry_id=f"{ev.action}:{ev.job_id}",
            job_id=ev.job_id,
            detail=f"{where}: {ev.detail}" if where else ev.detail,
        )

    async def record_policy(self, cfg: CoordinatorConfig) -> AuditEntry | None:
        """Record the policy hash if it differs from the last recorded one."""
        digest = policy_hash(cfg)
        last = await self.catalog.list_audit(limit=1, action=CONFIG_CHANGED)
        if last and last[0].detail.startswith(f"policy sha256 {digest}"):
            return None
        before = last[0].detail.split(" ")[2][:12] if last else "none"
        return await self.record(
            CONFIG_CHANGED,
            cfg.name,
            entry_id=f"{CONFIG_CHANGED}:{digest}:{os.urandom(4).hex()}",
            detail=f"policy sha256 {digest} (was {before}); datasets: "
            + (", ".join(sorted(cfg.datasets)) or "none"),
        )
