"""The issue's topology as hosts in network namespaces, every part a real process.

- ``ctl`` (10.251.0.1): nats-server (one, or a 3-server JetStream cluster), PostgreSQL
  (the catalog, on the host's own loopback) and two coordinator processes
  (``python -m mosaic.cli coordinator run``) sharing it, one active;
- ``a`` and ``b`` (10.251.0.2/3): one agent process each (``agent run``) with a files
  dataset, and on ``b`` a PostgreSQL archiving its WAL (dataset ``pg_dataset``);
  agent ``a`` stores in S3 through the harness's fault ``Proxy`` (knobs off until a
  test turns them on), agent ``b`` over SFTP;
- ``st`` (10.251.0.4): the moto S3 server (``moto_server``, as a process) on port 9000,
  the proxy in front of it on port 9100, and OpenSSH sshd (internal SFTP) on port 22.

Agents know NATS and storage only by their 10.251.0.x addresses, which exist only inside
these namespaces: with a host's link down its agent reaches neither.

``build_fleet(work)`` is a context manager; the ``fleet`` fixture (function scope,
opt-in by naming it) wraps it. Everything is killed and deleted on the way out, also
after a failed test.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from shared.natsserver import nats_server_binary
from tests.fixtures.nats_cluster import wait_for_meta_leader
from tests.fixtures.postgres import PG_BIN, PG_USER, PostgresServer, wal_archive_command
from tests.fixtures.s3 import ACCESS_KEY, REGION, SECRET_KEY, s3_client
from tests.fixtures.sftp import SFTP_USER, SSHD, _ensure_user, keygen
from tests.fleet.netns import Host, Network, sweep_stale
from tests.fleet.proxy import Proxy
from tests.harness import REPO_ROOT, unique

NATS_PORT = 4222
ROUTE_PORT = 6222
S3_PORT = 9000
PROXY_PORT = 9100
PG_PORT = 5432
ACK_WAIT_S = 2.0
LOG_ENV = {"MOSAIC_LOG_LEVEL": "INFO", "COLUMNS": "200"}


def wait_until(what: str, probe: Callable[[], bool], limit: float = 30) -> None:
    """Poll a positive marker (a log line, an answering server) until it holds."""
    deadline = time.monotonic() + limit
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:.0f}s waiting for {what}")
        time.sleep(0.05)


def _log_has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


class NetnsPostgres(PostgresServer):
    """``PostgresServer`` whose postmaster runs inside ``host`` (initdb needs no net)."""

    def __init__(self, host: Host, base: Path, port: int) -> None:
        super().__init__(base, port)
        self.host = host

    def start(self) -> None:
        argv = ["ip", "netns", "exec", self.host.netns, "runuser", "-u", PG_USER, "--"]
        argv += [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log)]
        argv += ["-w", "-t", "60", "start"]
        out = self.base / "start.out"
        with out.open("wb") as sink:
            proc = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"PostgreSQL start in {self.host.netns} failed: {out.read_text()}")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` against the catalog database, from inside the host."""

        def run() -> list[tuple[Any, ...]]:
            with psycopg.connect(self.url("catalog"), connect_timeout=10) as conn:
                return conn.execute(sql, params).fetchall()

        return self.host.call(run)


