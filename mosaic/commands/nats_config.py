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

    from mosaic.setup.natsconfig import TlsFiles as _Tls

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
    c = p.add_argument_group(
        "cluster", "a NATS cluster: every member gets the same users (docs/operations.md)"
    )
    c.add_argument(
        "--servers",
        default=None,
        metavar="N1,N2,N3",
        help="write one config per server, OUT/<name>/nats-server.conf (with --cluster-hosts)",
    )
    c.add_argument(
        "--cluster-hosts",
        default=None,
        metavar="H1,H2,H3",
        help="host[:route port] of each --servers member, in order (route port default 6222)",
    )
    c.add_argument(
        "--client-ports",
        default=None,
        metavar="P1,P2,P3",
        help="client port of each --servers member (default: --port for all)",
    )
    c.add_argument("--server-name", default=None, help="write one member's config: its name")
    c.add_argument(
        "--cluster-routes",
        default=None,
        metavar="H1:6222,…",
        help="with --server-name: every member's host:route port (itself included)",
    )
    c.add_argument(
        "--cluster-port", type=int, default=6222, help="with --server-name: its route port"
    )
    c.add_argument("--cluster-name", default="mosaic", help="cluster name (default: mosaic)")
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
    if args.servers or args.server_name:
        return _run_cluster(args, tls, out)
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


def _run_cluster(args: argparse.Namespace, tls: _Tls | None, out: Console) -> int:
    from mosaic.setup.natscluster import ClusterRequest, client_urls, write_cluster, write_member

    if bool(args.servers) == bool(args.server_name):
        raise ConfigError("nats-config: give --servers (all members) or --server-name (one)")
    req = ClusterRequest(
        agents=[a.strip() for a in args.agents.split(",") if a.strip()],
        coordinator_user=args.coordinator_user,
        operator_user=args.operator_user,
        role_users=_role_users(args),
        listen=args.listen,
        port=args.port,
        store_dir=Path(args.store_dir) if args.store_dir else None,
        tls=tls,
        nkeys_dir=Path(args.nkeys) if args.nkeys else None,
        cluster_name=args.cluster_name,
    )
    root = Path(args.out)
    what = f"NKEY seeds in {args.nkeys}" if args.nkeys else f"passwords in {root / 'creds'}"
    if args.server_name:
        if not args.cluster_routes:
            raise ConfigError("nats-config: --server-name needs --cluster-routes H1:6222,…")
        conf = write_member(root, req, args.server_name, args.cluster_routes, args.cluster_port)
        out.print(f"wrote {conf} and {what} (mode 0600)")
        return 0
    if not args.cluster_hosts:
        raise ConfigError("nats-config: --servers needs --cluster-hosts H1,H2,H3 (one per server)")
    confs = write_cluster(root, req, args.servers, args.cluster_hosts, args.client_ports)
    for conf in confs:
        out.print(f"wrote {conf}: copy it to its host")
    ports = [int(p) for p in args.client_ports.split(",")] if args.client_ports else []
    scheme = "tls" if tls is not None else "nats"
    urls = client_urls(args.cluster_hosts, ports or [args.port] * len(confs), scheme)
    out.print(f"and {what} (mode 0600); for every client:")
    out.print(f"nats_url = {urls!r}", markup=False, highlight=False, soft_wrap=True)
    return 0
