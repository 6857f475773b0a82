"""Whole-host disaster-recovery drills: plan, send one drill per dataset in order, sum up.

The coordinator orchestrates (it never reads backup data): the plan
(``coordinator/host_drill_plan.py``) picks each dataset's backup and point in time from
the catalog; each dataset becomes an ordinary :class:`~shared.wire.jobs.DrillJob` sent
by the one dispatch path to the drilling agent, and the next one goes out only once the
previous one's result is in the catalog (databases come back first, as in a real
recovery, and the scratch space holds one dataset at a time). Every dataset's drill is
recorded as a ``drill`` maintenance result like any other (so ``drill report`` and the
``drill_failed`` alert see it); the host drill adds one ``host_drill`` result (its
``dataset`` is the host, its ``detail`` a :class:`~shared.wire.drills.HostDrillResult`
with the Markdown report) and a ``host_drill`` row in the jobs table, ``failed`` when
the drill failed, so ``status`` lists a failed host drill among its recent failures.

Host drills run one at a time, in the coordinator that accepted them; the scheduled
ones (``[maintenance] host_drill_cron``, every host in turn) fire on the active
coordinator only, under a job id per host and fire time, so a restart or fail-over
never runs one twice. A coordinator that dies mid-drill leaves its dataset drills
recorded, but no host result.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from coordinator import host_drill_plan as plan
from coordinator.alerts import Finding
from coordinator.catalog.base import Catalog
from coordinator.jobs import SCHEDULER
from coordinator.maintenance import token
from coordinator.schedule import collapse, due_runs
from coordinator.scheduler import Send
from shared.config.coordinator import CoordinatorConfig, MaintenanceConfig, ScheduleConfig
from shared.errors import MosaicError
from shared.vocab import utcnow
from shared.wire.api import ApiError, ApiReply
from shared.wire.drills import (
    HostDrillAccepted,
    HostDrillItem,
    HostDrillRequest,
    HostDrillResult,
    render_report,
)
from shared.wire.jobs import DrillJob
from shared.wire.records import JobRecord, MaintenanceRecord

log = logging.getLogger(__name__)

KIND = "host_drill"  # maintenance kind and job kind of a host drill
RULE = "host_drill_failed"
DRILL_TIMEOUT_S = 3 * 3600.0  # one dataset's drill; then it counts as failed
POLL_S = 0.5
HISTORY = 100_000
QUEUE = 64  # host drills waiting to run
_json = msgspec.json.Encoder()


class HostDrills:
    """Accepts, schedules and runs host drills; feeds the ``host_drill_failed`` alert.

    ``send`` is ``Dispatcher.dispatch``; ``agents`` the agents this coordinator serves
    (a drill may run only on one of them: their job consumers exist)."""

    def __init__(
        self,
        cfg: CoordinatorConfig,
        catalog: Catalog,
        send: Send,
        *,
        agents: Callable[[], set[str]],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self.m = cfg.maintenance or MaintenanceConfig()
        self.catalog = catalog
        self.send = send
        self.agents = agents
        self.clock = clock
        # (the plan, who asked) waiting for their turn; opened by run()
        self._in: MemoryObjectSendStream[tuple[HostDrillAccepted, str]] | None = None
        self.poll_s = POLL_S

    # --- accepting ----------------------------------------------------------------------

    async def start(self, req: HostDrillRequest) -> ApiReply:
        """``mosaic-backup drill host HOST``: plan now, run in turn, answer with the plan."""
        stamp = f"{utcnow():%Y%m%dT%H%M%SZ}"
        drill_id = token(KIND, req.host, stamp, random.randbytes(3).hex())
        return await self.accept(req, drill_id)

    async def accept(self, req: HostDrillRequest, drill_id: str) -> ApiReply:
        if self._in is None:
            return ApiError(code="unavailable", message="the coordinator is not running")
        got = await self.plan(req, drill_id)
        if isinstance(got, ApiError):
            return got
        now = utcnow()
        await self.catalog.record_job(
            JobRecord(
                job_id=drill_id,
                job_kind=KIND,
                dataset=req.host,
                agent=got.agent,
                target="",
                status="dispatched",
                requested_at=now,
                updated_at=now,
            )
        )
        try:
            self._in.send_nowait((got, req.requested_by))
        except anyio.WouldBlock:
            await self.catalog.update_job(drill_id, "failed", utcnow(), error_code="busy")
            return ApiError(code="busy", message=f"{QUEUE} host drills are waiting; retry later")
        return got

    async def plan(self, req: HostDrillRequest, drill_id: str) -> HostDrillAccepted | ApiError:
        members = plan.host_datasets(self.cfg, req.host)
        if not members:
            known = ", ".join(plan.hosts(self.cfg)) or "none configured"
            return ApiError(
                code="unknown_host",
                message=f"no dataset is backed up by agent '{req.host}' (hosts: {known})",
            )
        agent = req.agent or self.m.agent or req.host
        if agent not in self.agents():
            known = ", ".join(sorted(self.agents()))
            return ApiError(
                code="unknown_agent",
                message=f"agent '{agent}' gets no jobs from this coordinator (known: {known}); "
                "pick one with --agent",
            )
        now = self.clock()
        if req.pitr is not None and req.pitr > now:
            return ApiError(
                code="invalid",
                message=f"--pitr {req.pitr.isoformat()} is in the future; pick a past time",
            )
        found = [
            plan.Member(name, src, await self.catalog.list_backups(dataset=name, limit=HISTORY))
            for name, src in members
        ]
        point = req.pitr or plan.common_point(found)
        if point is None:
            return ApiError(
                code="no_backup",
                message=f"no dataset of host '{req.host}' has a backup to drill "
                "(run: mosaic-backup backup --dataset NAME)",
            )
        items = [
            msgspec.structs.replace(plan.choose(m, point), job_id=token(drill_id, str(i), m.name))
            for i, m in enumerate(found)
        ]
        return HostDrillAccepted(
            drill_id=drill_id, host=req.host, agent=agent, point=point, items=items
        )

    # --- running ------------------------------------------------------------------------

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Run accepted host drills one at a time, forever."""
        send, receive = anyio.create_memory_object_stream[tuple[HostDrillAccepted, str]](QUEUE)
        self._in = send
        task_status.started()
        try:
            with send, receive:
                async for accepted, who in receive:
                    try:
                        await self.execute(accepted, who)
                    except MosaicError as exc:  # the catalog or the bus: say so, go on
                        log.error("host drill %s broke off: %s", accepted.drill_id, exc)
                        with contextlib.suppress(MosaicError):  # logged just above
                            await self._finish_job(accepted.drill_id, False, str(exc))
        finally:
            self._in = None

    async def execute(self, acc: HostDrillAccepted, who: str) -> HostDrillResult:
        started, t0 = utcnow(), time.monotonic()
        await self.catalog.update_job(acc.drill_id, "running", started)
        items = [await self._one(acc, item, who) for item in acc.items]
        finished = utcnow()
        passed = all(i.outcome == "passed" for i in items)
        rpos = [i.rpo_s for i in items if i.rpo_s is not None]
        result = HostDrillResult(
            drill_id=acc.drill_id,
            host=acc.host,
            agent=acc.agent,
            point=acc.point,
            outcome="passed" if passed else "failed",
            started_at=started,
            finished_at=finished,
            rto_s=time.monotonic() - t0,
            rpo_s=max(rpos) if rpos else None,
            items=items,
            requested_by=who,
        )
        result = msgspec.structs.replace(result, report=render_report(result))
        await self.catalog.record_maintenance(
            MaintenanceRecord(
                job_id=acc.drill_id,
                kind=KIND,
                agent=acc.agent,
                target="",
                dataset=acc.host,
                outcome=result.outcome,
                started_at=started,
                finished_at=finished,
                rto_s=result.rto_s,
                rpo_s=result.rpo_s,
                summary=summary(result)[:1000],
                detail=_json.encode(result).decode(),
            )
        )
        await self._finish_job(acc.drill_id, passed, summary(result))
        return result

    async def _finish_job(self, drill_id: str, passed: bool, why: str) -> None:
        if passed:
            await self.catalog.update_job(drill_id, "completed", utcnow())
        else:
            await self.catalog.update_job(
                drill_id, "failed", utcnow(), error_code=RULE, error_message=why[:1000]
            )

    async def _one(self, acc: HostDrillAccepted, item: HostDrillItem, who: str) -> HostDrillItem:
        """Send one dataset's drill and wait for its result in the catalog."""
        if item.outcome == "skipped":
            return item
        job = DrillJob(
            job_id=item.job_id,
            dataset=item.dataset,
            agent=acc.agent,
            target=item.target,
            backup_id=item.backup_id,
            scratch=self.m.drill_scratch,
            newest_at=item.data_at,
            pitr=item.pitr,
            requested_at=utcnow(),
            requested_by=who,
        )
        reply = await self.send(job)
        if isinstance(reply, ApiError):
            return msgspec.structs.replace(item, outcome="failed", checks=reply.message)
        rec = await self._result(item)
        if rec is None:
            why = f"no result within {DRILL_TIMEOUT_S:g} s (is agent {acc.agent} running?)"
            return msgspec.structs.replace(item, outcome="failed", checks=why)
        return msgspec.structs.replace(
            item, outcome=rec.outcome, rto_s=rec.rto_s, checks=rec.summary
        )

    async def _result(self, item: HostDrillItem) -> MaintenanceRecord | None:
        with anyio.move_on_after(DRILL_TIMEOUT_S):
            while True:
                rows = await self.catalog.list_maintenance(
                    kind="drill", dataset=item.dataset, limit=20
                )
                found = next((r for r in rows if r.job_id == item.job_id), None)
                if found is not None:
                    return found
                await anyio.sleep(self.poll_s)
        return None

    # --- the quarterly schedule ---------------------------------------------------------

    async def schedule(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Every host in turn at each ``host_drill_cron`` run (the active coordinator)."""
        cron = self.m.host_drill_cron if self.cfg.maintenance is not None else ""
        task_status.started()
        if not cron:
            return
        sched = ScheduleConfig(
            cron=cron, timezone=self.m.timezone, backup_type="full", grace_s=self.m.grace_s
        )
        last = self.clock() - timedelta(seconds=self.m.grace_s)
        while True:
            now = self.clock()
            for run in collapse(due_runs({KIND: [sched]}, last, now)):
                if not run.missed:
                    await self._fire(run.fire_time)
            last = now
            await anyio.sleep(self.cfg.scheduler_interval_s)

    async def _fire(self, fire_time: datetime) -> None:
        for host in plan.hosts(self.cfg):
            drill_id = token(KIND, host, fire_time.strftime("%Y%m%dT%H%MZ"))
            if await self.catalog.get_job(drill_id) is not None:
                continue  # sent before a restart or by the previous active coordinator
            req = HostDrillRequest(host=host, requested_by=SCHEDULER)
            reply = await self.accept(req, drill_id)
            if isinstance(reply, ApiError):
                log.error("scheduled host drill of %s not run: %s", host, reply.message)

    # --- alerts -------------------------------------------------------------------------

    async def findings(self, now: datetime) -> list[Finding]:
        """``host_drill_failed`` per host whose newest host drill failed."""
        out: list[Finding] = []
        for host in plan.hosts(self.cfg):
            rows = await self.catalog.list_maintenance(kind=KIND, dataset=host, limit=1)
            if rows and rows[0].outcome != "passed":
                out.append(
                    Finding(
                        rule=RULE,
                        dataset=host,
                        severity="critical",
                        summary=f"disaster-recovery drill of host {host} failed",
                        description=rows[0].summary,
                    )
                )
        return out


def summary(r: HostDrillResult) -> str:
    """One line: outcome, RTO, RPO, each dataset's outcome."""
    rpo = "—" if r.rpo_s is None else f"{r.rpo_s:.1f}s"
    parts = ", ".join(f"{i.dataset}: {i.outcome}" for i in r.items)
    bad = "; ".join(f"{i.dataset}: {i.checks}" for i in r.items if i.outcome != "passed")
    line = f"{r.outcome}: RTO {r.rto_s:.1f}s, RPO {rpo} at {r.point.isoformat()} ({parts})"
    return f"{line}; {bad}" if bad else line
