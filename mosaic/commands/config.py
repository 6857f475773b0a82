"""``mosaic-backup config validate FILE [--reach]``: check an agent.toml or coordinator.toml
without starting anything.

The file is read by the same loaders the daemons use (shared/config/load.py), so a
problem is the same one line naming the field and the fix, and exit 1. The kind is told
by the sections (``targets``/``key_file``: an agent; ``datasets``/``catalog``: a
coordinator) or given with ``--kind``.

``--reach`` then asks each thing the file names whether it answers, one row each, and
never writes: NATS (with the file's credentials and TLS); for an agent its key file and
each target (the target's own check — login, bucket, Object Lock — then a read; where a
repository is there, whether the key opens it); for a coordinator its catalog (opened
read-only: the schema version is read, never migrated) and, with ``--sources AGENT``,
the sources of that agent's datasets as seen from this host (run it on the agent's
host): PostgreSQL and Redis and MariaDB answer, folders exist and are readable, the
Docker daemon answers. Exit 1 when a row fails.
"""

from __future__ import annotations

import argparse
import functools
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from shared.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from shared.config.agent import AgentConfig
    from shared.config.coordinator import CoordinatorConfig
    from shared.config.nats import NatsClientConfig
    from shared.wire.sources import Source

HELP = "check an agent.toml or coordinator.toml (and, with --reach, what it names)"
REACH_TIMEOUT_S = 15.0  # per row: an unreachable endpoint is a failed row, not a hang

Row = tuple[str, bool, str]  # (what was checked, ok, detail or the reason)


