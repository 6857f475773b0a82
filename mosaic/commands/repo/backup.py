"""``repo backup``, ``repo restore``, ``repo list``: a single host without a coordinator.

The same engine the agent runs for jobs, driven from the command line (and by the
benchmark in bench/). Backup ids are ``local-<dataset>-<UTC time>``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import UTC, datetime

import anyio.to_thread
from rich.console import Console
from rich.table import Table

from agent.keysetup import key_notice, prepare_key, prepare_state_dir, write_options
from agent.sources import restore_backup
from engine.backup.dataset import BackupSpec, backup_dataset
from engine.keys.files import PASSPHRASE_ENV
from engine.keys.writeonly import WriteOnlyKey
from engine.maintenance.recovery_copy import remember_in_key_file
from engine.repository import Repository
from mosaic.commands._options import paths_arg
from mosaic.commands.repo._common import common_args, opened, target_from
from mosaic.ui.display import print_partial, size, summary_table
from mosaic.ui.progress import byte_bar
from shared.errors import ConfigError, IntegrityError, PartialRestoreError, TargetError
from shared.subjects import check_token
from shared.wire.sources import FilesSource


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("backup", help="back up a folder into the repository, here and now")
    common_args(p)
    p.add_argument("path", help="folder to back up")
    p.add_argument("--dataset", default=None, help="dataset name (default: folder name)")
    p.add_argument(
        "--type", choices=["full", "incremental"], default="incremental", dest="backup_type"
    )
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    p.set_defaults(func=backup_cmd)

    p = sub.add_parser("restore", help="restore a backup into a new or empty folder")
    common_args(p)
    p.add_argument("backup_id", metavar="BACKUP_ID")
    p.add_argument("--to", required=True, dest="destination")
    paths_arg(p)
    p.add_argument(
        "--damaged",
        choices=("rename", "omit"),
        default="rename",
        help="a file whose content is damaged: write what is intact as NAME.damaged "
        "(default) or leave it out; either way the restore lists it and exits 1",
    )
    p.set_defaults(func=restore_cmd)

    p = sub.add_parser("dump", help="write one file of a backup to stdout")
    common_args(p)
    p.add_argument("backup_id", metavar="BACKUP_ID")
    p.add_argument("file", metavar="PATH", help="path of the file inside the backup")
    p.set_defaults(func=dump_cmd)

    p = sub.add_parser("list", help="list the backups stored in the repository")
    common_args(p)
    p.set_defaults(func=list_cmd)


async def _latest(repo: Repository, dataset: str) -> str | None:
    ids = sorted(i for i in await repo.list_manifests() if i.startswith(f"local-{dataset}-"))
    return ids[-1] if ids else None


async def backup_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    cfg, target = target_from(args)
    path = args.path  # made absolute by cli.main
    if args.dataset:
        try:
            dataset = check_token("dataset name", args.dataset)
        except ValueError as exc:
            raise ConfigError(f"--dataset: {exc}") from None
    else:  # named after the folder, made a valid name ("my.data" → "my-data")
        dataset = re.sub(r"[^A-Za-z0-9_-]", "-", os.path.basename(path))[:128] or "root"
    key, created = await prepare_key(cfg, {target.name: target}, os.environ.get(PASSPHRASE_ENV))
    if created:
        err.print(key_notice(cfg.key_file))
    if isinstance(key, WriteOnlyKey):
        # It cannot read the parent backup's tree: its file cache lives in state_dir.
        for line in await anyio.to_thread.run_sync(prepare_state_dir, cfg.state_dir):
            err.print(f"mosaic-backup: warning: {line}", highlight=False, markup=False)
    repo = await Repository.open(
        target,
        key,
        create=True,
        options=write_options(cfg),
    )
    remember_in_key_file(cfg.key_file, repo)
    backup_id = f"local-{dataset}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    spec = BackupSpec(
        backup_id=backup_id,
        dataset=dataset,
        agent=cfg.name,
        source=FilesSource(path=path, exclude=args.exclude),
        backup_type=args.backup_type,
        parent_backup_id=await _latest(repo, dataset),
        state_dir=cfg.state_dir,
    )
    bar, _, report = byte_bar(err, f"backup {dataset}")
    with bar:
        m = await backup_dataset(repo, spec, report=report)
    await target.aclose()
    out.print(
        summary_table(
            f"backup {m.backup_id}", m.summary, {"dataset": dataset, "type": spec.backup_type}
        )
    )
    for line in m.summary.warning_lines():  # files not stored as found, by name
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


async def restore_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as repo:
        m = await repo.load_manifest(args.backup_id)
        bar, _, report = byte_bar(err, f"restore {args.backup_id}")
        t0 = time.monotonic()
        try:
            with bar:
                files, nbytes = await restore_backup(
                    repo,
                    m,
                    args.destination,
                    include=args.paths or None,
                    report=report,
                    damaged=args.damaged,
                )
        except PartialRestoreError as exc:
            return print_partial(err, exc)
        dt = time.monotonic() - t0
    out.print(f"restored {files:,} files, {size(nbytes)} in {dt:.2f} s into {args.destination}")
    return 0


async def list_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as repo:
        t = Table(title=f"backups in {repo.target.describe()}")
        for col in ("backup id", "dataset", "type", "finished", "files", "read", "stored"):
            t.add_column(col, no_wrap=True)
        for backup_id in await repo.list_manifests():
            m = await repo.load_manifest(backup_id)
            s = m.summary
            t.add_row(
                m.backup_id,
                m.dataset,
                m.backup_type,
                f"{m.finished_at:%Y-%m-%d %H:%M:%S}",
                f"{s.files:,}",
                size(s.bytes_read),
                size(s.bytes_stored),
            )
        out.print(t)
    return 0


async def dump_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Stream one file's chunks to stdout, in order, one chunk in memory at a time."""
    want = os.fsencode(args.file.strip("/"))
    async with opened(args) as repo:
        m = await repo.load_manifest(args.backup_id)
        node = next((n for n in await repo.read_tree(m) if n.path == want), None)
        if node is None or node.type not in ("file", "hardlink"):
            raise ConfigError(f"backup {args.backup_id} has no file {args.file!r}")
        sink = sys.stdout.buffer
        offset, damaged = 0, []
        await repo.find_missing(node.chunks)
        for chunk_id in node.chunks:
            entry = repo.index.get(chunk_id)
            try:
                data = await repo.read_blob(chunk_id)
            except (IntegrityError, TargetError) as exc:
                if entry is None:  # its length is unknown: nothing after it can be placed
                    damaged.append(f"from byte {offset:,}: {exc}")
                    break
                damaged.append(f"bytes {offset:,}–{offset + entry.raw_length - 1:,}: {exc}")
                data = bytes(entry.raw_length)  # zeros keep the rest at its offsets
            await anyio.to_thread.run_sync(sink.write, data)
            offset += len(data)
        await anyio.to_thread.run_sync(sink.flush)
    for line in damaged:
        err.print(f"damaged: {args.file}: {line}", markup=False, highlight=False, soft_wrap=True)
    if damaged:
        err.print(
            f"mosaic-backup: {args.file} of backup {args.backup_id}: {len(damaged)} damaged "
            "range(s) written as zeros; see `repo verify --read-data` and `repo repair packs`",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0
