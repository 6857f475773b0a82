"""``repo find``: in which backups a path exists, with its size and mtime in each.

The search lives in engine.find (the pattern's rules are in its docstring); this module
prints one table row per match, oldest backup first, or one line saying nothing
matched (exit 0: finding nothing is an answer, not an error).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.find import FindResult, find_paths
from mosaic.commands.repo._common import common_args, opened
from mosaic.ui.display import size
from shared.errors import ConfigError

PATTERN_HELP = (
    "glob on the stored path: without '/' it matches a name at any depth (*.conf), with "
    "'/' the whole path (etc/nginx/*.conf); * and ? stay inside one name, ** spans "
    "folders (etc/**/*.conf); a trailing '/' matches folders only; quote it for the shell"
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("find", help="in which backups a path exists, with size and mtime")
    common_args(p)
    p.add_argument("pattern", metavar="PATTERN", help=PATTERN_HELP)
    p.add_argument("--dataset", default=None, metavar="D", help="only backups of this dataset")
    p.add_argument(
        "--since",
        default=None,
        metavar="DATE",
        help="only backups finished on or after DATE (2026-12-01, or 2026-12-01T08:00; UTC)",
    )
    p.set_defaults(func=find_cmd)


def since_arg(text: str) -> datetime:
    """``--since``: an ISO date or date and time, UTC unless it names an offset."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since: {text!r} is not a date; write it like 2026-12-01 or 2026-12-01T08:00"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _mtime(ns: int) -> str:
    return f"{datetime.fromtimestamp(ns / 1e9, UTC):%Y-%m-%d %H:%M:%S}"


def _table(result: FindResult, pattern: str) -> Table:
    t = Table(title=f"paths matching {pattern}")
    for col in ("backup id", "dataset", "finished", "path", "type", "size", "mtime (UTC)"):
        t.add_column(col, overflow="fold" if col == "path" else "ellipsis", no_wrap=col != "path")
    for f in result.found:
        m, node = f.manifest, f.node
        t.add_row(
            m.backup_id,
            m.dataset,
            f"{m.finished_at:%Y-%m-%d %H:%M:%S}",
            Text(f.shown),
            node.type,
            "—" if f.secret or node.type == "dir" else size(node.size),
            _mtime(node.mtime_ns),
        )
    return t


async def find_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    since = since_arg(args.since) if args.since is not None else None
    async with opened(args) as repo:
        result = await find_paths(repo, args.pattern, dataset=args.dataset, since=since)
    scope = f"{result.searched:,} backup{'' if result.searched == 1 else 's'}"
    if args.dataset is not None:
        scope += f" of dataset {args.dataset}"
    if since is not None:
        scope += f" finished since {since:%Y-%m-%d %H:%M}"
    if not result.found:
        out.print(Text(f"no path matches {args.pattern!r} in {scope}"), soft_wrap=True)
        return 0
    if not out.is_terminal:
        out.width = max(out.width, 160)
    out.print(_table(result, args.pattern))
    backups = len({f.manifest.backup_id for f in result.found})
    n = len(result.found)
    matches = f"{n:,} match{'' if n == 1 else 'es'}"
    out.print(Text(f"{matches} in {backups:,} of {scope}"), soft_wrap=True)
    return 0
