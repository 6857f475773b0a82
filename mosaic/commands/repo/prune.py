"""``repo prune``: forget backups, then delete or repack the packs no kept backup uses.

Which backups go is decided here (``--keep-last``, ``--forget`` or the GFS retention
table of coordinator/retention.py); carrying it out, and why that is safe beside running
backups, is engine/maintenance/prune.py. ``--dry-run`` writes nothing and prints what would go and
why. A deferred GC (a backup is running) or a pack kept by Object Lock is reported, not
an error: exit code 0 unless something failed. A backup whose manifest cannot be read
is kept (its age is unknown) and, like one whose tree cannot be read, holds garbage
collection back (reported, exit 0: forgetting the others still happened); the report
names the repair to run. docs/prune.md is the operator's page.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import cast, get_args

from rich.console import Console
from rich.table import Table
from rich.text import Text

from coordinator.retention import Backup, Decision, keep_last, named, select
from engine.format.manifest import Manifest
from engine.maintenance.prune import (
    DEFAULT_MAX_UNUSED,
    GcReport,
    collect_garbage,
    forget,
    plan_forget,
)
from engine.repository import Repository
from mosaic.commands.repo import local_audit
from mosaic.commands.repo._common import common_args, opened
from mosaic.ui.display import size
from shared.config.agent import AgentConfig
from shared.config.coordinator import RetentionConfig, TargetTier
from shared.config.load import load
from shared.errors import ConfigError, IntegrityError
from shared.vocab import Tier

TIERS: tuple[str, ...] = get_args(Tier)
TARGET_TIERS: tuple[str, ...] = get_args(TargetTier)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("prune", help="forget old backups and delete unreferenced packs")
    common_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--keep-last", type=int, metavar="N", help="keep N newest per dataset")
    which.add_argument("--forget", nargs="+", metavar="BACKUP_ID", help="forget these backups")
    which.add_argument(
        "--retention",
        metavar="TIER[:TARGET_TIER]",
        help="the default retention table; TIER for backups whose id names no tier "
        "(e.g. daily), TARGET_TIER defaults to the target's configured tier",
    )
    p.add_argument("--dry-run", action="store_true", help="show what would go; change nothing")
    p.add_argument(
        "--margin",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="wait between hiding garbage from the index and deleting it; must exceed the "
        "longest gap between a backup opening the repository and taking its lease "
        "(pre-hooks, reading the parent) plus clock skew (default 300)",
    )
    p.add_argument(
        "--max-unused",
        type=_max_unused,
        default=DEFAULT_MAX_UNUSED,
        metavar="PERCENT",
        help="repack packs holding duplicate or unreferenced blobs until at most PERCENT "
        "of the used bytes stay unused (default 5%%; 0%% repacks every such pack; "
        "'unlimited' never repacks — packs with no used blob are deleted either way)",
    )
    p.set_defaults(func=prune_cmd)


def _max_unused(text: str) -> float | None:
    if text.strip().lower() == "unlimited":
        return None
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a percentage from 0 to 100 (e.g. 5%) or 'unlimited'"
        )
    return value / 100


def _tier_of(backup_id: str, default: Tier) -> Tier:
    for part in backup_id.replace("_", "-").split("-"):
        if part in TIERS:
            return cast(Tier, part)
    return default


def _decide(
    args: argparse.Namespace, manifests: list[Manifest], unreadable: Collection[str] = ()
) -> dict[str, tuple[bool, str]]:
    """backup id → (keep, reason); ``unreadable`` backups may be named by --forget."""
    if args.forget is not None:
        unknown = sorted(set(args.forget) - {m.backup_id for m in manifests} - set(unreadable))
        if unknown:
            raise ConfigError(f"no backup {', '.join(unknown)} in this repository (repo list)")
        return _by_id(named(_plain(manifests, "daily"), set(args.forget)))
    if args.keep_last is not None:
        if args.keep_last < 1:
            raise ConfigError(f"--keep-last {args.keep_last}: keep at least 1 per dataset")
        return _by_id(keep_last(_plain(manifests, "daily"), args.keep_last))
    tier, _, target_tier = str(args.retention).partition(":")
    if not target_tier:
        cfg = load(args.config, AgentConfig)
        name = args.target or next(iter(cfg.targets))  # opened() checked the choice
        target_tier = cfg.targets[name].tier
    if tier not in TIERS or target_tier not in TARGET_TIERS:
        raise ConfigError(
            f"--retention {args.retention}: use TIER[:TARGET_TIER] with TIER one of "
            f"{', '.join(TIERS)} and TARGET_TIER one of {', '.join(TARGET_TIERS)}"
        )
    backups = _plain(manifests, cast(Tier, tier))
    return _by_id(select(backups, RetentionConfig(), cast(TargetTier, target_tier), _now()))


def _plain(manifests: list[Manifest], default: Tier) -> list[Backup]:
    """What retention needs of each manifest (its tier from the id, else ``default``)."""
    return [
        Backup(m.backup_id, m.dataset, _tier_of(m.backup_id, default), m.finished_at)
        for m in manifests
    ]


def _by_id(decisions: list[Decision]) -> dict[str, tuple[bool, str]]:
    """backup id → (keep, the line the table prints); the prune forgets what is not kept."""
    return {d.backup.backup_id: (d.keep, d.why) for d in decisions}


def _now() -> datetime:
    return datetime.now(UTC)


def _manifest_table(manifests: list[Manifest], decided: dict[str, tuple[bool, str]]) -> Table:
    t = Table(title="backups")
    for col in ("backup", "dataset", "finished", "action", "why"):
        t.add_column(col, overflow="fold")
    for m in sorted(manifests, key=lambda m: (m.dataset, m.finished_at)):
        keep, why = decided[m.backup_id]
        when = f"{m.finished_at:%Y-%m-%d %H:%M:%S}"
        t.add_row(m.backup_id, m.dataset, when, "keep" if keep else "forget", Text(why))
    return t


def _unreadable_rows(t: Table, unreadable: list[str], forget: Collection[str]) -> Table:
    """Backups whose manifest cannot be read: kept (their age is unknown) unless named."""
    for b in unreadable:
        if b in forget:
            t.add_row(b, "?", "?", "forget", Text("dropped: named by --forget"))
        else:
            t.add_row(b, "?", "?", "keep", Text("kept: manifest unreadable, its age is unknown"))
    return t


def _pack_table(rep: GcReport, dry_run: bool) -> Table:
    t = Table(title="packs to reclaim")
    for col in ("pack", "size", "why", "outcome"):
        t.add_column(col, overflow="fold")
    locked = {p.pack_id: why for p, why in rep.locked}
    failed = {p.pack_id: why for p, why in rep.repack_failed}
    deleted = {p.pack_id for p in rep.deleted}
    rows = [(p, "no blob used", "deleted") for p in rep.plan.garbage]
    for u in rep.plan.repack:
        used = f"{size(u.used_bytes)} used, {size(u.unused_bytes)} unused"
        rows.append((u.pack, used, "repacked"))
    for p, why, done in rows:
        if p.pack_id in locked:
            outcome = f"kept: {locked[p.pack_id]}"
        elif p.pack_id in failed:
            outcome = f"kept as is: {failed[p.pack_id]}"
        elif p.pack_id in deleted:
            outcome = done
        elif rep.deferred:
            outcome = "kept for now (deferred)"
        else:
            outcome = f"would be {done}" if dry_run else "kept"
        t.add_row(p.key, size(p.size), why, Text(outcome))
    return t


async def _load(repo: Repository, ids: list[str]) -> list[Manifest]:
    """Every readable manifest. An unreadable one is left out of the decision (kept);
    garbage collection then holds back and the report names it (engine/maintenance/prune.py)."""
    out: list[Manifest] = []
    for backup_id in ids:
        try:
            out.append(await repo.load_manifest(backup_id))
        except IntegrityError:
            continue
    return out


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _notes(rep: GcReport, dry_run: bool) -> list[str]:
    """The summary line first, then one line per thing the operator should know."""
    plan = rep.plan
    lines = [
        f"backup {b}: {why.split(':', 1)[0]}, its chunks are kept; "
        "run `mosaic-backup repo repair snapshots`"
        for b, why in plan.held
    ]
    lines += [
        f"lease of {x.purpose} by {x.holder} (pid {x.pid} on {x.host}) treated as gone: "
        f"{why}; removed"
        for x, why in plan.dead
    ]
    if dry_run:
        freed = 0 if rep.deferred or plan.held else plan.estimated_freed
        freed += sum(t.size for t in plan.temporaries)
        head = (
            f"would delete {_n(len(plan.garbage), 'pack')} and repack "
            f"{_n(len(plan.repack), 'pack')} (about {size(freed)} reclaimed); "
            f"would remove {_n(len(plan.temporaries), 'unfinished upload')}"
        )
    else:
        head = (
            f"reclaimed {size(rep.bytes_freed)} ({rep.bytes_freed:,} bytes): deleted "
            f"{_n(len(rep.deleted), 'pack')} ({len(rep.repacked)} of them repacked into "
            f"{_n(len(rep.new_packs), 'new pack')}, {size(rep.bytes_written)} written), "
            f"removed {_n(len(rep.temporaries_removed), 'unfinished upload')}"
        )
    lines.insert(0, head)
    if plan.held_back:
        lines.append(f"garbage collection held back: {plan.held_back}")
    if plan.damaged_segments:
        lines.append(
            f"{_n(len(plan.damaged_segments), 'damaged index segment')} read from pack "
            "headers instead" + ("" if dry_run or rep.deferred or plan.held else "; replaced")
        )
    return lines


async def prune_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as repo:
        ids = sorted(await repo.list_manifests())
        manifests = await _load(repo, ids)
        # a damaged manifest can still be forgotten by name (deleting needs no reading)
        unreadable = sorted(set(ids) - {m.backup_id for m in manifests})
        decided = _decide(args, manifests, unreadable)
        gone = plan_forget(manifests, {b for b, (keep, _) in decided.items() if keep})
        gone += [b for b in unreadable if b in (args.forget or ())]
        if not args.dry_run:
            await forget(repo, gone)
        rep = await collect_garbage(
            repo,
            margin=timedelta(seconds=args.margin),
            dry_run=args.dry_run,
            forgotten=gone,
            max_unused=args.max_unused,
        )
        where = (repo.target.name, repo.config.repository_id)
    if not out.is_terminal:
        out.width = max(out.width, 200)
    out.print(_unreadable_rows(_manifest_table(manifests, decided), unreadable, args.forget or ()))
    if rep.plan.garbage or rep.plan.repack:
        out.print(_pack_table(rep, args.dry_run))
    verb = "would remove" if args.dry_run else "removed"
    if args.dry_run:
        going = rep.plan.garbage + [u.pack for u in rep.plan.repack]
        packs = [] if rep.deferred or rep.plan.held else going
        freed = rep.plan.estimated_freed if packs else 0
    else:
        packs, freed = rep.deleted, rep.bytes_freed
    line = (
        f"{verb} {_n(len(gone), 'backup')}, {_n(len(packs), 'pack')} ({size(freed)} freed); "
        f"{_n(len(rep.locked), 'pack')} kept because Object-Locked; "
        f"{_n(len(rep.plan.keep), 'pack')} kept"
    )
    if rep.plan.unreadable:
        line += f"; {_n(len(rep.plan.unreadable), 'unreadable pack')} left alone (run verify)"
    if rep.deferred:
        line += f"; garbage collection deferred: {rep.deferred}"
    out.print(line, highlight=False, soft_wrap=True)
    for note in _notes(rep, args.dry_run):
        out.print(note, highlight=False, soft_wrap=True)
    if not args.dry_run and (gone or rep.deleted):
        shown = ", ".join(sorted(gone)[:20]) + (" …" if len(gone) > 20 else "")
        await local_audit.report(
            load(args.config, AgentConfig),
            "pruned",
            f"forgot {_n(len(gone), 'backup')} ({shown or 'none'}), deleted "
            f"{_n(len(rep.deleted), 'pack')}, repacked {_n(len(rep.repacked), 'pack')} "
            f"({size(rep.bytes_freed)} reclaimed)",
            err,
            target=where[0],
            repository_id=where[1],
        )
    return 0
