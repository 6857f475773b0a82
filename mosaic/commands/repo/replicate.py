"""``repo replicate``: copy a repository to another target of the agent's config.

The copy itself (ciphertext only, missing objects only, manifests last) is
engine/maintenance/replicate.py; this module picks both targets from the config, draws the progress
bar and prints what was copied per prefix. The key is only needed for the lag table
(manifests are sealed): without a readable key file the copy still runs and the lag is
reported as the list of missing backups.
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn
from rich.progress import Progress as Bar
from rich.table import Table

from engine.keys.files import PASSPHRASE_ENV, load_key_file
from engine.maintenance.replicate import LagInfo, ReplicationReport, lag, replicate
from engine.progress import Progress
from engine.repository import Repository
from engine.storage.base import Target
from mosaic.commands.repo._common import target_from
from mosaic.ui.display import size
from shared.errors import ConfigError, RepositoryError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("replicate", help="copy a repository to another target (as ciphertext)")
    p.add_argument("--config", required=True, help="the agent's agent.toml")
    p.add_argument("--from", dest="source", required=True, metavar="TARGET", help="copy from")
    p.add_argument("--to", dest="dest", required=True, metavar="TARGET", help="copy to")
    p.add_argument("--dry-run", action="store_true", help="show what would be copied; copy nothing")
    p.set_defaults(func=replicate_cmd)


def _copy_table(rep: ReplicationReport) -> Table:
    verb = "to copy" if rep.dry_run else "copied"
    t = Table(title=f"{rep.source} → {rep.destination}")
    for col in ("prefix", f"objects {verb}", f"bytes {verb}", "skipped (present)", "vanished"):
        t.add_column(col, justify="left" if col == "prefix" else "right")
    for prefix, s in rep.prefixes.items():
        t.add_row(prefix, f"{s.copied:,}", size(s.copied_bytes), f"{s.skipped:,}", f"{s.vanished}")
    return t


def _lag_table(lags: dict[str, LagInfo]) -> Table:
    t = Table(title="replication lag")
    for col in ("dataset", "backups missing", "lag"):
        t.add_column(col, overflow="fold")
    for info in lags.values():
        when = "unknown (needs the key)" if info.lag_s is None else f"{info.lag_s:,.0f} s"
        missing = ", ".join(info.missing[:3]) + (" …" if len(info.missing) > 3 else "")
        t.add_row(info.dataset, f"{len(info.missing)} {missing}".strip(), when)
    return t


async def _open_source(key_file: str, src: Target, err: Console) -> Repository | None:
    try:
        key = load_key_file(key_file, os.environ.get(PASSPHRASE_ENV))
        return await Repository.open(src, key)
    except RepositoryError as exc:
        err.print(f"lag per dataset needs the key: {exc}", highlight=False, soft_wrap=True)
        return None


async def replicate_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.source == args.dest:
        raise ConfigError(f"--from and --to are both '{args.source}': choose two targets")
    cfg, src = target_from(argparse.Namespace(config=args.config, target=args.source))
    try:
        _, dst = target_from(argparse.Namespace(config=args.config, target=args.dest))
    except BaseException:
        await src.aclose()
        raise
    try:
        bar = Bar(
            TextColumn("replicate"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        )
        task = bar.add_task("replicate", total=None)

        async def report(p: Progress) -> None:
            bar.update(task, total=p.bytes_total or None, completed=p.bytes_done)

        with bar:
            rep = await replicate(src, dst, dry_run=args.dry_run, report=report)
        out.print(_copy_table(rep))
        repo = await _open_source(cfg.key_file, src, err)
        out.print(_lag_table(await lag(src, dst, repo=repo)))
    finally:
        await src.aclose()
        await dst.aclose()
    what = "would copy" if args.dry_run else "copied"
    out.print(
        f"{what} {rep.copied:,} objects ({size(rep.copied_bytes)}) from {rep.source} "
        f"to {rep.destination}",
        highlight=False,
        soft_wrap=True,
    )
    return 0
