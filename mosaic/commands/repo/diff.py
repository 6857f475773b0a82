"""``repo diff``: what changed between two backups of one dataset — the configuration
history of a host is ``repo diff`` between its config backups of two dates.

The comparison lives in engine.trees; this module prints it: a table of the entries
added, removed, modified and changed only in their metadata, with their sizes in both
backups, then one summary line. ``--content`` adds a unified diff of each modified text
file (UTF-8, up to 1 MiB in both backups), read through the repository. A secret file
is named ``conf/<secret>``, shown as "changed" without sizes, and its content is never
read.
"""

from __future__ import annotations

import argparse
import difflib

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.format.manifest import Node
from engine.repository import Repository
from engine.trees import TEXT_LIMIT, BackupDiff, Change, diff_backups, read_text
from mosaic.commands.repo._common import common_args, opened
from mosaic.ui.display import size

LABELS = {"metadata": "metadata-only"}
ORDER = ("added", "removed", "modified", "metadata", "changed")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "diff", help="what changed between two backups of one dataset (added, removed, …)"
    )
    common_args(p)
    p.add_argument("old", metavar="BACKUP_A", help="the earlier backup")
    p.add_argument("new", metavar="BACKUP_B", help="the later backup (same dataset)")
    p.add_argument(
        "--path", default="", metavar="P", help="only the entries at or under this stored path"
    )
    p.add_argument(
        "--content",
        action="store_true",
        help="also show a unified diff of each modified text file (never of a secret file)",
    )
    p.set_defaults(func=diff_cmd)


def _size(node: Node | None) -> str:
    if node is None or node.type == "dir":
        return "—"
    return size(node.size)


def _type(c: Change) -> str:
    types = [n.type for n in (c.old, c.new) if n is not None]
    if not types:
        return "—"  # a secret: not even its type
    return types[0] if len(set(types)) == 1 else " → ".join(types)


def _table(d: BackupDiff) -> Table:
    t = Table(title=f"{d.old.backup_id} → {d.new.backup_id} (dataset {d.old.dataset})")
    t.add_column("change", no_wrap=True)
    t.add_column("path", overflow="fold")
    t.add_column("type", no_wrap=True)
    t.add_column("size A", justify="right", no_wrap=True)
    t.add_column("size B", justify="right", no_wrap=True)
    t.add_column("what changed", overflow="fold")
    for c in d.changes:
        t.add_row(
            LABELS.get(c.kind, c.kind),
            Text(c.shown),
            _type(c),
            _size(c.old),
            _size(c.new),
            ", ".join(c.what),
        )
    return t


def summary(changes: list[Change]) -> str:
    counts = {k: sum(c.kind == k for c in changes) for k in ORDER}
    label = {**LABELS, "changed": "secret changed"}
    parts = [f"{n:,} {label.get(k, k)}" for k, n in counts.items() if n]
    return ", ".join(parts) if parts else "no differences"


def _is_file(node: Node | None) -> bool:
    return node is not None and node.type in ("file", "hardlink")


async def _content(repo: Repository, d: BackupDiff, out: Console) -> None:
    """A unified diff of every modified text file; one line for every other one."""
    for c in d.changes:
        if c.secret:
            if c.kind == "changed":
                out.print(Text(f"{c.shown}: changed (a secret file: content not shown)"))
            continue
        if c.kind != "modified" or not (_is_file(c.old) and _is_file(c.new)):
            continue
        assert c.old is not None and c.new is not None
        if c.old.chunks == c.new.chunks:
            continue
        a = await read_text(repo, c.old, f"backup {d.old.backup_id}: {c.shown}")
        b = await read_text(repo, c.new, f"backup {d.new.backup_id}: {c.shown}")
        if a is None or b is None:
            limit = size(TEXT_LIMIT)
            out.print(Text(f"{c.shown}: binary or over {limit}, content not shown"))
            continue
        lines = difflib.unified_diff(
            a.splitlines(keepends=True),
            b.splitlines(keepends=True),
            fromfile=f"a/{c.shown}",
            tofile=f"b/{c.shown}",
        )
        for line in lines:
            out.print(Text(line.rstrip("\n")), soft_wrap=True, highlight=False)


async def diff_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as repo:
        d = await diff_backups(repo, args.old, args.new, args.path)
        if not out.is_terminal:  # a file or pipe: paths whole
            out.width = max(out.width, 160)
        if d.changes:
            out.print(_table(d))
        prefix = args.path.strip("/")
        where = f" under {prefix}" if prefix else ""
        out.print(
            f"{d.old.backup_id} → {d.new.backup_id}{where}: {summary(d.changes)}",
            highlight=False,
            soft_wrap=True,
        )
        if args.content:
            await _content(repo, d, out)
    return 0
