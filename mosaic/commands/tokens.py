"""``mosaic-backup tokens create|revoke|list``: API tokens for service accounts.

A token (``mbk_<id>_<secret>``) carries a role and an expiry; ``create`` prints it once,
and the catalog keeps only a hash of its secret, so a lost token is revoked and made
again, never shown. Prometheus presents a viewer token to scrape ``/metrics``. Like
``users``, it opens the catalog from coordinator.toml (or ``--catalog``) directly.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from coordinator.audit import AuditTrail
from coordinator.auth import roles
from coordinator.auth.tokens import TokenStore, parse_lifetime, state
from mosaic.commands.users import actor, catalog_args, opened
from shared.config.auth import ROLES
from shared.vocab import utcnow

HELP = "API tokens of service accounts (Prometheus, scripts), on the coordinator's host"


def register(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("create", help="make a token; it is printed once")
    a.add_argument("name")
    a.add_argument("--role", required=True, help=f"one of: {', '.join(ROLES)}")
    a.add_argument("--expires", default="90d", help="lifetime: 12h, 90d, 4w (default 90d)")
    catalog_args(a)
    a.set_defaults(func=create_cmd)
    a = actions.add_parser("revoke", help="revoke the active token of this name")
    a.add_argument("name")
    catalog_args(a)
    a.set_defaults(func=revoke_cmd)
    a = actions.add_parser("list", help="the tokens: role, expiry, last use (never the secret)")
    catalog_args(a)
    a.set_defaults(func=list_cmd)


async def create_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    role = roles.parse_role(args.role)
    lifetime = parse_lifetime(args.expires)
    async with opened(args) as (catalog, _):
        store = TokenStore(catalog, AuditTrail(catalog))
        rec, secret = await store.create(args.name, role, lifetime, actor=actor("tokens create"))
    out.print(
        f"token {rec.name} (id {rec.token_id}, role {rec.role}) expires "
        f"{rec.expires_at:%Y-%m-%d %H:%M} UTC; it is shown this once:",
        highlight=False,
    )
    print(secret, file=out.file, flush=True)  # whole, never wrapped
    return 0


async def revoke_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as (catalog, _):
        rec = await TokenStore(catalog, AuditTrail(catalog)).revoke(
            args.name, actor=actor("tokens revoke")
        )
    out.print(f"token {rec.name} (id {rec.token_id}) revoked", highlight=False)
    return 0


async def list_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as (catalog, _):
        tokens = await TokenStore(catalog, AuditTrail(catalog)).list()
    now = utcnow()
    table = Table(title=f"API tokens ({len(tokens)})")
    for col in ("name", "id", "role", "state", "expires (UTC)", "last used (UTC)", "created by"):
        table.add_column(col, no_wrap=True)
    for t in tokens:
        used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
        table.add_row(
            t.name,
            t.token_id,
            t.role,
            state(t, now),
            f"{t.expires_at:%Y-%m-%d %H:%M}",
            used,
            t.created_by,
        )
    out.print(table)
    return 0
