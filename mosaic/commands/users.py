"""``mosaic-backup users add|passwd|mfa|disable|list``: the console's local users.

Run on the coordinator's host: it opens the catalog that coordinator.toml names (or
``--catalog URL``) directly, like ``audit``, so the first admin can be made before any
login exists. A password comes from a prompt (asked twice) or ``--password-file``
(``-`` for stdin; one line). MFA enrolment (for roles in ``[auth] mfa_required_roles``,
or with ``--mfa``) prints the authenticator's QR code, its ``otpauth://`` URI and ten
recovery codes, once: they are never shown again.
"""

from __future__ import annotations

import argparse
import getpass
import re
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from coordinator.audit import AuditTrail
from coordinator.auth import roles, totp
from coordinator.auth.store import UserStore
from coordinator.catalog import Catalog, open_catalog
from shared.config.auth import ROLES, AuthConfig
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load
from shared.errors import ConfigError

HELP = "local users of the console and HTTP API (on the coordinator's host)"


def catalog_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="coordinator.toml (its catalog and [auth] are used)")
    src.add_argument("--catalog", help="catalog URL: sqlite:///PATH or postgresql://…")


@asynccontextmanager
async def opened(args: argparse.Namespace) -> AsyncIterator[tuple[Catalog, AuthConfig]]:
    """The catalog and [auth] settings the command works on."""
    if args.catalog:
        url, auth = args.catalog, AuthConfig()
    else:
        cfg = load(args.config, CoordinatorConfig)
        url, auth = cfg.catalog.url, cfg.auth
    if not re.match(r"^(sqlite|postgres|postgresql)://", url):
        shown = re.sub(r"//[^/@]*@", "//", url)
        raise ConfigError(
            f"{args.command}: --catalog {shown!r} is not sqlite:///PATH or postgresql://…"
        )
    catalog = await open_catalog(url)
    try:
        yield catalog, auth
    finally:
        await catalog.aclose()


def actor(command: str) -> str:
    """Who the audit trail names for a change made here."""
    return f"{getpass.getuser()}@{socket.gethostname()} ({command} CLI)"


def register(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("add", help="add a user")
    a.add_argument("name")
    a.add_argument("--role", required=True, help=f"one of: {', '.join(ROLES)}")
    a.add_argument("--mfa", action="store_true", help="enrol TOTP even if the role needs none")
    a.add_argument("--password-file", help="read the password from this file ('-': stdin)")
    catalog_args(a)
    a.set_defaults(func=add_cmd)
    a = actions.add_parser("passwd", help="set a user's password (ends its sessions)")
    a.add_argument("name")
    a.add_argument("--password-file", help="read the password from this file ('-': stdin)")
    catalog_args(a)
    a.set_defaults(func=passwd_cmd)
    a = actions.add_parser("mfa", help="enrol a user's authenticator (TOTP)")
    a.add_argument("name")
    a.add_argument("--reset", action="store_true", help="replace an enrolled authenticator")
    catalog_args(a)
    a.set_defaults(func=mfa_cmd)
    a = actions.add_parser("disable", help="disable a user (ends its sessions)")
    a.add_argument("name")
    catalog_args(a)
    a.set_defaults(func=disable_cmd)
    a = actions.add_parser("list", help="the users, their role, MFA and last login")
    catalog_args(a)
    a.set_defaults(func=list_cmd)


def read_password(args: argparse.Namespace) -> str:
    """The new password: from ``--password-file`` (first line) or asked twice."""
    if args.password_file:
        try:
            text = (
                sys.stdin.read()
                if args.password_file == "-"
                else Path(args.password_file).read_text()
            )
        except OSError as exc:
            raise ConfigError(f"--password-file {args.password_file}: {exc.strerror}") from exc
        return text.splitlines()[0] if text else ""
    if not sys.stdin.isatty():
        raise ConfigError("no terminal to ask for the password; pass --password-file FILE (or -)")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise ConfigError("the two passwords differ; nothing was changed")
    return first


def show_enrolment(out: Console, name: str, enrol: totp.Enrolment) -> None:
    out.print(f"MFA for {name}: scan this QR code with an authenticator app", highlight=False)
    out.file.write(totp.qr_text(enrol.uri))
    out.file.flush()
    out.print(f"or enter the key by hand: {enrol.secret}", highlight=False)
    out.print(f"URI: {enrol.uri}", highlight=False, soft_wrap=True)
    out.print("recovery codes (each works once; store them offline, they are not shown again):")
    for code in enrol.recovery_codes:
        out.print(f"  {code}", highlight=False)


async def add_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    role = roles.parse_role(args.role)
    password = read_password(args)
    async with opened(args) as (catalog, auth):
        store = UserStore(catalog, AuditTrail(catalog), auth)
        enrol = await store.add(args.name, role, password, mfa=args.mfa, actor=actor("users add"))
    out.print(f"user {args.name} added with role {role}", highlight=False)
    if enrol is not None:
        show_enrolment(out, args.name, enrol)
    return 0


async def passwd_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    password = read_password(args)
    async with opened(args) as (catalog, auth):
        store = UserStore(catalog, AuditTrail(catalog), auth)
        await store.set_password(args.name, password, actor=actor("users passwd"))
    out.print(f"password of {args.name} changed; its sessions ended", highlight=False)
    return 0


async def mfa_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as (catalog, auth):
        store = UserStore(catalog, AuditTrail(catalog), auth)
        enrol = await store.enrol_mfa(args.name, reset=args.reset, actor=actor("users mfa"))
    show_enrolment(out, args.name, enrol)
    return 0


async def disable_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as (catalog, auth):
        store = UserStore(catalog, AuditTrail(catalog), auth)
        await store.disable(args.name, actor=actor("users disable"))
    out.print(f"user {args.name} disabled; its sessions ended", highlight=False)
    return 0


async def list_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    async with opened(args) as (catalog, auth):
        users = await UserStore(catalog, AuditTrail(catalog), auth).list()
    table = Table(title=f"users ({len(users)})")
    for col in ("name", "role", "MFA", "disabled", "last login (UTC)"):
        table.add_column(col, no_wrap=True)
    for u in users:
        mfa = "yes" if u.totp_secret else ("MISSING" if auth.mfa_required(u.role) else "no")
        last = f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "never"
        table.add_row(u.name, u.role, mfa, "yes" if u.disabled else "no", last)
    out.print(table)
    return 0
