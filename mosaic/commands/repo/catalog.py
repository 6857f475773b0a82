"""``repo catalog-rebuild``: rebuild the coordinator's catalog from one repository.

The catalog is only an index; the repositories are the truth (DESIGN: "the catalog is
an index that can be rebuilt from any single target plus the key"). When the
coordinator's database is lost, or lags behind because events were lost, this tool reads
every manifest of the repository on one of the agent's targets and records one catalog
row per backup. It runs where the agent's key is, because the coordinator process never
reads repository objects (by design, it holds no key).

Rows are built exactly as the coordinator builds them from ``BackupCompleted`` events
(:func:`backup_record`), so a rebuilt catalog equals the one that was lost. Recording is
idempotent: rows already present stay as they are (a row recorded from the event also
knows the target it was first written to, which a replica's manifests cannot tell).

A manifest that does not open (damaged, or deleted since the listing) is named and
skipped; the others are still recorded, and the exit code is 1 so that cron or a runbook
notices. A target that cannot be reached, a wrong key or a catalog error ends the run:
retrying later can help, and skipping every manifest would hide the cause.

``--dry-run`` writes nothing: it reads the catalog to tell which backups it lacks. A
SQLite catalog file that does not exist is not created (every backup counts as missing);
note that opening an existing catalog brings its schema up to date, as the coordinator
does on start (a no-op on a current catalog, empty tables on an empty PostgreSQL database).
"""

from __future__ import annotations

import argparse
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import cast, get_args
from urllib.parse import unquote

from rich.console import Console
from rich.table import Table
from rich.text import Text

from coordinator.catalog import Catalog, open_catalog
from engine.format.manifest import Manifest
from engine.repository import Repository
from mosaic.commands.repo._common import common_args, opened
from mosaic.ui.display import size
from shared.errors import IntegrityError, RepositoryError
from shared.vocab import BackupType, Tier
from shared.wire.records import BackupRecord

_BACKUP_TYPES: tuple[str, ...] = get_args(BackupType)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "catalog-rebuild",
        help="record every backup of the repository in a (new or existing) catalog",
    )
    common_args(p)
    p.add_argument(
        "--catalog",
        required=True,
        metavar="URL",
        help="the catalog to fill: sqlite:///absolute/path/catalog.db or postgresql://…",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only show which backups the catalog lacks; write nothing",
    )
    p.set_defaults(func=catalog_rebuild_cmd)


def backup_record(m: Manifest, *, target: str, repository_id: str) -> BackupRecord:
    """The catalog row for one manifest, field for field what the coordinator records
    from the ``BackupCompleted`` event of the same backup (coordinator/service.py).

    ``target`` is the target's name in the agent config (the event carries the job's
    target, which is that name); the manifest cannot know it, since replicas copy it.
    """
    if m.backup_type not in _BACKUP_TYPES:
        raise IntegrityError(
            f"backup {m.backup_id}: manifest has backup type {m.backup_type!r}, "
            f"expected one of {', '.join(_BACKUP_TYPES)}"
        )
    s = m.summary
    return BackupRecord(
        backup_id=m.backup_id,
        dataset=m.dataset,
        agent=m.agent,
        target=target,
        backup_type=cast(BackupType, m.backup_type),
        repository_id=repository_id,
        started_at=m.started_at,
        finished_at=m.finished_at,
        files=s.files,
        bytes_read=s.bytes_read,
        bytes_new=s.bytes_new,
        bytes_stored=s.bytes_stored,
        duration_s=s.duration_s,
        tier=cast(Tier, m.tier) if m.tier in get_args(Tier) else None,
    )


@dataclass(frozen=True, slots=True)
class _Found:
    record: BackupRecord
    new: bool  # not in the catalog before this run


@dataclass(slots=True)
class RebuildResult:
    found: list[_Found]
    damaged: dict[str, str]  # manifest name → why it did not open

    @property
    def added(self) -> int:
        return sum(f.new for f in self.found)

    @property
    def present(self) -> int:
        return len(self.found) - self.added


def _missing_sqlite_file(url: str) -> bool:
    """True for a ``sqlite:///…`` URL whose file does not exist (a dry run must not
    create it). Other URLs, and malformed ones, are left to :func:`open_catalog`."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        return False
    path = unquote(rest.partition("?")[0])
    return path.startswith("/") and not Path(path).exists()


async def rebuild(repo: Repository, catalog: Catalog | None, *, write: bool) -> RebuildResult:
    """Record every readable manifest of ``repo`` in ``catalog`` (if ``write``).

    ``catalog`` None means an empty catalog that is not opened (dry run, no file yet).
    """
    result = RebuildResult(found=[], damaged={})
    target, repository_id = repo.target.name, repo.config.repository_id
    for name in sorted(await repo.list_manifests()):
        try:
            record = backup_record(
                await repo.load_manifest(name), target=target, repository_id=repository_id
            )
        except RepositoryError as exc:  # IntegrityError, wrong key id, gone since listing
            result.damaged[name] = str(exc)
            continue
        # get_backup first only to count: record_backup is idempotent on its own.
        new = catalog is None or await catalog.get_backup(record.backup_id) is None
        if new and write and catalog is not None:
            await catalog.record_backup(record)
        result.found.append(_Found(record, new))
    return result


def _table(title: str, found: list[_Found], *, write: bool) -> Table:
    t = Table(title=title)
    for col in ("backup id", "dataset", "type", "finished", "files", "stored", "catalog"):
        t.add_column(col, justify="right" if col in ("files", "stored") else "left", no_wrap=True)
    fresh = "added" if write else "missing"
    for f in sorted(found, key=lambda f: (f.record.finished_at, f.record.backup_id)):
        r = f.record
        t.add_row(
            r.backup_id,
            r.dataset,
            r.backup_type,
            f"{r.finished_at:%Y-%m-%d %H:%M:%S}",
            f"{r.files:,}",
            size(r.bytes_stored),
            fresh if f.new else "already there",
        )
    return t


def _summary(res: RebuildResult, *, write: bool) -> str:
    total = len(res.found) + len(res.damaged)
    verb = "added to" if write else "missing from"
    line = (
        f"{total} backups in repository, {res.added} {verb} the catalog, "
        f"{res.present} already there"
    )
    if res.damaged:
        line += f", {len(res.damaged)} damaged manifests skipped"
    if not write:
        line += " (dry run: nothing written)"
    return line


async def catalog_rebuild_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    write = not args.dry_run
    async with opened(args) as repo:
        if not write and _missing_sqlite_file(args.catalog):
            res = await rebuild(repo, None, write=False)
        else:
            async with aclosing(await open_catalog(args.catalog)) as catalog:
                res = await rebuild(repo, catalog, write=write)
        where = repo.target.describe()
    out.print(_table(f"backups in {where}", res.found, write=write))
    for name, why in res.damaged.items():
        out.print(Text(f"skipped damaged manifest {name}: {why}"), soft_wrap=True)
    line = _summary(res, write=write)
    out.print(line, highlight=False, soft_wrap=True)
    if res.damaged:
        names = ", ".join(res.damaged)
        err.print(
            f"mosaic-backup: error: catalog-rebuild: manifests that do not open: {names}",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0
