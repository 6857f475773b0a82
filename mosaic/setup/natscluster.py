"""``mosaic-backup nats-config`` for a NATS cluster: the same accounts and users on every
server, plus ``server_name`` and a ``cluster`` block whose routes log in as one
generated route user.

One command writes every member (``--servers n1,n2,n3 --cluster-hosts h1,h2,h3``)::

    OUT/creds/<user>.password   one per user, shared by all members (0600)
    OUT/creds/route.password    the route user's password (0600)
    OUT/n1/nats-server.conf     n1's config (0600), likewise n2/, n3/

and the operator copies ``OUT/nX/nats-server.conf`` to host X. ``--server-name n1
--cluster-routes h1:6222,h2:6222,h3:6222`` writes one member's config; it reuses the
passwords already in ``OUT/creds`` (so the folder copied from a first run gives the
same users on every host) and makes the missing ones.

The route password must appear in clear in the other members' route URLs
(``nats-route://route:PASSWORD@host:6222``), so every member's config holds it: the
configs are secrets, written 0600 like the password files. The cluster's own
``authorization`` holds its bcrypt hash. No JetStream domain: one cluster is one
JetStream domain already (domains matter only with leaf nodes).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

import bcrypt

from mosaic.setup.natsconfig import (
    BCRYPT_ROUNDS,
    NatsUser,
    TlsFiles,
    _write_private,
    plan_users,
    render,
    write_credentials,
)
from shared import subjects
from shared.config.auth import Role
from shared.errors import ConfigError

ROUTE_USER = "route"
DEFAULT_ROUTE_PORT = 6222
DEFAULT_CLUSTER_NAME = "mosaic"


@dataclass(frozen=True)
class Cluster:
    """What every member shares: its name, the route URLs' hosts and the route login."""

    name: str
    routes: tuple[tuple[str, int], ...]  # (host, route port) of every member
    route_password: str

    def lines(self, server_name: str, listen: str, route_port: int) -> list[str]:
        """``server_name`` and the ``cluster`` block of one member."""
        hashed = bcrypt.hashpw(self.route_password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS))
        urls = [f"nats-route://{ROUTE_USER}:{self.route_password}@{h}:{p}" for h, p in self.routes]
        auth = {"user": ROUTE_USER, "password": hashed.decode(), "timeout": 2}
        return [
            f"server_name: {json.dumps(server_name)}",
            "cluster {",
            f"  name: {json.dumps(self.name)}",
            f"  listen: {json.dumps(f'{listen}:{route_port}')}",
            f"  authorization: {json.dumps(auth)}",
            f"  routes: {json.dumps(urls)}",
            "}",
        ]


def parse_hosts(text: str, flag: str) -> list[tuple[str, int]]:
    """``h1,h2:7222`` → [("h1", 6222), ("h2", 7222)]; a one-line error naming ``flag``."""
    out: list[tuple[str, int]] = []
    for entry in (e.strip() for e in text.split(",")):
        host, _, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
        if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
            raise ConfigError(
                f"nats-config: {flag}: {entry!r} is not HOST or HOST:PORT; write "
                f"{flag} host1:6222,host2:6222,host3:6222"
            )
        out.append((host, int(port) if port else DEFAULT_ROUTE_PORT))
    return out


def _server_names(text: str) -> list[str]:
    names = [subjects.check_token("server name", n.strip()) for n in text.split(",") if n.strip()]
    if len(set(names)) != len(names):
        raise ConfigError(f"nats-config: --servers {text!r} names a server twice")
    return names


def _reuse_passwords(out: Path, users: list[NatsUser]) -> list[NatsUser]:
    creds = out / "creds"
    return [
        replace(u, password=(creds / f"{u.name}.password").read_text().strip())
        if (creds / f"{u.name}.password").is_file()
        else u
        for u in users
    ]


def _route_password(out: Path) -> str:
    path = out / "creds" / f"{ROUTE_USER}.password"
    if path.is_file():
        return path.read_text().strip()
    password = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, password + "\n")
    return password


@dataclass(frozen=True)
class ClusterRequest:
    """The command line of a cluster run (see ``mosaic.commands.nats_config``)."""

    agents: list[str]
    coordinator_user: str
    operator_user: str
    role_users: dict[str, Role]
    listen: str
    port: int
    store_dir: Path | None
    tls: TlsFiles | None
    nkeys_dir: Path | None
    cluster_name: str = DEFAULT_CLUSTER_NAME


def write_cluster(
    out: Path, req: ClusterRequest, servers: str, hosts: str, client_ports: str | None
) -> list[Path]:
    """Every member's config under ``out/<server>/``, one set of credentials."""
    names = _server_names(servers)
    members = parse_hosts(hosts, "--cluster-hosts")
    if len(members) != len(names):
        raise ConfigError(
            f"nats-config: --servers names {len(names)} servers but --cluster-hosts "
            f"{len(members)}; give one host per server, in the same order"
        )
    ports = [req.port] * len(names)
    if client_ports:
        ports = [int(p) for p in client_ports.split(",") if p.strip().isdigit()]
        if len(ports) != len(names):
            raise ConfigError(
                f"nats-config: --client-ports {client_ports!r}: give one port per server"
            )
    if req.tls is not None:
        req.tls.block()  # check the files before anything is written
    users = plan_users(req.agents, req.coordinator_user, req.operator_user, req.role_users)
    users = write_credentials(out, users, req.nkeys_dir)
    cluster = Cluster(req.cluster_name, tuple(members), _route_password(out))
    written: list[Path] = []
    for name, (_, route_port), port in zip(names, members, ports, strict=True):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        store = req.store_dir if req.store_dir is not None else (folder / "jetstream").resolve()
        text = render(
            users,
            store_dir=store,
            host=req.listen,
            port=port,
            tls=req.tls,
            cluster=cluster.lines(name, req.listen, route_port),
        )
        _write_private(folder / "nats-server.conf", text)
        written.append(folder / "nats-server.conf")
    return written


def write_member(
    out: Path, req: ClusterRequest, server_name: str, routes: str, route_port: int
) -> Path:
    """One member's config (``out/nats-server.conf``), reusing ``out/creds``."""
    name = subjects.check_token("server name", server_name)
    members = parse_hosts(routes, "--cluster-routes")
    if req.tls is not None:
        req.tls.block()
    users = plan_users(req.agents, req.coordinator_user, req.operator_user, req.role_users)
    if req.nkeys_dir is None:
        users = _reuse_passwords(out, users)
    users = write_credentials(out, users, req.nkeys_dir)
    cluster = Cluster(req.cluster_name, tuple(members), _route_password(out))
    store = req.store_dir if req.store_dir is not None else out / "jetstream"
    text = render(
        users,
        store_dir=store.resolve(),
        host=req.listen,
        port=req.port,
        tls=req.tls,
        cluster=cluster.lines(name, req.listen, route_port),
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_private(out / "nats-server.conf", text)
    return out / "nats-server.conf"


def client_urls(hosts: str, ports: list[int], scheme: str = "nats") -> str:
    """The ``nats_url`` list for agent.toml and coordinator.toml."""
    return ",".join(
        f"{scheme}://{h}:{p}"
        for (h, _), p in zip(parse_hosts(hosts, "--cluster-hosts"), ports, strict=True)
    )
