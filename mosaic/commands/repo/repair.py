"""``repo repair config|index|packs|snapshots``: bring a damaged repository back.

The repairs live in engine/maintenance/repair.py and engine/recovery.py; this module
opens the repository, prints what was done as tables and one summary line, and exits
0 when the repository is whole again, 1 when something is lost for good (named).
Order when in doubt: ``config`` (if it is missing), ``index``, ``packs``, ``snapshots``,
then ``repo verify --all --read-data``.
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from engine.keys.files import PASSPHRASE_ENV, load_key_file
from engine.maintenance.recovery_copy import remember_in_key_file
from engine.maintenance.repair import repair_index, repair_packs, repair_snapshots
from engine.recovery import repair_config
from engine.repository import Repository
from mosaic.commands.repo import local_audit
from mosaic.commands.repo._common import common_args, opened, target_from
from shared.config.agent import AgentConfig
from shared.config.load import load
from shared.errors import IntegrityError, RepositoryError

SHOWN = 20  # lost files listed before "and N more"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("repair", help="repair a damaged repository (config, index, packs, …)")
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    helps = {
        "config": "write `config` and lost keys/ back from recovery/ or the key file",
        "index": "rebuild the index from the packs' own headers",
        "packs": "salvage the intact blobs of damaged packs; list what is lost",
        "snapshots": "rewrite backups that reference lost chunks (damaged files left out)",
    }
    for name, text in helps.items():
        q = what.add_parser(name, help=text)
        common_args(q)
        if name != "config":
            q.add_argument("--dry-run", action="store_true", help="report; change nothing")
        q.set_defaults(func=_COMMANDS[name])


async def _config(args: argparse.Namespace, out: Console, err: Console) -> int:
    cfg, target = target_from(args)
    try:
        key = load_key_file(cfg.key_file, os.environ.get(PASSPHRASE_ENV))
        damaged = False
        try:
            await Repository.open(target, key, create=True)  # raises while damaged
        except (IntegrityError, RepositoryError):
            damaged = True
        written = await repair_config(target, cfg.key_file, config_damaged=damaged)
        repo = await Repository.open(target, key, create=True)  # proves the repair
        remember_in_key_file(cfg.key_file, repo)
    finally:
        await target.aclose()
    for name in written:
        out.print(f"wrote {name}")
    out.print(
        f"{target.describe()}: repository {repo.config.repository_id} opens again"
        + ("" if written else " (nothing was missing)")
    )
    if written:
        await local_audit.report(
            cfg,
            "repaired",
            f"repo repair config: wrote {', '.join(written)}",
            err,
            target=target.name,
            repository_id=repo.config.repository_id,
        )
    return 0


async def _index(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as repo:
        rep = await repair_index(repo, dry_run=args.dry_run)
    verb = "would write" if args.dry_run else "wrote"
    out.print(
        f"{verb} {rep.segments_written} index segment(s) for {rep.packs_indexed} pack(s), "
        f"replacing {rep.segments_removed} old one(s)"
    )
    for key, why in rep.unreadable_packs.items():
        err.print(f"pack {key}: header unreadable ({why}); run `repo repair packs`")
    if not args.dry_run:
        await _audit(args, err, f"repo repair index: {rep.segments_written} segment(s) written")
    return 1 if rep.unreadable_packs else 0


async def _packs(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as repo:
        rep = await repair_packs(repo, dry_run=args.dry_run)
    t = Table(title="repair packs" + (" (dry run)" if args.dry_run else ""))
    for col in ("packs checked", "damaged", "blobs salvaged", "chunks lost", "files hit"):
        t.add_column(col, justify="right")
    t.add_row(
        f"{rep.packs_checked:,}",
        f"{len(rep.damaged_packs):,}",
        f"{rep.blobs_salvaged:,}",
        f"{len(rep.chunks_lost):,}",
        f"{len(rep.hits):,}",
    )
    out.print(t)
    for key in rep.damaged_packs:
        out.print(f"damaged: {key}" + ("" if args.dry_run else " (removed after salvage)"))
    if rep.damaged_packs and not args.dry_run:
        await _audit(
            args,
            err,
            f"repo repair packs: {len(rep.damaged_packs)} damaged pack(s) replaced, "
            f"{len(rep.chunks_lost)} chunk(s) lost",
        )
    for hit in rep.hits[:SHOWN]:
        err.print(f"lost: {hit}")
    if len(rep.hits) > SHOWN:
        err.print(f"lost: … and {len(rep.hits) - SHOWN} more")
    if rep.chunks_lost:
        err.print(
            f"{len(rep.chunks_lost)} chunk(s) exist nowhere else; run `mosaic-backup repo "
            "repair snapshots` to rewrite the backups above without them (a replica may "
            "still hold them: `repo replicate` from it first)"
        )
        return 1
    return 0


async def _snapshots(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as repo:
        rep = await repair_snapshots(repo, dry_run=args.dry_run)
    verb = "would rewrite" if args.dry_run else "rewrote"
    for backup_id, files in rep.rewritten.items():
        out.print(f"{verb} backup {backup_id}: {len(files)} damaged file(s) left out")
        for f in files[:SHOWN]:
            out.print(f"  {f}")
    for backup_id, why in rep.unrepairable.items():
        err.print(f"backup {backup_id}: {why}")
    if rep.rewritten and not args.dry_run:
        await _audit(args, err, f"repo repair snapshots: rewrote {', '.join(rep.rewritten)}")
    out.print(
        f"checked {rep.checked} backup(s): {len(rep.rewritten)} {verb.split()[-1]}, "
        f"{len(rep.unrepairable)} beyond repair"
    )
    return 1 if rep.unrepairable else 0


async def _audit(args: argparse.Namespace, err: Console, detail: str) -> None:
    cfg = load(args.config, AgentConfig)
    await local_audit.report(cfg, "repaired", detail, err, target=args.target or "")


_COMMANDS = {"config": _config, "index": _index, "packs": _packs, "snapshots": _snapshots}
