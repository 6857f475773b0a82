"""``repo export``: write a backup as a plain tar archive (no lock-in).

A file is written under a temporary name and renamed when complete, so a failed or
interrupted export never leaves something that looks like a whole archive. ``-o -``
writes to stdout (for ``| ssh … tar -x``); everything human goes to stderr then.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import IO

import anyio
import anyio.to_thread
from rich.console import Console

from engine.restore.export import export_tar
from mosaic.commands.repo._common import common_args, opened
from mosaic.ui.display import print_partial, size
from mosaic.ui.progress import byte_bar
from shared.errors import ConfigError, PartialRestoreError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export", help="write a backup as a plain tar archive, readable without mosaic-backup"
    )
    common_args(p)
    p.add_argument("backup_id", metavar="BACKUP_ID")
    p.add_argument("--format", choices=["tar"], default="tar", help="archive format (tar)")
    p.add_argument("--zstd", action="store_true", help="compress the archive with zstd")
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="archive file, or - for stdout"
    )
    p.set_defaults(func=export_cmd)


def _open_temp(final: str) -> tuple[IO[bytes], str]:
    """Mode 0600 (mkstemp's): the archive holds the backup's data unencrypted."""
    folder = os.path.dirname(os.path.abspath(final))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", dir=folder)
    return os.fdopen(fd, "wb"), tmp


def _finish(f: IO[bytes], tmp: str, final: str, ok: bool) -> None:
    f.close()
    if ok:
        os.replace(tmp, final)
    else:
        os.unlink(tmp)


async def export_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    to_stdout = args.output == "-"
    if to_stdout and sys.stdout.isatty():
        raise ConfigError(
            "refusing to write a tar archive to a terminal: redirect stdout or use -o"
        )
    async with opened(args) as repo:
        m = await repo.load_manifest(args.backup_id)
        bar, _, report = byte_bar(err, f"export {args.backup_id}")

        t0 = time.monotonic()
        partial: PartialRestoreError | None = None
        if to_stdout:
            with bar:
                try:
                    files, nbytes = await export_tar(
                        repo, m, sys.stdout.buffer, zstd=args.zstd, report=report
                    )
                except PartialRestoreError as exc:
                    partial = exc
        else:
            f, tmp = await anyio.to_thread.run_sync(_open_temp, args.output)
            ok = False
            try:
                with bar:
                    try:
                        files, nbytes = await export_tar(repo, m, f, zstd=args.zstd, report=report)
                    except PartialRestoreError as exc:
                        partial = exc  # a whole archive, damaged ranges zeroed and listed
                ok = True
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_finish, f, tmp, args.output, ok)
    if partial is not None:
        return print_partial(err, partial)
    where = "stdout" if to_stdout else args.output
    err.print(
        f"exported {files:,} files, {size(nbytes)} in {time.monotonic() - t0:.2f} s to {where}",
        highlight=False,
        soft_wrap=True,
    )
    return 0