@dataclass
class Fleet:
    net: Network
    work: Path
    ctl: Host
    a: Host
    b: Host
    st: Host
    nats_urls: list[str]
    nats: list[subprocess.Popen[bytes]]  # the nats-server processes (kill -9 one of them)
    catalog: NetnsPostgres
    proxy: Proxy  # in front of S3, on the storage host; agent a's S3 goes through it
    buckets: dict[str, str]  # agent short name → its bucket (agent b's is unused)
    sources: dict[str, Path]  # agent short name → its files dataset's folder
    datasets: dict[str, str]  # agent short name → dataset name
    agent_names: dict[str, str]
    database: NetnsPostgres | None = None  # on host b, archiving WAL; dataset pg_dataset
    pg_dataset: str = ""
    agent_configs: dict[str, Path] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    coordinators: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        return ",".join(self.nats_urls)

    def host(self, short: str) -> Host:
        return {"a": self.a, "b": self.b}[short]

    def cli(
        self, *args: str, on: Host | None = None, nats: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``mosaic-backup ARGS`` as a process on host ``on`` (default: ``ctl``); with
        ``nats``, the operator commands' ``--nats`` list is added."""
        more = ["--nats", self.nats_url] if nats else []
        argv = [sys.executable, "-m", "mosaic.cli", *args, *more]
        proc = (on or self.ctl).check(argv, LOG_ENV, timeout=timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def job_events(self, job_id: str) -> list[Any]:
        """Every event of one job in the events stream, in order (read from ``ctl``)."""

        async def read() -> list[Any]:
            from nats.js.errors import NotFoundError

            from shared import subjects
            from shared.bus import Bus
            from shared.wire.events import event_decoder

            bus = await Bus.connect(self.nats_url, name="fleet-test")
            out: list[Any] = []
            seq = 1
            try:
                while True:
                    try:
                        msg = await bus.js.get_msg(
                            subjects.EVENTS_STREAM,
                            seq=seq,
                            subject=subjects.events_of_job(job_id),
                            next=True,
                        )
                    except NotFoundError:  # the end of the stream
                        return out
                    assert msg.data is not None and msg.seq is not None
                    out.append(event_decoder.decode(msg.data))
                    seq = msg.seq + 1
            finally:
                await bus.aclose()

        return self.ctl.call(lambda: anyio.run(read))

    def start_agent(self, short: str) -> subprocess.Popen[bytes]:
        log = self.work / f"agent-{short}.log"
        mark = f"agent {self.agent_names[short]} ready"
        seen = log.read_text(errors="replace").count(mark) if log.exists() else 0
        argv = [sys.executable, "-m", "mosaic.cli", "agent", "run"]
        argv += ["--config", str(self.agent_configs[short])]
        proc = self.host(short).run(argv, LOG_ENV, log=log, cwd=REPO_ROOT)
        self.agents[short] = proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"agent {short} exited: {log.read_text()[-2000:]}")
            return log.read_text(errors="replace").count(mark) > seen

        wait_until(f"agent {short} ready", ready)
        return proc


# --- the parts --------------------------------------------------------------------------


def _start_nats(
    ctl: Host, work: Path, servers: int
) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    urls = [f"nats://{ctl.address}:{NATS_PORT + i}" for i in range(servers)]
    routes = ",".join(f"nats://{ctl.address}:{ROUTE_PORT + i}" for i in range(servers))
    procs = []
    for i in range(servers):
        argv = [nats_server_binary(), "-js", "-sd", str(work / f"nats{i}"), "-a", "0.0.0.0"]
        argv += ["-p", str(NATS_PORT + i), "-n", f"n{i + 1}"]
        if servers > 1:
            argv += ["--cluster_name", "c1", "--cluster", f"nats://0.0.0.0:{ROUTE_PORT + i}"]
            argv += ["--routes", routes]
        procs.append(ctl.run(argv, log=work / f"nats{i}.log"))
    ctl.call(lambda: wait_for_meta_leader(urls, timeout=30))
    return urls, procs


def _start_catalog(ctl: Host) -> NetnsPostgres:
    # A short path under /tmp: every parent must be traversable by the postgres user.
    base = Path(tempfile.mkdtemp(prefix="mosaic-fleet-pg-", dir="/tmp"))
    pg = NetnsPostgres(ctl, base, PG_PORT)
    pg.init()
    pg.start()

    def create() -> None:
        with psycopg.connect(pg.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE DATABASE catalog")

    ctl.call(create)

    async def migrate() -> None:  # the schema once, not raced by two coordinators
        from coordinator.catalog import open_catalog

        cat = await open_catalog(pg.url("catalog"))
        await cat.aclose()

    ctl.call(lambda: anyio.run(migrate))
    return pg


def _start_archiving_postgres(host: Host) -> NetnsPostgres:
    """PostgreSQL on ``host``'s loopback with WAL archiving into ``base/spool`` (through
    the real ``wal-archive``), the database an agent there backs up."""
    base = Path(tempfile.mkdtemp(prefix="mosaic-fleet-pgarch-", dir="/tmp"))
    pg = NetnsPostgres(host, base, PG_PORT)
    spool = base / "spool"
    spool.mkdir()
    shutil.chown(spool, user=PG_USER, group=PG_USER)
    archive = "'" + wal_archive_command(spool) + "'"
    pg.init({"wal_level": "replica", "archive_mode": "on", "archive_command": archive})
    pg.start()
    return pg


def _start_s3(st: Host, work: Path) -> None:
    moto = Path(sys.executable).parent / "moto_server"
    st.run([str(moto), "-H", "0.0.0.0", "-p", str(S3_PORT)], log=work / "moto.log")

    def answers() -> bool:
        def probe() -> bool:
            try:
                s3_client(f"http://127.0.0.1:{S3_PORT}").list_buckets()
                return True
            except Exception:  # not listening yet: polled again
                return False

        return st.call(probe)

    wait_until("the S3 server", answers)


@dataclass(frozen=True)
class Sftp:
    host: str
    base: Path  # sshd's config and keys
    home: Path
    key_file: Path
    known_hosts: Path


def _start_sshd(st: Host, work: Path) -> Sftp:
    """OpenSSH sshd on the storage host's port 22 (internal SFTP, key login only)."""
    home = _ensure_user(SFTP_USER)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    # Not under pytest's 0700 tmp folder: sshd reads authorized_keys as the test user.
    base = Path(tempfile.mkdtemp(prefix="mosaic-fleet-sshd-", dir="/tmp"))
    base.chmod(0o755)
    keygen(base / "host_ed25519")
    keygen(base / "client_ed25519")
    (base / "client_ed25519.pub").chmod(0o644)
    kind, key = (base / "host_ed25519.pub").read_text().split()[:2]
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"{st.address} {kind} {key}\n")
    config = base / "sshd_config"
    config.write_text(
        "Port 22\nListenAddress 0.0.0.0\n"
        f"HostKey {base}/host_ed25519\nPidFile {base}/sshd.pid\n"
        f"AuthorizedKeysFile {base}/client_ed25519.pub\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nMaxStartups 100\n"
        "Subsystem sftp internal-sftp\n"
    )
    st.run([str(SSHD), "-D", "-e", "-f", str(config)], log=work / "sshd.log")

    def banner() -> bool:
        import socket

        def probe() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", 22), timeout=2) as sock:
                    return sock.recv(8).startswith(b"SSH-")
            except OSError:
                return False

        return st.call(probe)

    wait_until("sshd's banner", banner)
    return Sftp(st.address, base, home, base / "client_ed25519", known_hosts)


def _sftp_toml(sftp: Sftp, folder: str) -> str:
    return (
        f'[targets.store]\ntype = "sftp"\nhost = "{sftp.host}"\nuser = "{SFTP_USER}"\n'
        f'path = "{sftp.home / folder / "repo"}"\nkey_file = "{sftp.key_file}"\n'
        f'known_hosts = "{sftp.known_hosts}"\n'
    )


def _s3_toml(bucket: str, endpoint: str) -> str:
    return (
        f'[targets.store]\ntype = "s3"\nbucket = "{bucket}"\nprefix = "repo"\n'
        f'endpoint_url = "{endpoint}"\nregion = "{REGION}"\n'
        f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n'
    )


def _agent_toml(fl: Fleet, short: str, target: str) -> Path:
    path = fl.work / f"agent-{short}.toml"
    path.write_text(
        f'name = "{fl.agent_names[short]}"\nnats_url = "{fl.nats_url}"\n'
        f'key_file = "{fl.work / f"{short}.key"}"\nstate_dir = "{fl.work / f"state-{short}"}"\n'
        f"ack_wait_s = {ACK_WAIT_S}\nprogress_interval_s = 0.2\nheartbeat_interval_s = 1.0\n"
        f"pack_size = 262144\nindex_every_packs = 2\n" + target
    )
    return path


def _coordinator_toml(fl: Fleet, name: str) -> Path:
    path = fl.work / f"{name}.toml"
    body = f'name = "{name}"\nnats_url = "{fl.nats_url}"\nscheduler_interval_s = 0.5\n'
    body += f'[catalog]\nurl = "{fl.catalog.url("catalog")}"\n'
    for short, ds in fl.datasets.items():
        body += f'[datasets.{ds}]\nagent = "{fl.agent_names[short]}"\ntarget = "store"\n'
        body += f'source = {{ type = "files", path = "{fl.sources[short]}" }}\n'
    if fl.database is not None:
        body += f'[datasets.{fl.pg_dataset}]\nagent = "{fl.agent_names["b"]}"\n'
        body += f'target = "store"\nsource = {{ type = "postgres", port = {PG_PORT}, '
        body += f'wal_spool = "{fl.database.base / "spool"}" }}\n'
    path.write_text(body)
    return path


def _start_coordinators(fl: Fleet) -> None:
    logs = []
    for letter in ("a", "b"):
        name = unique(f"coord-{letter}")
        log = fl.work / f"{name}.log"
        argv = [sys.executable, "-m", "mosaic.cli", "coordinator", "run"]
        argv += ["--config", str(_coordinator_toml(fl, name))]
        fl.coordinators.append(fl.ctl.run(argv, LOG_ENV, log=log, cwd=REPO_ROOT))
        logs.append(log)
    wait_until(
        "an active coordinator",
        lambda: any(_log_has(p, "is now the active coordinator") for p in logs),
    )


def _make_tree(root: Path, files: int) -> Path:
    """Incompressible files (``files`` × 256 KiB plus a few small ones)."""
    import random

    rnd = random.Random(14)
    (root / "sub").mkdir(parents=True)
    for i in range(files):
        (root / f"f{i:03d}.bin").write_bytes(rnd.randbytes(256 << 10))
    (root / "sub" / "note.txt").write_text("fleet\n" * 100)
    (root / "empty").write_bytes(b"")
    return root


# --- assembly ---------------------------------------------------------------------------


def _make_buckets(st: Host, names: list[str]) -> None:
    def make() -> None:
        client = s3_client(f"http://127.0.0.1:{S3_PORT}")
        for b in names:
            client.create_bucket(Bucket=b)

    st.call(make)


@contextlib.contextmanager
def build_fleet(
    work: Path, *, nats_servers: int = 1, files: int = 24, postgres_agent: bool = True
) -> Iterator[Fleet]:
    with Network() as net:
        ctl, a, b, st = (net.add_host(n) for n in ("ctl", "a", "b", "st"))
        pg: NetnsPostgres | None = None
        database: NetnsPostgres | None = None
        sftp: Sftp | None = None
        sftp_folder = ""
        try:
            urls, nats_procs = _start_nats(ctl, work, nats_servers)
            pg = _start_catalog(ctl)
            _start_s3(st, work)
            sftp = _start_sshd(st, work)
            if postgres_agent:
                database = _start_archiving_postgres(b)
            sftp_folder = unique("mosaic-fleet")
            proxy = Proxy(
                "127.0.0.1", S3_PORT, listen_host="0.0.0.0", listen_port=PROXY_PORT, netns=st.netns
            )
            with proxy:
                fl = Fleet(
                    net=net,
                    work=work,
                    ctl=ctl,
                    a=a,
                    b=b,
                    st=st,
                    nats_urls=urls,
                    nats=nats_procs,
                    catalog=pg,
                    proxy=proxy,
                    buckets={s: unique(f"fleet-{s}") for s in ("a", "b")},
                    sources={s: _make_tree(work / f"src-{s}", files) for s in ("a", "b")},
                    datasets={s: unique(f"ds-{s}") for s in ("a", "b")},
                    agent_names={s: unique(f"agent-{s}") for s in ("a", "b")},
                    database=database,
                    pg_dataset=unique("ds-pg"),
                )
                _make_buckets(st, [fl.buckets["a"]])
                targets = {
                    "a": _s3_toml(fl.buckets["a"], f"http://{st.address}:{PROXY_PORT}"),
                    "b": _sftp_toml(sftp, sftp_folder),
                }
                for s, target in targets.items():
                    fl.agent_configs[s] = _agent_toml(fl, s, target)
                _start_coordinators(fl)
                for s in ("a", "b"):
                    fl.start_agent(s)
                yield fl
        finally:
            net.close()  # kills every process in the namespaces, the postmaster too
            for server in (pg, database):
                if server is not None:
                    shutil.rmtree(server.base, ignore_errors=True)
            if sftp is not None:
                shutil.rmtree(sftp.home / sftp_folder, ignore_errors=True)
                shutil.rmtree(sftp.base, ignore_errors=True)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """The whole topology, for one test (opt-in: only tests naming it build it)."""
    sweep_stale()  # what crashed runs left (never a live run's namespaces)
    with build_fleet(tmp_path) as fl:
        yield fl
