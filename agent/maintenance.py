"""Maintenance jobs on the agent: verify, prune, replicate (drills are in drill.py).

The coordinator decides *what* (which backups retention expires, which share of packs to
read, where to copy) and orders it as a job; the agent that holds the target's
credentials carries it out with the same code as the ``repo`` tools (engine/maintenance/verify.py,
prune.py, replicate.py) and reports the result as one event. Nothing here decides
policy: a prune forgets exactly the ids in the job, never more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from engine.format import spec as fmt
from engine.maintenance.prune import collect_garbage, forget
from engine.maintenance.replicate import lag, replicate
from engine.maintenance.verify import verify
from engine.repository import Repository
from engine.storage.base import Target
from shared.errors import ConfigError, TargetUnavailable
from shared.vocab import utcnow
from shared.wire.events import Event, PruneCompleted, ReplicateCompleted, VerifyCompleted
from shared.wire.jobs import DrillJob, MaintenanceJob, PruneJob, ReplicateJob, VerifyJob

# Damaged object names carried in one event: enough to act on, bounded for the bus.
MAX_NAMES = 100
# Backup ids a replicate result carries (~50 bytes each: well under NATS's 1 MiB
# payload). A replica holding more is reported in part (the last ids in sort order):
# a known limit, see the README.
MAX_COPY_IDS = 10_000


@dataclass(frozen=True)
class MaintenanceContext:
    """What a maintenance job needs from the agent: its name, its targets by name (an
    unknown name raises ConfigError) and how it opens a repository (its key)."""

    agent: str
    target: Callable[[str], Target]
    open: Callable[..., Awaitable[Repository]]  # (target, *, create: bool)


async def run_maintenance(ctx: MaintenanceContext, job: MaintenanceJob) -> Event:
    if isinstance(job, VerifyJob):
        return await run_verify(ctx, job)
    if isinstance(job, PruneJob):
        return await run_prune(ctx, job)
    if isinstance(job, ReplicateJob):
        return await run_replicate(ctx, job)
    if isinstance(job, DrillJob):
        from agent.drill import run_drill

        return await run_drill(ctx, job)
    raise TypeError(f"not a maintenance job: {type(job).__name__}")


async def run_verify(ctx: MaintenanceContext, job: VerifyJob) -> VerifyCompleted:
    started = utcnow()
    repo = await ctx.open(ctx.target(job.target), create=False)
    rep = await verify(repo, None, read_data=job.read_data, subset=job.subset, seed=job.seed)
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
    )


async def run_prune(ctx: MaintenanceContext, job: PruneJob) -> PruneCompleted:
    """Forget the job's backups that this repository holds, then collect garbage.

    Ids the repository does not hold (already forgotten by a previous delivery of this
    job, or never copied here) are skipped, so a redelivered job is harmless."""
    started = utcnow()
    target = ctx.target(job.target)
    if getattr(target, "append_only", False):  # only local and SFTP targets have the mode
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


async def run_replicate(ctx: MaintenanceContext, job: ReplicateJob) -> ReplicateCompleted:
    started = utcnow()
    src, dst = ctx.target(job.target), ctx.target(job.to_target)
    rep = await replicate(src, dst)
    repo = await ctx.open(src, create=False)
    behind = await lag(src, dst, repo=repo)
    wanted = set(job.datasets) or set(behind)
    held = sorted(
        [o.key.removeprefix(fmt.MANIFESTS_PREFIX) async for o in dst.list(fmt.MANIFESTS_PREFIX)]
    )
    return ReplicateCompleted(
        job_id=job.job_id,
        agent=ctx.agent,
        target=job.target,
        to_target=job.to_target,
        copied=rep.copied,
        copied_bytes=rep.copied_bytes,
        lag_s={d: behind[d].lag_s if d in behind else None for d in sorted(wanted)},
        started_at=started,
        at=utcnow(),
        backup_ids=held[-MAX_COPY_IDS:],
    )
