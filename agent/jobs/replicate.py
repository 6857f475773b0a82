"""Replicate jobs: copy what one target holds and another lacks, then report the lag
per dataset and the backups the copy holds (recorded by the coordinator as catalog
copies). Same code as ``repo replicate`` (engine/maintenance/replicate.py)."""

from __future__ import annotations

from agent.jobs.context import JobContext
from engine.format import spec as fmt
from engine.maintenance.replicate import lag, replicate
from shared.vocab import utcnow
from shared.wire.events import ReplicateCompleted
from shared.wire.jobs import ReplicateJob

# Backup ids a replicate result carries (~50 bytes each: well under NATS's 1 MiB
# payload). A replica holding more is reported in part (the last ids in sort order):
# a known limit, see docs/operations.md.
MAX_COPY_IDS = 10_000


async def run_replicate(ctx: JobContext, job: ReplicateJob) -> ReplicateCompleted:
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
