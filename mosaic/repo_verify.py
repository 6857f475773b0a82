"""``repo verify``: find damage in the repository before a restore does.

The checks live in agent/verify.py; this module opens the repository, draws the progress
bar and prints what was found: a table of damaged objects, optionally every affected
file, and one summary line. It loads the index itself, not through Repository.open, so a
damaged index segment is reported like any other damaged object instead of making the
repository unopenable (Repository has no tolerant index load to call). Exit code 0 means clean,
1 means damage (with one summary line on stderr), so it can run from cron or a monitor.
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any, cast

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.verify import Problem, VerifyReport, verify
from mosaic.display import size
from mosaic.progress import byte_bar
from mosaic.repo_cli import common_args, target_from
from shared.errors import ObjectNotFound, RepositoryError, TargetError, WrongKeyError
from shared.repository import format as fmt
from shared.repository.crypto import open_sealed
from shared.repository.index import IndexEntry
from shared.repository.keys import load_key_file
from shared.repository.pack import PackEntry
from shared.repository.repository import Repository
from shared.targets.base import ObjectInfo, Target

SHOWN = 3  # messages and backups per table cell; --detailed shows all
_index_dec = msgspec.msgpack.Decoder(list[tuple[bytes, list[PackEntry]]])


class _IndexHidden:
    """The target, listing no ``index/`` while ``hiding``: Repository.open then loads no
    index, and :func:`open_for_verify` loads it segment by segment."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.hiding = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        if not (self.hiding and prefix.startswith(fmt.INDEX_PREFIX)):
            async for obj in self.inner.list(prefix):
                yield obj


async def open_for_verify(target: Target, master_key: bytes) -> tuple[Repository, VerifyReport]:
    """Open the repository, loading every index segment that opens and reporting the rest."""
    view = _IndexHidden(target)
    repo = await Repository.open(cast(Target, view), master_key)
    view.hiding = False
    report = VerifyReport()
    async for obj in target.list(fmt.INDEX_PREFIX):
        try:
            _, payload = open_sealed(repo.keys, obj.key.encode(), await target.get(obj.key), "")
            packs = _index_dec.decode(payload)
        except ObjectNotFound:
            continue  # removed since the listing (a concurrent prune): not damage
        except (RepositoryError, TargetError) as exc:
            report.add(obj.key, str(exc).removeprefix(": "))
            continue
        except msgspec.DecodeError as exc:
            report.add(obj.key, f"index segment is invalid ({exc})")
            continue
        for pack_id, entries in packs:
            for e in entries:
                repo.index[e.id] = IndexEntry(pack_id, e.offset, e.length, e.otype, e.raw_length)
    repo.index.compact()
    return repo, report


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
        t.add_row(Text(p.obj), _cell(p.messages, "problems"), _cell(sorted(p.backups), "backups"))
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
    if rep.ok:
        return f"{checked}: no damage found"
    hit = set().union(*(p.backups for p in rep.problems.values()))
    damaged = _n(len(rep.problems), "damaged object")
    return f"{checked}: {damaged}, affecting {_n(len(hit), 'backup')}"


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
    finally:
        await target.aclose()
    problems = sorted(rep.problems.values(), key=lambda p: p.obj)
    if problems:
        if not out.is_terminal:  # a file or pipe (cron, logs): object names whole
            out.width = max(out.width, 200)
        out.print(_table(problems))
        if args.detailed:
            _details(out, problems)
    line = _summary(rep)
    out.print(line, highlight=False, soft_wrap=True)
    if problems:
        err.print(f"mosaic-backup: error: verify: {line}", highlight=False, soft_wrap=True)
        return 1
    return 0
