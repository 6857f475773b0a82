"""Which handler runs which job: the ``{job type: handler}`` table and :func:`run_job`.

A handler is ``async def run_<kind>(ctx: JobContext, job: <Kind>Job) -> <Kind>Completed``;
it raises a :class:`~shared.errors.MosaicError` for a failure it can explain, and
:func:`run_job` turns that (or a bug) into a :class:`~shared.wire.events.JobFailed`.

To add a job kind:

1. define its job and its result event in ``shared/wire/jobs.py`` (add it to the
   ``Job`` union) and ``shared/wire/events.py``;
2. write its handler in a new module ``agent/jobs/<kind>.py``, using only what
   :class:`~agent.jobs.context.JobContext` offers;
3. add ``<Kind>Job: run_<kind>`` to :data:`HANDLERS` below.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.jobs.backup import run_backup
from agent.jobs.context import JobContext
from agent.jobs.drill import run_drill
from agent.jobs.prune import run_prune
from agent.jobs.replicate import run_replicate
from agent.jobs.restore import run_restore
from agent.jobs.verify import run_verify
from shared.errors import MosaicError
from shared.vocab import utcnow
from shared.wire.events import Event, JobFailed
from shared.wire.jobs import (
    BackupJob,
    DrillJob,
    Job,
    PruneJob,
    ReplicateJob,
    RestoreJob,
    VerifyJob,
    job_kind,
)

log = logging.getLogger(__name__)

# (ctx, job of the handler's own type) -> its result event; ``Any`` because a handler
# takes only its own job type, which a Callable over the whole union would refuse.
Handler = Callable[[JobContext, Any], Awaitable[Event]]

HANDLERS: dict[type[Job], Handler] = {
    BackupJob: run_backup,
    RestoreJob: run_restore,
    VerifyJob: run_verify,
    PruneJob: run_prune,
    ReplicateJob: run_replicate,
    DrillJob: run_drill,
}


async def run_job(ctx: JobContext, job: Job) -> Event:
    """Run ``job`` by its handler; its result event, or JobFailed when it failed.

    A job type without a handler raises TypeError (a programming error, not a job
    failure: every type the job decoder yields has one)."""
    try:
        handler = HANDLERS[type(job)]
    except KeyError:
        raise TypeError(f"no handler for job type {type(job).__name__}") from None
    kind = job_kind(job)
    try:
        return await handler(ctx, job)
    except MosaicError as exc:
        return JobFailed(
            job_id=job.job_id,
            agent=ctx.agent,
            job_kind=kind,
            code=exc.code,
            message=str(exc),
            retryable=exc.retryable,
            at=utcnow(),
        )
    except Exception as exc:  # a bug: report it, keep serving other jobs
        log.exception("job %s crashed", job.job_id)
        return JobFailed(
            job_id=job.job_id,
            agent=ctx.agent,
            job_kind=kind,
            code="internal",
            message=f"{type(exc).__name__}: {exc}",
            at=utcnow(),
        )