def register(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = actions.add_parser("validate", help="load FILE as the daemons do; --reach: try it")
    v.add_argument("file", metavar="FILE", help="an agent.toml or coordinator.toml")
    v.add_argument(
        "--kind", choices=("agent", "coordinator"), default=None, help="default: by its sections"
    )
    v.add_argument(
        "--reach",
        action="store_true",
        help="also check that NATS, the targets and key (agent), the catalog (coordinator) "
        "answer; read-only",
    )
    v.add_argument(
        "--sources",
        metavar="AGENT",
        default=None,
        help="coordinator.toml with --reach: also try the sources of AGENT's datasets "
        "from this host",
    )
    v.set_defaults(func=validate)


def kind_of(path: Path, given: str | None) -> str:
    """``agent`` or ``coordinator``: ``given``, or told by the file's top-level keys."""
    if given is not None:
        return given
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return "agent"  # the loader names the problem with the file
    if "datasets" in raw or "catalog" in raw:
        return "coordinator"
    if "targets" in raw or "key_file" in raw:
        return "agent"
    raise ConfigError(
        f"config file {path}: cannot tell whether it is an agent.toml (has [targets] and "
        "key_file) or a coordinator.toml (has [datasets] or [catalog]); add --kind"
    )


def agent_summary(cfg: AgentConfig) -> str:
    kinds: dict[str, int] = {}
    for t in cfg.targets.values():
        tag = str(type(t).__struct_config__.tag)
        kinds[tag] = kinds.get(tag, 0) + 1
    targets = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return (
        f"agent {cfg.name}: {len(cfg.targets)} target(s) ({targets}), key file "
        f"{cfg.key_file}, NATS {cfg.nats_url}"
    )


def coordinator_summary(cfg: CoordinatorConfig) -> str:
    agents = {d.agent for d in cfg.datasets.values()}
    scheduled = sum(1 for d in cfg.datasets.values() if d.schedules)
    catalog = cfg.catalog.url.partition("://")[0]
    parts = [
        f"coordinator {cfg.name}: {len(cfg.datasets)} dataset(s) ({scheduled} scheduled) "
        f"on {len(agents)} agent(s)",
        f"catalog {catalog}",
        f"maintenance {'on' if cfg.maintenance is not None else 'off'}",
        f"http {'port ' + str(cfg.http.port) if cfg.http is not None else 'off'}",
        f"NATS {cfg.nats_url}",
    ]
    return ", ".join(parts)


async def validate(args: argparse.Namespace, out: Console, err: Console) -> int:
    from shared.config.agent import AgentConfig
    from shared.config.coordinator import CoordinatorConfig
    from shared.config.load import load

    path = Path(args.file)
    kind = kind_of(path, args.kind)
    cfg: AgentConfig | CoordinatorConfig
    if kind == "agent":
        cfg = load(path, AgentConfig)
        summary = agent_summary(cfg)
    else:
        cfg = load(path, CoordinatorConfig)
        summary = coordinator_summary(cfg)
        if args.sources is not None and args.sources not in {
            d.agent for d in cfg.datasets.values()
        }:
            raise ConfigError(
                f"--sources {args.sources}: no dataset in {path} is backed up by that agent"
            )
    out.print(f"ok: {path}: {summary}", markup=False, highlight=False)
    if not args.reach:
        return 0
    rows = [await nats_row(cfg)]
    if isinstance(cfg, AgentConfig):
        rows += await agent_rows(cfg)
    else:
        rows.append(await catalog_row(cfg.catalog.url))
        if args.sources is not None:
            for name, ds in sorted(cfg.datasets.items()):
                if ds.agent == args.sources:
                    rows.append(await source_row(name, ds.source))
    show(rows, out)
    failed = [r for r in rows if not r[1]]
    if failed:
        err.print(f"config validate: {len(failed)} of {len(rows)} check(s) failed", markup=False)
        return 1
    return 0


def show(rows: list[Row], out: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    table.add_column("checked", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for what, ok, detail in rows:
        table.add_row(escape(what), "[green]ok[/]" if ok else "[bold red]FAIL[/]", escape(detail))
    out.print(table)


def _line(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {REACH_TIMEOUT_S:g} s"
    return " ".join(str(exc).split()) or type(exc).__name__


async def _row(what: str, check: Any, where: str = "") -> Row:
    """Run ``check`` (returns its detail) with a time limit; any error is the row's reason.
    ``where`` starts the detail (the URL or path the row is about)."""
    from shared.errors import MosaicError

    try:
        with anyio.fail_after(REACH_TIMEOUT_S):
            return what, True, where + await check()
    except (MosaicError, OSError, TimeoutError, ValueError) as exc:
        return what, False, where + _line(exc)
    except Exception as exc:  # a library's own error type: still one row, not a traceback
        return what, False, f"{where}{type(exc).__name__}: {_line(exc)}"


async def nats_row(cfg: NatsClientConfig) -> Row:
    from shared.bus import Bus

    async def check() -> str:
        bus = await Bus.connect_with(
            cfg, name="mosaic-config-validate", timeout=min(cfg.connect_timeout_s, 10.0)
        )
        try:
            return f"connected (nats-server {bus.nc.connected_server_version})"
        finally:
            await bus.aclose()

    return await _row("NATS", check, f"{cfg.nats_url}: ")


async def agent_rows(cfg: AgentConfig) -> list[Row]:
    from engine.keys.files import RepoKey, load_any_key_file
    from engine.storage.open import open_target
    from engine.storage.retry import RetryPolicy
    from shared.errors import KeyFileError

    key: list[RepoKey] = []

    async def key_check() -> str:
        if not await anyio.Path(cfg.key_file).exists():
            return (
                "does not exist yet: the agent makes it at its first start (only while no "
                "target holds a repository; keep a copy offline)"
            )
        try:
            loaded = await anyio.to_thread.run_sync(load_any_key_file, cfg.key_file)
        except KeyFileError as exc:
            if "passphrase" in str(exc) and await anyio.Path(cfg.key_file).is_file():
                return "readable; protected by a passphrase (not opened here)"
            raise
        key.append(loaded)
        return "write-only key file" if not isinstance(loaded, bytes) else "readable"

    rows = [await _row("key file", key_check, f"{cfg.key_file}: ")]
    for name, tc in sorted(cfg.targets.items()):
        target = open_target(name, tc, retry=RetryPolicy(attempts=1))
        try:
            check = functools.partial(target_check, target, key, cfg.key_file)
            rows.append(await _row(f"target {name}", check))
        finally:
            await target.aclose()
    return rows


async def target_check(target: Any, key: list[Any], key_file: str) -> str:
    """The target answers (its own check, then a read); with a key, it opens the
    repository there. Nothing is written: no repository, folder or bucket is made."""
    from engine.repository import Repository
    from engine.storage.open import unwrap

    inner = unwrap(target)
    root = getattr(inner, "root", None)
    if root is not None and (missing := await anyio.to_thread.run_sync(_not_yet, Path(root))):
        return missing
    check = getattr(inner, "check", None)
    if check is not None:
        await check()
    if not await Repository.exists(target):
        return "answers; no repository there yet"
    if not key and not await anyio.Path(key_file).exists():
        raise OSError(
            f"holds a repository, but key file {key_file} does not exist: restore your copy "
            "of the key file to that path (a new key could never open these backups)"
        )
    if not key:
        return "answers; holds a repository"
    repo = await Repository.open(target, key[0], load_index=False)
    return f"answers; the key opens repository {repo.config.repository_id[:12]}"


def _not_yet(root: Path) -> str | None:
    """A local target's folder that does not exist yet: fine where it can be made."""
    if root.exists():
        return None
    parent = next((p for p in root.parents if p.exists()), Path("/"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(f"{root} does not exist and {parent} is not writable by this user")
    return f"{root} does not exist yet (made by the first backup; {parent} is writable)"


def _readable(p: Path) -> str:
    if not p.exists():
        raise OSError(f"{p} does not exist")
    if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        raise OSError(f"{p} is not readable by this user")
    return f"{p} exists and is readable"


async def catalog_row(url: str) -> Row:
    scheme = url.partition("://")[0].lower()
    shown = url.split("@")[-1] if scheme != "sqlite" else url

    async def sqlite() -> str:
        import sqlite3
        from urllib.parse import quote, unquote

        path = "/" + unquote(url.partition("://")[2].partition("?")[0]).lstrip("/")
        if not await anyio.Path(path).is_file():
            raise OSError(f"{path} does not exist (the coordinator creates it at start)")

        def read() -> int:
            # immutable: a reader of a WAL database would make -wal and -shm files;
            # with a -wal there already (a coordinator runs), read it as it is
            wal = Path(f"{path}-wal").exists()
            mode = "mode=ro" if wal else "mode=ro&immutable=1"
            con = sqlite3.connect(f"file:{quote(path)}?{mode}", uri=True)
            try:
                return int(
                    con.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[
                        0
                    ]
                )
            finally:
                con.close()

        try:
            version = await anyio.to_thread.run_sync(read)
        except sqlite3.Error as exc:
            raise OSError(f"{path}: {exc}") from exc
        return f"opens read-only; schema version {version}"

    async def postgres() -> str:
        import psycopg

        try:
            async with await psycopg.AsyncConnection.connect(url, connect_timeout=10) as con:
                cur = await con.execute("SELECT version()")
                row = await cur.fetchone()
                try:
                    cur = await con.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                    got = await cur.fetchone()
                    schema = f"schema version {got[0] if got else 0}"
                except psycopg.errors.UndefinedTable:
                    schema = "no schema yet (the coordinator creates it at start)"
        except psycopg.OperationalError as exc:
            # libpq's message names host and port, never the password
            raise OSError(" ".join(str(exc).split())) from None
        version = str(row[0]).split(",")[0] if row else "?"
        return f"answers ({version}); {schema}"

    return await _row(
        f"catalog ({scheme})", sqlite if scheme == "sqlite" else postgres, f"{shown}: "
    )


async def _greeting(host: str, port: int, send: bytes = b"") -> bytes:
    async with await anyio.connect_tcp(host, port) as s:
        if send:
            await s.send(send)
        return await s.receive(4096)


async def source_row(dataset: str, source: Source) -> Row:
    from shared.wire import sources as w

    async def check() -> str:
        if isinstance(source, w.FilesSource):
            return await anyio.to_thread.run_sync(_readable, Path(source.path))
        if isinstance(source, w.PostgresSource):
            import psycopg

            db = source.database or "postgres"
            conninfo = f"host={source.host} port={source.port} user={source.user} dbname={db}"
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, connect_timeout=10):
                    pass
            except psycopg.OperationalError as exc:
                raise OSError(" ".join(str(exc).split())) from None
            return f"PostgreSQL at {source.host}:{source.port} accepts {source.user}"
        if isinstance(source, w.RedisSource):
            got = await _greeting(source.host, source.port, b"PING\r\n")
            if not got.startswith((b"+PONG", b"-NOAUTH", b"-ERR")):
                raise OSError(f"{source.host}:{source.port} is not Redis (said {got[:20]!r})")
            return f"Redis at {source.host}:{source.port} answers"
        if isinstance(source, w.MariaDBSource):
            return await _mariadb(source)
        if isinstance(source, w.DockerVolumeSource | w.DockerExecSource):
            return await _docker(source.docker_url)
        return "nothing to reach (read on the host at backup time)"

    where = _address(source)

    async def checked() -> str:
        try:
            return await check()
        except OSError as exc:  # refused, unreachable …: say where it was tried
            text = _line(exc)
            raise OSError(text if where in text else f"{where}: {text}") from exc

    return await _row(f"source of {dataset} ({type(source).__struct_config__.tag})", checked)


def _address(source: Any) -> str:
    """Where a source is reached: a path, a socket, host:port or the docker URL."""
    for field in ("path", "socket", "docker_url"):
        if getattr(source, field, None):
            return str(getattr(source, field))
    if hasattr(source, "port"):
        return f"{source.host}:{source.port}"
    return "this host"


async def _mariadb(source: Any) -> str:
    if source.socket:
        async with await anyio.connect_unix(source.socket) as s:
            got = await s.receive(4096)
        where = source.socket
    else:
        got = await _greeting(source.host, source.port)
        where = f"{source.host}:{source.port}"
    # the server speaks first: a packet header (4 bytes), protocol 10, the version
    if len(got) < 6 or got[4] != 10:
        raise OSError(f"{where} did not greet like a MariaDB/MySQL server")
    version = got[5:].split(b"\0", 1)[0].decode(errors="replace")
    return f"MariaDB at {where} answers ({version})"


async def _docker(url: str) -> str:
    request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"
    if url.startswith("unix://"):
        path = url[len("unix://") :]
        async with await anyio.connect_unix(path) as s:
            await s.send(request)
            got = await s.receive(4096)
    else:
        hostport = url.partition("://")[2].rstrip("/")
        host, _, port = hostport.rpartition(":")
        got = await _greeting(host, int(port), request)
    if b" 200 " not in got.split(b"\r\n", 1)[0]:
        raise OSError(f"docker at {url} did not answer /_ping with 200")
    return f"Docker daemon at {url} answers"
