"""Backup jobs: one dataset into the repository on one target.

Idempotent on redelivery: a backup whose manifest is already stored is reported, not
redone (content-addressed chunks make an interrupted one cheap to repeat). An
incremental of a source with archived logs ships the logs as a log backup on the
dataset's base; the shipped logs leave the spool only once the manifest is stored.
"""

from __future__ import annotations

import anyio
import msgspec

from agent.hooks import run_post, run_pre
from agent.jobs.context import JobContext
from agent.sources import LogShipment, archives_logs, ship_logs, streams_for
from engine.backup import filecache
from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format.manifest import Manifest
from engine.logchain import base_for_log_backup
from engine.repository import Repository
from shared.vocab import BackupSummary, utcnow
from shared.wire.events import BackupCompleted
from shared.wire.jobs import BackupJob


async def run_backup(ctx: JobContext, job: BackupJob) -> BackupCompleted:
    cfg = ctx.config
    repo = await ctx.open(ctx.target(job.target), create=True)
    if await repo.has_manifest(job.backup_id):
        return _completed(ctx, job, await _stored(ctx, repo, job), repo)
    job, shipment = await _log_backup(ctx, repo, job)
    spec = BackupSpec(
        backup_id=job.backup_id,
        dataset=job.dataset,
        agent=ctx.agent,
        source=job.source,
        backup_type=job.backup_type,
        parent_backup_id=job.parent_backup_id,
        streams=shipment.streams if shipment else streams_for(job.source),
        state_dir=cfg.state_dir,
        tier=job.tier,
    )
    hooks = cfg.hooks.get(job.dataset)
    if hooks is None:
        manifest = await backup_dataset(repo, spec, report=ctx.progress(job.job_id))
        return await _shipped(ctx, job, manifest, repo, shipment)
    await run_pre(hooks, job.dataset)
    ok = False
    try:
        manifest = await backup_dataset(repo, spec, report=ctx.progress(job.job_id))
        ok = True
    finally:
        with anyio.CancelScope(shield=True):
            await run_post(hooks, job.dataset, ok)
    return await _shipped(ctx, job, manifest, repo, shipment)


async def _stored(ctx: JobContext, repo: Repository, job: BackupJob) -> Manifest:
    """The manifest of a backup already stored (a redelivered job). A write-only
    agent cannot read it: it reports what its file cache recorded, or no figures."""
    if repo.write_only is None:
        return await repo.load_manifest(job.backup_id)
    state_dir = ctx.config.state_dir
    cached = await anyio.to_thread.run_sync(filecache.load, state_dir, job.dataset)
    if cached is not None and cached[0].backup_id == job.backup_id:
        return cached[0]
    now = utcnow()
    zero = BackupSummary(
        files=0, dirs=0, symlinks=0, bytes_read=0, bytes_new=0, bytes_stored=0,
        chunks_total=0, chunks_new=0, packs_written=0, duration_s=0.0,
    )  # fmt: skip
    return Manifest(
        backup_id=job.backup_id, dataset=job.dataset, agent=ctx.agent,
        backup_type=job.backup_type, source=job.source, started_at=now,
        finished_at=now, tree=[], summary=zero, tier=job.tier,
    )  # fmt: skip


async def _log_backup(
    ctx: JobContext, repo: Repository, job: BackupJob
) -> tuple[BackupJob, LogShipment | None]:
    """An incremental of a source with archived logs is a log backup extending the
    dataset's base (its parent); without a base it becomes a base backup."""
    if job.backup_type != "incremental" or not archives_logs(job.source):
        return job, None
    base_id = await base_for_log_backup(repo, job, ctx.config.state_dir)
    if base_id is None:
        return msgspec.structs.replace(job, backup_type="full", parent_backup_id=None), None
    shipment = await anyio.to_thread.run_sync(ship_logs, job.source)
    return msgspec.structs.replace(job, parent_backup_id=base_id), shipment


async def _shipped(
    ctx: JobContext, job: BackupJob, m: Manifest, repo: Repository, shipment: LogShipment | None
) -> BackupCompleted:
    """The manifest is stored: only now may the shipped logs leave the spool."""
    if shipment is None:
        return _completed(ctx, job, m, repo)
    await anyio.to_thread.run_sync(shipment.shipped)
    return msgspec.structs.replace(_completed(ctx, job, m, repo), log_lag_s=shipment.lag_s)


def _completed(ctx: JobContext, job: BackupJob, m: Manifest, repo: Repository) -> BackupCompleted:
    return BackupCompleted(
        job_id=job.job_id,
        agent=ctx.agent,
        backup_id=m.backup_id,
        dataset=m.dataset,
        target=job.target,
        backup_type=job.backup_type,
        repository_id=repo.config.repository_id,
        started_at=m.started_at,
        finished_at=m.finished_at,
        summary=m.summary,
        tier=job.tier,
    )
