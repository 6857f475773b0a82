"""Restore jobs: one backup into a destination folder on the agent's host.

A point-in-time restore, or the restore of a log backup, goes through the log chain
(:mod:`agent.jobs.pitr`); anything else is a plain tree restore (with the source's
``after_restore``).
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.jobs.context import JobContext
from agent.jobs.pitr import needs_logs, restore_with_logs
from agent.sources import restore_backup
from shared import tracing
from shared.errors import ConfigError
from shared.vocab import utcnow
from shared.wire.events import RestoreCompleted
from shared.wire.jobs import RestoreJob


def check_restore_root(roots: list[str], destination: str, agent: str) -> None:
    """Refuse a destination outside the agent's ``restore_roots`` (symlinks resolved),
    naming the roots; no roots configured: any destination."""
    if not roots:
        return
    dest = Path(destination).resolve()
    if any(dest.is_relative_to(Path(r).resolve()) for r in roots):
        return
    raise ConfigError(
        f"restore destination {destination} is outside the restore roots of agent "
        f"{agent} ({', '.join(roots)}); choose a folder inside one of them, or add one "
        "to restore_roots in its agent.toml"
    )


async def run_restore(ctx: JobContext, job: RestoreJob) -> RestoreCompleted:
    t0 = time.monotonic()
    if ctx.cfg is not None:
        check_restore_root(ctx.cfg.restore_roots, job.destination, ctx.agent)
    repo = await ctx.open(ctx.target(job.target), create=False)
    repo.refuse_write_only("a restore")
    manifest = await repo.load_manifest(job.backup_id)
    report = ctx.progress(job.job_id)
    with tracing.span("restore data", scope="mosaic.agent"):
        if needs_logs(manifest, job.pitr, job.paths):
            files, nbytes = await restore_with_logs(
                repo, manifest, Path(job.destination), job.pitr, report
            )
        else:
            files, nbytes = await restore_backup(
                repo, manifest, job.destination, include=job.paths or None, report=report
            )
    return RestoreCompleted(
        job_id=job.job_id,
        agent=ctx.agent,
        backup_id=job.backup_id,
        destination=job.destination,
        files=files,
        bytes_written=nbytes,
        duration_s=time.monotonic() - t0,
        at=utcnow(),
    )
