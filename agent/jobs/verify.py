"""Verify jobs: check the repository on one target (structure, and a seeded share of
packs downloaded and authenticated), with the same code as ``repo verify``
(engine/maintenance/verify.py). The coordinator chooses the share and the seed."""

from __future__ import annotations

from agent.jobs.context import MAX_NAMES, JobContext
from agent.jobs.verify_findings import findings
from engine.maintenance.verify import verify
from shared.errors import TargetUnavailable
from shared.vocab import utcnow
from shared.wire.events import VerifyCompleted
from shared.wire.jobs import VerifyJob


async def run_verify(ctx: JobContext, job: VerifyJob) -> VerifyCompleted:
    started = utcnow()
    repo = await ctx.open(ctx.target(job.target), create=False)
    wanted = list(job.backup_ids) or None  # None: every backup (the scheduled verify)
    rep = await verify(repo, wanted, read_data=job.read_data, subset=job.subset, seed=job.seed)
    names = sorted(rep.problems)
    broken = sorted({b for p in rep.problems.values() for b in p.backups})
    if rep.unreadable and not names:
        # nothing damaged among what was read, but not everything could be read: not a
        # pass (a verify that read nothing must never look clean); retrying can help
        key, why = next(iter(sorted(rep.unreadable.items())))
        raise TargetUnavailable(
            f"verify of target {job.target!r}: could not read {len(rep.unreadable)} "
            f"object(s) even after retries (e.g. {key}: {why}); the result is incomplete, "
            "try again",
            retryable=True,
        )
    return VerifyCompleted(
        job_id=job.job_id,
        agent=ctx.agent,
        target=job.target,
        backups=len(rep.backups),
        packs=rep.packs,
        packs_read=rep.packs_read,
        bytes_read=rep.bytes_read,
        damaged=len(names),
        damaged_objects=names[:MAX_NAMES],
        damaged_backups=broken[:MAX_NAMES],
        started_at=started,
        at=utcnow(),
        findings=findings(rep)[:MAX_NAMES],
        checked=rep.backups[: 10 * MAX_NAMES] if wanted else [],
    )
