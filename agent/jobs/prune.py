"""Prune jobs: forget exactly the backups the job names, then collect garbage.

The coordinator decides *what* (which backups retention expires); the agent that holds
the target's full-rights credentials carries it out with the same code as ``repo
prune`` (engine/maintenance/prune.py). Nothing here decides policy.
"""

from __future__ import annotations

from datetime import timedelta

from agent.jobs.context import MAX_NAMES, JobContext
from engine.maintenance.prune import collect_garbage, forget
from shared.errors import ConfigError
from shared.vocab import utcnow
from shared.wire.events import PruneCompleted
from shared.wire.jobs import PruneJob


async def run_prune(ctx: JobContext, job: PruneJob) -> PruneCompleted:
    """Forget the job's backups that this repository holds, then collect garbage.

    Ids the repository does not hold (already forgotten by a previous delivery of this
    job, or never copied here) are skipped, so a redelivered job is harmless."""
    started = utcnow()
    target = ctx.target(job.target)
    if target.capabilities.append_only:
        raise ConfigError(
            f"prune job {job.job_id}: target {job.target!r} of agent {ctx.agent!r} is "
            f"append-only (targets.{job.target}.append_only = true) and cannot delete; "
            "send prune to an agent with full-rights credentials ([maintenance] agent)"
        )
    repo = await ctx.open(target, create=False)
    present = set(await repo.list_manifests())
    gone = sorted(set(job.forget) & present)
    if not job.dry_run:
        await forget(repo, gone)
    rep = await collect_garbage(
        repo,
        margin=timedelta(seconds=job.gc_margin_s),
        dry_run=job.dry_run,
        forgotten=gone,
        holder=f"{ctx.agent}/{job.job_id}",
    )
    removed = rep.deleted if not job.dry_run else rep.plan.garbage
    return PruneCompleted(
        job_id=job.job_id,
        agent=ctx.agent,
        target=job.target,
        forgotten=gone,
        packs_removed=len(removed),
        # net of repacking (new packs written): what the target really got back
        bytes_freed=rep.plan.estimated_freed if job.dry_run else rep.bytes_freed,
        locked=len(rep.locked),
        locked_objects=[p.key for p, _ in rep.locked][:MAX_NAMES],
        deferred=rep.deferred,
        dry_run=job.dry_run,
        started_at=started,
        at=utcnow(),
    )
