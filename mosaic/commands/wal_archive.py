"""``mosaic-backup wal-archive --spool DIR %p %f``: PostgreSQL's archive_command.

PostgreSQL runs it once per WAL file and waits for it, so it must start fast: ``run``
is a plain function, called before any event loop, logging or thread starts, and the
only thing it imports is :mod:`agent.walarchive`.
"""

from __future__ import annotations

import argparse

HELP = "PostgreSQL archive_command: copy a WAL file into the agent's spool"
DESCRIPTION = "archive_command = 'mosaic-backup wal-archive --spool DIR %%p %%f'"


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spool", required=True, help="the postgres source's wal_spool folder")
    p.add_argument("wal_path", metavar="PATH", help="%%p: the file to archive")
    p.add_argument("wal_name", metavar="NAME", help="%%f: its file name")


def run(args: argparse.Namespace) -> int:
    from agent.walarchive import main as wal_archive  # its checks and its error lines

    return wal_archive(["--spool", args.spool, "--", args.wal_path, args.wal_name])
