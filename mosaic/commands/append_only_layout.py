"""``mosaic-backup append-only-layout PATH``: a local repository's folders, made
append-only (``chattr +a``) before the agent ever writes there."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

HELP = "create a local repository's folders with chattr +a (run with full rights)"


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the repository folder of an append_only local target")
    p.add_argument(
        "--no-chattr", action="store_true", help="only create the folders (no attribute)"
    )


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from engine.storage.local import prepare_append_only

    root = Path(args.path)
    done_folders = prepare_append_only(root, chattr=not args.no_chattr)
    what = f"{len(done_folders)} folders made append-only (chattr +a)"
    out.print(f"{root}: repository folders ready; {what if done_folders else 'no chattr'}")
    return 0
