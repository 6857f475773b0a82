"""Restore drills: restore a backup into a scratch folder, prove it is usable, remove it.

A backup is only as good as its last successful restore. A drill restores one backup
exactly as an operator would (``restore_backup``, which authenticates every blob and
re-hashes its id), then checks the result the way its kind is used:

- files (and any source whose restored files stay as they were stored: system state,
  Redis's ``dump.rdb``, a ``pg_dump`` file): every file is cut and hashed again with
  the repository's chunker and key and compared with the manifest's chunk list, and the
  counts of files and bytes with the manifest's summary;
- PostgreSQL base backup: a throwaway server is started on the restored ``pgdata`` (as
  the ``postgres`` user when run as root; only a unix socket in the scratch folder, a
  private ``pg_hba.conf`` that trusts local connections, WAL archiving off so the copy can
  never write into production's archive), ``pg_amcheck --all --install-missing`` (which
  creates the amcheck extension: the server is writable, it is a copy), and the rows of
  every user table are counted;
- MariaDB (mariabackup): ``mariadbd`` on the prepared data directory with
  ``--skip-grant-tables --skip-networking``, then ``CHECK TABLE`` on every table;
- Redis: ``redis-check-rdb`` on the restored ``dump.rdb``, and ``redis-check-aof`` on
  the AOF manifest when the backup holds ``appendonlydir/`` (the AOF is what the server
  loads first, so a broken AOF is a broken restore even with a good RDB);
- Docker volume: the restored ``<volume>.tar`` is listed with ``tarfile`` and every
  member's data must lie inside the file as its header says (a truncated export fails);
- a ``pg_dump`` file also gets ``pg_restore --list``.

A host drill's job carries ``pitr``: a database dataset with archived logs is then
restored through its log chain to that instant (:mod:`agent.jobs.pitr`) and, for
PostgreSQL, first started once to replay its WAL (:mod:`agent.jobs.drill_pitr`) before
the checks above; a log backup is always restored through its chain.

RTO is the time from the drill's start until the data was restored and checked; RPO the
age of the dataset's newest backup (known to the coordinator, sent in the job) at the
start. The scratch folder is removed whatever happens, and a throwaway server is stopped.

The checks are in :mod:`agent.jobs.drill_tools` (files, tars, Redis, tool runs) and
:mod:`agent.jobs.drill_servers` (throwaway PostgreSQL and MariaDB servers).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import anyio.to_thread

from agent.jobs.context import JobContext
from agent.jobs.drill_pitr import replay_postgres
from agent.jobs.drill_servers import check_mariadb, check_postgres
from agent.jobs.drill_tools import (
    ERROR_TAIL,
    check_aof,
    check_tar,
    one_line,
    socket_dir,
    tool_check,
)
from agent.jobs.pitr import needs_logs, restore_with_logs
from agent.sources import restore_backup
from engine.format.manifest import Manifest, Node
from engine.repository import Repository
from shared.errors import MosaicError, PartialRestoreError
from shared.vocab import utcnow
from shared.wire.events import DrillCheck, DrillCompleted
from shared.wire.jobs import DrillJob
from shared.wire.sources import (
    DockerVolumeSource,
    MariaDBSource,
    PostgresSource,
    RedisSource,
    Source,
)


async def run_drill(ctx: JobContext, job: DrillJob) -> DrillCompleted:
    t0 = time.monotonic()
    started = utcnow()
    rpo = (started - job.newest_at).total_seconds() if job.newest_at is not None else None
    base = Path(job.scratch) if job.scratch else Path(tempfile.gettempdir())
    await anyio.to_thread.run_sync(lambda: base.mkdir(parents=True, exist_ok=True))
    scratch = Path(await anyio.to_thread.run_sync(_mkdtemp, base, job.job_id))
    try:
        checks = await _restore_and_check(ctx, job, scratch)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))
    rto = time.monotonic() - t0
    ok = bool(checks) and all(c.ok for c in checks)
    return DrillCompleted(
        job_id=job.job_id,
        agent=ctx.agent,
        dataset=job.dataset,
        target=job.target,
        backup_id=job.backup_id,
        outcome="passed" if ok else "failed",
        rto_s=rto,
        rpo_s=rpo,
        checks=checks,
        started_at=started,
        at=utcnow(),
    )


def _mkdtemp(base: Path, job_id: str) -> str:
    return tempfile.mkdtemp(prefix=f"mosaic-drill-{job_id[:24]}-", dir=base)


async def _restore_and_check(ctx: JobContext, job: DrillJob, scratch: Path) -> list[DrillCheck]:
    dest = scratch / "restore"
    try:
        repo = await ctx.open(ctx.target(job.target), create=False)
        manifest = await repo.load_manifest(job.backup_id)
        nodes = await repo.read_tree(manifest)
        replay = needs_logs(manifest, job.pitr, [])
        if replay:  # a host drill's point in time, or a log backup: the whole chain
            files, nbytes = await restore_with_logs(repo, manifest, dest, job.pitr)
        else:
            files, nbytes = await restore_backup(repo, manifest, dest)
    except PartialRestoreError as exc:
        # the damaged files first (their objects named), then how many: a tail cut
        # would keep only the advice
        head = f"{len(exc.damaged)} file(s) damaged: " + "; ".join(exc.damaged[:3])
        return [DrillCheck(name="restore", ok=False, detail=" ".join(head.split())[:ERROR_TAIL])]
    except MosaicError as exc:
        return [DrillCheck(name="restore", ok=False, detail=one_line(str(exc)))]
    checks = [DrillCheck(name="restore", ok=True, detail=f"{files} files, {nbytes} bytes")]
    src = manifest.source
    if _files_stay(src):
        checks.append(await anyio.to_thread.run_sync(rehash, repo, manifest, nodes, dest))
    if replay and isinstance(src, PostgresSource):
        checks.append(
            await anyio.to_thread.run_sync(replay_postgres, dest / "pgdata", scratch, src.user)
        )
        if not checks[-1].ok:
            return checks
    checks += await anyio.to_thread.run_sync(check_usable, src, dest, scratch)
    return checks


def _files_stay(src: Source) -> bool:
    """Whether restored files stay as stored (base backups are unpacked into a data dir)."""
    if isinstance(src, PostgresSource):
        return src.mode == "dump"
    if isinstance(src, MariaDBSource):
        return src.mode == "dump"
    return True


def rehash(repo: Repository, manifest: Manifest, nodes: list[Node], root: Path) -> DrillCheck:
    """Hash every restored file again and compare with the manifest (CPU; a thread)."""
    chunker = repo.chunker()
    files = nbytes = 0
    bad: list[str] = []
    for node in nodes:
        if node.type not in ("file", "hardlink"):
            continue
        path = os.path.join(os.fsencode(root), node.path)
        try:
            with open(path, "rb") as f:
                ids = [repo.keys.chunk_id(c.data) for c in chunker.cut_stream(f)]
            size = os.lstat(path).st_size
        except OSError as exc:
            bad.append(f"{os.fsdecode(node.path)}: {exc.strerror}")
            continue
        files += 1
        if node.type == "file":
            nbytes += size
        if ids != node.chunks or size != node.size:
            bad.append(f"{os.fsdecode(node.path)}: content differs from the manifest")
    s = manifest.summary
    if not bad and (files, nbytes) != (s.files, s.bytes_read):
        bad.append(
            f"restored {files} files, {nbytes} bytes; manifest says {s.files}, {s.bytes_read}"
        )
    detail = f"{files} files, {nbytes} bytes re-hashed"
    if bad:
        detail = f"{len(bad)} problem(s): " + "; ".join(bad[:5])
    return DrillCheck(name="rehash", ok=not bad, detail=detail)


def check_usable(src: Source, dest: Path, scratch: Path) -> list[DrillCheck]:
    """Start or read the restored data with its own tools (blocking; a thread)."""
    if isinstance(src, PostgresSource) and src.mode == "basebackup":
        with socket_dir() as sock:
            return check_postgres(dest / "pgdata", scratch, sock, src.user)
    if isinstance(src, PostgresSource):
        return [
            tool_check("pg_restore", ["pg_restore", "--list", str(p)])
            for p in sorted(dest.glob("*.dump"))
        ]
    if isinstance(src, MariaDBSource) and src.mode == "mariabackup":
        with socket_dir() as sock:
            return check_mariadb(dest / "mysql-data", scratch, sock)
    if isinstance(src, RedisSource):
        return [
            tool_check("redis-check-rdb", ["redis-check-rdb", str(dest / "dump.rdb")]),
            *check_aof(dest / "appendonlydir"),
        ]
    if isinstance(src, DockerVolumeSource):
        return [check_tar(p) for p in sorted(dest.glob("*.tar"))] or [
            DrillCheck(name="tar", ok=False, detail=f"no volume tar in the backup of {src.volume}")
        ]
    return []
