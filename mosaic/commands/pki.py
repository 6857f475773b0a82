"""``mosaic-backup pki init DIR`` / ``pki issue DIR NAME``: a small certificate
authority for NATS TLS (:mod:`mosaic.setup.pki`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

HELP = "a certificate authority for NATS TLS"


def register(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("init", help="create ca.crt and ca.key in DIR")
    a.add_argument("dir", metavar="DIR")
    a = actions.add_parser("issue", help="issue NAME.crt and NAME.key signed by DIR's CA")
    a.add_argument("dir", metavar="DIR")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--server", action="store_true", help="a server certificate (needs --host)")
    a.add_argument(
        "--host",
        action="append",
        default=[],
        dest="hosts",
        metavar="HOST",
        help="a DNS name or IP address clients connect to (repeatable)",
    )


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic.setup.pki import init_ca, issue

    folder = Path(args.dir)
    if args.action == "init":
        crt, key = init_ca(folder)
        out.print(f"wrote {crt} and {key} (0600); keep {key.name} offline after issuing")
    else:
        crt, key = issue(folder, args.name, server=args.server, hosts=args.hosts)
        out.print(f"wrote {crt} and {key} (0600)")
    return 0
