"""``mosaic-backup nats-config``: a nats-server config with one account per agent.

Why: without it every agent can read every other agent's jobs (restore jobs name paths
and backup ids) and publish events in another agent's name, which the coordinator would
record as that agent's backups. Subject permissions alone are not enough: JetStream
answers a request on the reply subject the requester chose, from the server's own
client, so one agent could aim a pull request's timeout at ``$JS.API.STREAM.DELETE…``
(issue 15). So the generated ``accounts`` block puts the streams in the coordinator's
account and gives each agent an account of its own that imports, as services, only the
subjects of its own work (``shared.subjects.agent_imports``); a service import rewrites
reply subjects into the requester's account. Operators get an account that imports the
operator API. docs/security.md describes the layout.

Files written under ``--out``::

    nats-server.conf           listen, jetstream, accounts (bcrypt hashes only)
    creds/<user>.password      one random password per user, mode 0600

nats-server treats a password that starts with ``$2a$`` as a bcrypt hash, so the server
config holds no secret; it is still written 0600. Point an agent at its password with
``nats_user`` and ``nats_password_file`` in agent.toml (coordinator.toml alike).

With ``--nkeys DIR`` every user is an NKEY instead (an Ed25519 key pair, ``shared.nkeys``):
the server config holds only public keys (``nkey: U…``, same permissions) and
``DIR/<user>.nk`` the seed, mode 0600, for ``nats_nkey_seed_file``. Nothing secret ever
crosses the wire: the client signs the server's nonce.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

import bcrypt

from coordinator.auth.roles import verbs_of
from shared import nkeys, subjects
from shared.config.auth import Role
from shared.errors import ConfigError

DEFAULT_COORDINATOR_USER = "coordinator"
DEFAULT_OPERATOR_USER = "operator"
BCRYPT_ROUNDS = 11  # nats-server's own `nats server passwd` default


@dataclass(frozen=True)
class NatsUser:
    """One ``authorization.users`` entry; ``password`` is the plaintext, for the file."""

    name: str
    password: str
    publish: list[str]
    subscribe: list[str]
    nkey: str | None = None  # public NKEY (U…): then the user logs in with its seed
    account: str = subjects.COORDINATOR_ACCOUNT
    imports: tuple[subjects.ServiceImport, ...] = ()  # what its account imports
    publish_deny: tuple[str, ...] = ()
    # subjects this user's account exports to the coordinator's account as services it
    # answers (an agent's ``mosaic.agentapi.<agent>.>``); its user may then reply
    serves: tuple[str, ...] = ()

    def entry(self) -> dict[str, object]:
        publish: dict[str, list[str]] = {"allow": self.publish}
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        permissions: dict[str, object] = {
            "publish": publish,
            "subscribe": {"allow": self.subscribe},
        }
        if self.account == subjects.COORDINATOR_ACCOUNT or self.serves:
            # API replies go to the ``_R_.…`` subjects of the operators' service import
            # (an agent's: of the coordinator account's import of its agent API)
            permissions["allow_responses"] = True
        if self.nkey is not None:
            return {"nkey": self.nkey, "permissions": permissions}
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS))
        return {"user": self.name, "password": hashed.decode(), "permissions": permissions}


def plan_users(
    agents: list[str],
    coordinator_user: str = DEFAULT_COORDINATOR_USER,
    operator_user: str = DEFAULT_OPERATOR_USER,
    role_users: dict[str, Role] | None = None,
) -> list[NatsUser]:
    """Users and their permissions; agents' users carry the agents' names.
    ``role_users`` (name → role, ``--viewers``/``--operators``/``--admins``) are
    operator-account users that may publish only the API verbs of their role."""
    if not agents:
        raise ConfigError("nats-config: no agent given (pass --agents NAME[,NAME…])")
    roles = dict(role_users or {})
    names = [subjects.check_token("agent name", a) for a in agents]
    names += [subjects.check_token("user name", u) for u in (coordinator_user, operator_user)]
    names += [subjects.check_token("user name", u) for u in roles]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"nats-config: user name {dupes[0]!r} is given twice (each agent, the coordinator "
            "and the operator need a user of their own: rename one or pass --coordinator-user)"
        )
    coord = subjects.coordinator_allow()
    users = [
        NatsUser(
            coordinator_user,
            secrets.token_urlsafe(32),
            coord,
            coord,
            publish_deny=tuple(subjects.coordinator_publish_deny()),
        )
    ]
    users.append(
        NatsUser(
            operator_user,
            secrets.token_urlsafe(32),
            subjects.operator_publish_allow(),
            subjects.operator_subscribe_allow(),
            account=subjects.OPERATOR_ACCOUNT,
            imports=tuple(subjects.operator_imports()),
        )
    )
    users += [
        NatsUser(
            name,
            secrets.token_urlsafe(32),
            subjects.operator_role_publish_allow(verbs_of(role)),
            subjects.operator_subscribe_allow(),
            account=subjects.OPERATOR_ACCOUNT,
            imports=tuple(subjects.operator_imports()),
        )
        for name, role in roles.items()
    ]
    users += [
        NatsUser(
            a,
            secrets.token_urlsafe(32),
            subjects.agent_publish_allow(a),
            subjects.agent_subscribe_allow(a) + subjects.agent_api_subscribe_allow(a),
            account=subjects.agent_account(a),
            imports=tuple(subjects.agent_imports(a)),
            serves=(subjects.agentapi_all(a),),
        )
        for a in agents
    ]
    return users


def accounts_block(users: list[NatsUser]) -> dict[str, dict[str, object]]:
    """The ``accounts`` map: JetStream only in the coordinator's account, which exports
    each import to the one account that needs it (``accounts: [...]`` on the export, so
    no other account may import it even with a hand-edited config of its own)."""
    accounts: dict[str, dict[str, object]] = {
        subjects.COORDINATOR_ACCOUNT: {"jetstream": "enabled", "users": [], "exports": []}
    }
    exports: list[dict[str, object]] = []
    imported: set[tuple[str, str]] = set()
    for u in users:
        acc = accounts.setdefault(u.account, {"users": [], "imports": []})
        users_of = acc["users"]
        assert isinstance(users_of, list)
        users_of.append(u.entry())
        if u.account == subjects.COORDINATOR_ACCOUNT:
            continue
        imports = acc["imports"]
        assert isinstance(imports, list)
        for subject in u.serves:
            # the agent answers, the coordinator account (console, coordinator) asks
            own_exports = acc.setdefault("exports", [])
            assert isinstance(own_exports, list)
            own_exports.append({"service": subject, "accounts": [subjects.COORDINATOR_ACCOUNT]})
            coord_imports = accounts[subjects.COORDINATOR_ACCOUNT].setdefault("imports", [])
            assert isinstance(coord_imports, list)
            coord_imports.append({"service": {"account": u.account, "subject": subject}})
        for imp in u.imports:
            if (u.account, imp.subject) in imported:
                continue  # several users of one account (operators of each role)
            imported.add((u.account, imp.subject))
            export: dict[str, object] = {"service": imp.subject, "accounts": [u.account]}
            if imp.streamed:
                export["response_type"] = "stream"
            exports.append(export)
            service = {"account": subjects.COORDINATOR_ACCOUNT, "subject": imp.subject}
            entry: dict[str, object] = {"service": service}
            if imp.local != imp.subject:
                entry["to"] = imp.local
            imports.append(entry)
    accounts[subjects.COORDINATOR_ACCOUNT]["exports"] = exports
    return accounts


@dataclass(frozen=True)
class TlsFiles:
    """The server's ``tls`` block (files from ``mosaic-backup pki``). ``ca`` is needed
    only with ``verify``: then every client must show a certificate signed by it."""

    cert: Path
    key: Path
    ca: Path | None = None
    verify: bool = False

    def block(self) -> list[str]:
        if self.verify and self.ca is None:
            raise ConfigError(
                "nats-config: --tls-verify needs --tls-ca (the CA that signed client certificates)"
            )
        files = (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca))
        for flag, path in files:
            if path is not None and not path.is_file():
                raise ConfigError(
                    f"nats-config: {flag} {path} is not a file (`mosaic-backup pki` writes it)"
                )
        lines = [
            "tls {",
            f"  cert_file: {json.dumps(str(self.cert.resolve()))}",
            f"  key_file: {json.dumps(str(self.key.resolve()))}",
        ]
        if self.ca is not None:
            lines.append(f"  ca_file: {json.dumps(str(self.ca.resolve()))}")
        lines += [f"  verify: {json.dumps(self.verify)}", "  timeout: 2", "}"]
        return lines


def render(
    users: list[NatsUser],
    *,
    store_dir: Path,
    host: str,
    port: int,
    tls: TlsFiles | None = None,
    cluster: list[str] | None = None,
) -> str:
    """The server config text. JSON values are valid in nats-server's config syntax,
    and quoting every subject keeps ``$JS…`` from being read as a variable.
    ``cluster``: the ``server_name`` and ``cluster`` lines of one member of a cluster
    (:mod:`mosaic.setup.natscluster`)."""
    lines = [
        "# Written by `mosaic-backup nats-config`; regenerate rather than edit.",
        *(cluster or []),
        f"listen: {json.dumps(f'{host}:{port}')}",
        f"jetstream {{ store_dir: {json.dumps(str(store_dir))} }}",
        *(tls.block() if tls is not None else []),
        "accounts {",
    ]
    for name, acc in accounts_block(users).items():
        lines.append(f"  {json.dumps(name)}: {{")
        for key, value in acc.items():
            if isinstance(value, list):
                lines.append(f"    {key}: [")
                lines += [f"      {json.dumps(v)}" for v in value]
                lines.append("    ]")
            else:
                lines.append(f"    {key}: {json.dumps(value)}")
        lines.append("  }")
    lines += ["}", ""]
    return "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    """Create or replace ``path`` readable by its owner only, never briefly wider."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_config(
    out: Path,
    agents: list[str],
    *,
    coordinator_user: str = DEFAULT_COORDINATOR_USER,
    operator_user: str = DEFAULT_OPERATOR_USER,
    host: str = "0.0.0.0",
    port: int = 4222,
    store_dir: Path | None = None,
    tls: TlsFiles | None = None,
    nkeys_dir: Path | None = None,
    role_users: dict[str, Role] | None = None,
) -> Path:
    """Write the server config and one password file per user (or, with ``nkeys_dir``,
    one NKEY seed file per user there); return the config path."""
    users = plan_users(agents, coordinator_user, operator_user, role_users)
    if tls is not None:
        tls.block()  # check the files before anything is written
    users = write_credentials(out, users, nkeys_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf = out / "nats-server.conf"
    store = store_dir if store_dir is not None else out / "jetstream"
    _write_private(conf, render(users, store_dir=store.resolve(), host=host, port=port, tls=tls))
    return conf


def write_credentials(out: Path, users: list[NatsUser], nkeys_dir: Path | None) -> list[NatsUser]:
    """One password file per user in ``out/creds`` (or an NKEY seed per user in
    ``nkeys_dir``), all 0600; the users as the server config must list them."""
    if nkeys_dir is not None:
        return _write_nkeys(nkeys_dir, users)
    creds = out / "creds"
    creds.mkdir(parents=True, exist_ok=True)
    os.chmod(creds, 0o700)
    for u in users:
        _write_private(creds / f"{u.name}.password", u.password + "\n")
    return users


def _write_nkeys(folder: Path, users: list[NatsUser]) -> list[NatsUser]:
    """A fresh seed per user in ``folder/<user>.nk`` (0600); users carry the public key."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    out: list[NatsUser] = []
    for u in users:
        seed, public = nkeys.generate_user()
        _write_private(folder / f"{u.name}.nk", seed.decode() + "\n")
        out.append(replace(u, password="", nkey=public.decode()))
    return out
