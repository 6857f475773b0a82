"""``mosaic-backup audit``: the audit trail from the catalog, as a table.

It reads the catalog directly (the coordinator's config names it, or ``--catalog URL``)
rather than asking the coordinator over NATS: the trail must stay readable when the
coordinator is down, which is when one most wants to know who did what.
"""

from __future__ import annotations

import argparse
import re

from rich.console import Console
from rich.table import Table

from coordinator.catalog import open_catalog
from coordinator.catalog.base import AuditEntry
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load
from shared.errors import ConfigError

HELP = "who started backups and restores, and when the policy changed"


def register(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="coordinator.toml (its catalog is read)")
    src.add_argument("--catalog", help="catalog URL: sqlite:///PATH or postgresql://…")
    p.add_argument("--limit", type=int, default=50, help="newest N entries (default 50)")
    p.add_argument("--action", default=None, help="only this action (e.g. restore_requested)")


def audit_table(entries: list[AuditEntry]) -> Table:
    table = Table(title=f"audit trail (newest first, {len(entries)} entries)")
    for col in ("when (UTC)", "action", "actor", "dataset", "backup"):
        table.add_column(col, no_wrap=True)  # whole ids: they are copied into commands
    table.add_column("detail", overflow="fold")
    for e in entries:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.action,
            e.actor,
            e.dataset or "",
            e.backup_id or "",
            e.detail,
        )
    return table


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.limit < 1:
        raise ConfigError(f"audit: --limit {args.limit} must be at least 1")
    url = args.catalog if args.catalog else load(args.config, CoordinatorConfig).catalog.url
    if not re.match(r"^(sqlite|postgres|postgresql)://", url):
        shown = re.sub(r"//[^/@]*@", "//", url)
        raise ConfigError(f"audit: --catalog {shown!r} is not sqlite:///PATH or postgresql://…")
    catalog = await open_catalog(url)
    try:
        entries = await catalog.list_audit(limit=args.limit, action=args.action)
    finally:
        await catalog.aclose()
    out.print(audit_table(entries))
    return 0
