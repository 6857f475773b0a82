"""``repo verify``: find damage in the repository before a restore does.

The checks live in engine.maintenance.verify; this module opens the repository, draws
the progress bar and prints what was found: a table of damaged objects, optionally every affected
file, and one summary line. It opens the repository with
:func:`engine.maintenance.verify_open.open_for_verify`, so a damaged index segment is
reported like any other damaged object.

Exit codes, so it can run from cron or a monitor (docs/integrity.md): 0 clean; 1 damage
found (one summary line on stderr naming the repair command), or an error that stopped
verify before it checked anything (bad config, wrong key); 3 ("could not read") some
objects, or the repository itself, could not be read even after the target's retries and
nothing that was read is damaged: the result is incomplete, try again.
"""

from __future__ import annotations

import argparse
import os
import secrets

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.keys.files import load_key_file
from engine.maintenance.verify import Problem, VerifyReport, could_not_read, one_line, verify
from engine.maintenance.verify_open import open_for_verify
from mosaic.commands.repo._common import common_args, target_from
from mosaic.ui.display import size
from mosaic.ui.progress import byte_bar
from shared.errors import TargetError, WrongKeyError

SHOWN = 3  # messages and backups per table cell; --detailed shows all
EXIT_CLEAN = 0
EXIT_DAMAGE = 1
EXIT_UNREADABLE = 3  # 2 is argparse's "bad usage"


def percent(text: str) -> float:
    """``--subset`` value: ``N%`` (or ``N``) with 0 < N <= 100."""
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage like 10%") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: choose a share above 0% and up to 100%")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("verify", help="check backups for damage without restoring them")
    common_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("backup_ids", nargs="*", default=[], metavar="BACKUP_ID")
    which.add_argument("--all", action="store_true", help="every backup in the repository")
    p.add_argument(
        "--read-data",
        action="store_true",
        help="also download every referenced pack and check every blob in it",
    )
    p.add_argument(
        "--subset",
        type=percent,
        default=None,
        metavar="N%",
        help="read only a random N%% of the packs (implies --read-data)",
    )
    p.add_argument("--seed", type=int, default=None, help="repeat the --subset choice of a run")
    p.add_argument(
        "--detailed",
        action="store_true",
        help="list each damaged object with every backup and file it affects",
    )
    p.set_defaults(func=verify_cmd)


def _cell(items: list[str], more: str) -> Text:
    shown = items[:SHOWN]
    if len(items) > SHOWN:
        shown.append(f"… and {len(items) - SHOWN} more {more}")
    return Text("\n".join(shown))


def _table(problems: list[Problem]) -> Table:
    t = Table(title="damaged objects", show_lines=True)
    t.add_column("object", overflow="fold")
    t.add_column("problem", overflow="fold")
    t.add_column("affected backups", overflow="fold")
    for p in problems:
        cell = _cell(p.messages, "problems")
        if p.repair:
            cell.append(f"\nrepair: {p.repair}")
        t.add_row(Text(p.obj), cell, _cell(sorted(p.backups), "backups"))
    return t


def _details(out: Console, problems: list[Problem]) -> None:
    for p in problems:
        out.print(Text(p.obj, style="bold"))
        for message in p.messages:
            out.print(Text(f"  {message}"))
        for backup in sorted(p.backups):
            files = sorted(p.files.get(backup, ()))
            what = _n(len(files), "file") if files else "its manifest or tree (files unknown)"
            out.print(Text(f"  backup {backup}: {what}"))
            for path in files:
                out.print(Text(f"    {os.fsdecode(path)}"))
        if not p.backups:
            out.print(Text("  affects no backup directly"))


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _summary(rep: VerifyReport) -> str:
    checked = f"checked {_n(len(rep.backups), 'backup')}, {_n(rep.packs, 'pack')}"
    if rep.packs_read:
        checked += f", read {_n(rep.packs_read, 'pack')} ({size(rep.bytes_read)}, "
        checked += f"{_n(rep.blobs_checked, 'blob')})"
    if rep.forgotten:
        checked += f" ({_n(len(rep.forgotten), 'backup')} forgotten during verify, skipped)"
    if rep.ok:
        line = f"{checked}: no damage found"
        if rep.unreadable:
            line += " in what could be read"
    else:
        hit = set().union(*(p.backups for p in rep.problems.values()))
        damaged = _n(len(rep.problems), "damaged object")
        line = f"{checked}: {damaged}, affecting {_n(len(hit), 'backup')}"
    if rep.unreadable:
        line += f"; could not read {_n(len(rep.unreadable), 'object')}, try again"
    repairs = sorted({p.repair for p in rep.problems.values() if p.repair})
    if repairs:
        line += f"; repair: {'; '.join(repairs)}"
    return line


def _unreadable(out: Console, rep: VerifyReport) -> None:
    for obj, why in sorted(rep.unreadable.items()):
        out.print(Text(f"could not read {obj}, try again: {why}"), soft_wrap=True)
    for backup_id in rep.forgotten:
        out.print(Text(f"backup {backup_id}: forgotten during verify, skipped"))


async def verify_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    read_data = args.read_data or args.subset is not None
    subset = args.subset if args.subset is not None else 100.0
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 32)
    cfg, target = target_from(args)
    try:
        key = load_key_file(cfg.key_file)
        try:
            repo, found = await open_for_verify(target, key)
        except WrongKeyError:
            raise WrongKeyError(
                f"key file {cfg.key_file} does not open the repository at "
                f"{target.describe()}: wrong key file"
            ) from None
        if subset < 100:
            out.print(f"reading {subset:g}% of the packs, seed {seed} (repeat with --seed {seed})")
        bar, _, report = byte_bar(err, "verify")

        with bar:
            rep = await verify(
                repo,
                None if args.all else args.backup_ids,
                read_data=read_data,
                subset=subset,
                seed=seed,
                found=found,
                report=report,
            )
    except TargetError as exc:
        if not could_not_read(exc):
            raise
        again = ", try again" if exc.retryable else ""
        err.print(
            f"mosaic-backup: error: verify: could not read the repository{again}: {one_line(exc)}",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_UNREADABLE
    finally:
        await target.aclose()
    problems = sorted(rep.problems.values(), key=lambda p: p.obj)
    if problems:
        if not out.is_terminal:  # a file or pipe (cron, logs): object names whole
            out.width = max(out.width, 200)
        out.print(_table(problems))
        if args.detailed:
            _details(out, problems)
    _unreadable(out, rep)
    line = _summary(rep)
    out.print(line, highlight=False, soft_wrap=True)
    if problems or rep.unreadable:
        err.print(f"mosaic-backup: error: verify: {line}", highlight=False, soft_wrap=True)
    if problems:
        return EXIT_DAMAGE
    return EXIT_UNREADABLE if rep.unreadable else EXIT_CLEAN
