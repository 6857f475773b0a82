"""The agents' events, folded into the catalog: one handler per event type.

Events are read from the coordinator's durable consumer and acked only after the
catalog write, so a coordinator crash replays them (every write here is idempotent).
Each recorded event gets one span in the trace of its job (the traceparent came with
it); progress ticks are not recorded, so they get none.

An event counts only if it is authentic (:meth:`EventRecorder.authentic`): from the
agent it names, on that agent's own subject, about a job this coordinator gave that
agent. Maintenance results (verify, prune, replicate, drill, and a maintenance job's
failure) land in the catalog's ``maintenance`` table, which feeds the
``verify_failed`` and ``drill_failed`` alerts; a prune's deletes and a repository
tool's local actions leave audit entries.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.js.errors import APIError

from coordinator.audit import AuditTrail
from coordinator.catalog.base import Catalog
from coordinator.maintenance import KINDS, summarize
from shared import tracing
from shared.wire.events import (
    BackupCompleted,
    DrillCompleted,
    Event,
    JobFailed,
    JobProgress,
    JobStarted,
    LocalAction,
    PruneCompleted,
    ReplicateCompleted,
    RestoreCompleted,
    VerifyCompleted,
    event_decoder,
    event_kind,
)
from shared.wire.records import BackupRecord, MaintenanceRecord

log = logging.getLogger(__name__)

Result = VerifyCompleted | PruneCompleted | ReplicateCompleted | DrillCompleted | JobFailed
_json = msgspec.json.Encoder()


class EventRecorder:
    """Records events; ``next_event_seq`` is the stream sequence after the last one."""

    def __init__(self, catalog: Catalog, audit: AuditTrail) -> None:
        self.catalog = catalog
        self.audit = audit
        self.next_event_seq = 0
        # called with each event after it is recorded (dead-man's pings: coordinator/pings.py)
        self.listeners: list[Callable[[Event], Awaitable[None]]] = []
        self.handlers: dict[type, Callable[[Any], Awaitable[object]]] = {
            JobStarted: self._started,
            JobProgress: self._progress,
            BackupCompleted: self._backup_completed,
            RestoreCompleted: self._restore_completed,
            JobFailed: self._failed,
            VerifyCompleted: self._result,
            PruneCompleted: self._prune_completed,
            ReplicateCompleted: self._result,
            DrillCompleted: self._result,
            LocalAction: self.audit.record_local,
        }

    async def consume(self, sub: Any, on_consumer_lost: Callable[[], Awaitable[None]]) -> None:
        """Record what ``sub`` delivers, forever; ``on_consumer_lost`` puts a deleted
        consumer back (the coordinator's control-plane check)."""
        while True:
            try:
                msgs = await sub.fetch(50, timeout=2.0)
            except TimeoutError:
                continue
            except APIError as exc:  # the consumer was deleted under us: put it back
                log.error("events consumer failed (%s): checking streams and consumers", exc)
                await on_consumer_lost()
                continue
            for msg in msgs:
                try:
                    ev = event_decoder.decode(msg.data)
                except msgspec.DecodeError as exc:
                    log.error("dropping undecodable event on %s: %s", msg.subject, exc)
                    await msg.term()
                    continue
                if not await self.authentic(msg.subject, ev):
                    await msg.term()
                    continue
                with (
                    contextlib.nullcontext()
                    if isinstance(ev, JobProgress)
                    else tracing.span(
                        f"record {event_kind(ev)}",
                        scope="mosaic.coordinator",
                        context=tracing.extract(msg.headers),
                        attributes={"mosaic.job_id": ev.job_id, "mosaic.agent": ev.agent},
                    )
                ):
                    await self.record(ev)
                await msg.ack()
                self.next_event_seq = msg.metadata.sequence.stream + 1

    async def authentic(self, subject: str, ev: Event) -> bool:
        """An event counts only if it comes from the agent it names, on that agent's own
        subject (which NATS permissions restrict to that agent), about a job this
        coordinator gave that agent for that dataset. Otherwise one compromised agent
        could record backups, or failures, in another's name."""
        parts = subject.split(".")
        if len(parts) != 5 or parts[2] != ev.agent or parts[3] != ev.job_id:
            log.warning(
                "ignoring event on %s: it names agent %s, job %s", subject, ev.agent, ev.job_id
            )
            return False
        if isinstance(ev, JobProgress | LocalAction):
            return True  # a local action is no job of ours: the subject vouches for the agent
        job = await self.catalog.get_job(ev.job_id)
        if (
            job is None
            or job.agent != ev.agent
            or (isinstance(ev, BackupCompleted) and ev.dataset != job.dataset)
        ):
            log.warning(
                "ignoring %s event for job %s from agent %s: not that agent's job",
                event_kind(ev),
                ev.job_id,
                ev.agent,
            )
            return False
        return True

    async def record(self, ev: Event) -> None:
        handler = self.handlers.get(type(ev))
        if handler is None:  # a newer agent's event kind: nothing to record yet
            log.debug("no handler for %s event of job %s", event_kind(ev), ev.job_id)
            return
        await handler(ev)
        for listener in self.listeners:
            await listener(ev)

    # --- one handler per event type -----------------------------------------------------

    async def _started(self, ev: JobStarted) -> None:
        await self.catalog.update_job(ev.job_id, "running", ev.at)

    async def _progress(self, ev: JobProgress) -> None:
        """Progress is for watchers (the console, ``--wait``), not for the catalog."""

    async def _backup_completed(self, ev: BackupCompleted) -> None:
        s = ev.summary
        await self.catalog.record_backup(
            BackupRecord(
                backup_id=ev.backup_id,
                dataset=ev.dataset,
                agent=ev.agent,
                target=ev.target,
                backup_type=ev.backup_type,
                repository_id=ev.repository_id,
                started_at=ev.started_at,
                finished_at=ev.finished_at,
                files=s.files,
                bytes_read=s.bytes_read,
                bytes_new=s.bytes_new,
                bytes_stored=s.bytes_stored,
                duration_s=s.duration_s,
                tier=ev.tier,
            )
        )
        await self.catalog.update_job(
            ev.job_id, "completed", ev.finished_at, backup_id=ev.backup_id
        )

    async def _restore_completed(self, ev: RestoreCompleted) -> None:
        await self.catalog.update_job(ev.job_id, "completed", ev.at, backup_id=ev.backup_id)

    async def _failed(self, ev: JobFailed) -> None:
        log.warning("job %s failed: %s", ev.job_id, ev.message)
        await self.catalog.update_job(
            ev.job_id, "failed", ev.at, error_code=ev.code, error_message=ev.message
        )
        await self._result(ev)  # a maintenance job's failure is also its result

    async def _prune_completed(self, ev: PruneCompleted) -> None:
        await self._result(ev)
        if ev.forgotten and not ev.dry_run:
            await self.audit.record_prune(ev)  # deletes are audited with what went

    async def _result(self, ev: Result) -> None:
        """Store a maintenance result (or a maintenance job's failure) once it is found
        to answer what was ordered."""
        job = await self.catalog.get_job(ev.job_id)
        if job is None or job.job_kind not in KINDS:
            return  # a backup's or restore's failure: the jobs table says it all
        if isinstance(ev, JobFailed):
            passed, started = False, job.requested_at
        else:
            if ev.target != job.target or (
                isinstance(ev, DrillCompleted)
                and (ev.dataset != job.dataset or ev.backup_id != job.backup_id)
            ):
                log.warning(
                    "ignoring %s result of job %s: not what was ordered", job.job_kind, ev.job_id
                )
                return
            passed = not (
                (isinstance(ev, VerifyCompleted) and ev.damaged)
                or (isinstance(ev, DrillCompleted) and ev.outcome != "passed")
            )
            started = ev.started_at or job.requested_at
        if isinstance(ev, PruneCompleted) and not ev.dry_run and ev.forgotten:
            await self.catalog.forget_backups(ev.forgotten, target=ev.target)
        if isinstance(ev, ReplicateCompleted) and ev.backup_ids:
            await self.catalog.record_copies(ev.backup_ids, target=ev.to_target, at=ev.at)
        await self.catalog.record_maintenance(
            MaintenanceRecord(
                job_id=ev.job_id,
                kind=job.job_kind,
                agent=ev.agent,
                target=job.target,
                dataset=job.dataset,
                backup_id=job.backup_id,
                outcome="passed" if passed else "failed",
                started_at=started,
                finished_at=ev.at,
                rto_s=ev.rto_s if isinstance(ev, DrillCompleted) else None,
                rpo_s=ev.rpo_s if isinstance(ev, DrillCompleted) else None,
                summary=summarize(ev)[:1000],
                detail=_json.encode(ev).decode(),
            )
        )
        if not isinstance(ev, JobFailed):
            await self.catalog.update_job(ev.job_id, "completed", ev.at)
