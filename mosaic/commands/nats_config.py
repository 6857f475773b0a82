"""``mosaic-backup nats-config``: a nats-server config with one user per agent, a
coordinator and an operator user, and their subject permissions
(:mod:`mosaic.setup.natsconfig`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from shared.config.auth import Role
from shared.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

HELP = "write a nats-server config with one user per agent and subject permissions"


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", required=True, help="agent names, comma-separated: a1,a2")
    p.add_argument("--coordinator-user", default="coordinator", help="default: coordinator")
    p.add_argument("--operator-user", default="operator", help="user for CLIs (default: operator)")
    for role in ("viewers", "operators", "admins"):
        p.add_argument(
            f"--{role}",
            default="",
            metavar="U1,U2",
            help=f"CLI users of the {role[:-1]} role: NATS lets them publish only its API verbs",
        )
    p.add_argument("--out", default=".", help="folder for nats-server.conf and creds/ (default: .)")
    p.add_argument("--listen", default="0.0.0.0", help="address nats-server binds (default: all)")
    p.add_argument("--port", type=int, default=4222, help="client port (default 4222)")
    p.add_argument("--store-dir", default=None, help="JetStream storage (default: OUT/jetstream)")
    p.add_argument("--tls-cert", default=None, help="server certificate (mosaic-backup pki issue)")
    p.add_argument("--tls-key", default=None, help="server key (with --tls-cert)")
    p.add_argument("--tls-ca", default=None, help="CA of client certificates (with --tls-verify)")
    p.add_argument(
        "--tls-verify", action="store_true", help="require a client certificate from every client"
    )
    p.add_argument(
        "--nkeys",
        default=None,
        metavar="DIR",
        help="NKEY users instead of passwords: one seed per user in DIR/<user>.nk (0600)",
    )


def _role_users(args: argparse.Namespace) -> dict[str, Role]:
    """``--viewers a,b --operators c`` → {"a": "viewer", "b": "viewer", "c": "operator"}."""
    out: dict[str, Role] = {}
    wanted: tuple[tuple[str, Role], ...] = (
        ("viewers", "viewer"),
        ("operators", "operator"),
        ("admins", "admin"),
    )
    for flag, role in wanted:
        for name in (n.strip() for n in getattr(args, flag).split(",")):
            if not name:
                continue
            if name in out:
                raise ConfigError(
                    f"nats-config: user {name!r} is given as {out[name]} and as {role}; "
                    "give each user one role"
                )
            out[name] = role
    return out


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mosaic.setup.natsconfig import TlsFiles, write_config

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("nats-config: give --tls-cert and --tls-key together")
    tls = None
    if args.tls_cert is not None:
        tls = TlsFiles(
            cert=Path(args.tls_cert),
            key=Path(args.tls_key),
            ca=Path(args.tls_ca) if args.tls_ca else None,
            verify=args.tls_verify,
        )
    conf = write_config(
        Path(args.out),
        [a.strip() for a in args.agents.split(",") if a.strip()],
        coordinator_user=args.coordinator_user,
        operator_user=args.operator_user,
        host=args.listen,
        port=args.port,
        store_dir=Path(args.store_dir) if args.store_dir else None,
        tls=tls,
        nkeys_dir=Path(args.nkeys) if args.nkeys else None,
        role_users=_role_users(args),
    )
    where = args.nkeys if args.nkeys else conf.parent / "creds"
    what = "NKEY seeds" if args.nkeys else "passwords"
    out.print(f"wrote {conf} and {what} in {where} (mode 0600)")
    return 0
