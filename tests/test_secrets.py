"""No secret appears in anything mosaic-backup prints, logs, publishes or serves.

One full run with known, random test secrets: an S3 secret key (a real IAM user on a
moto server that checks signatures), NATS passwords (``nats-config`` password files), a
key-file passphrase, a Redis password (``requirepass``, given to the agent in
REDISCLI_AUTH) and a secret file's content in the backed-up tree. The coordinator and
the agent run as real processes at DEBUG log level; operators use the real CLI. Captured
and searched: every process's stdout and stderr, the test's own logs (caplog at DEBUG),
every message on NATS (subscribed to ``mosaic.>``, ``$JS.>``, ``$KV.>`` and
``_INBOX.>`` for the whole run) and the contents of every stream, the HTTP API's
answers, the errors of deliberately failing jobs (the S3 key revoked mid-run; a config
with a wrong S3 secret), the daemons' trace spans (received over OTLP/HTTP), the catalog's
rows (PostgreSQL, its URL holding a password) and the repository's objects (for the
file's content: it must only be stored encrypted)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import aiohttp
import anyio
import boto3
import psycopg
import pytest
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from coordinator.catalog import open_catalog
from mosaic.setup.natsconfig import write_config
from shared import subjects
from shared.bus import Bus
from shared.errors import BusError
from shared.natsserver import free_port
from shared.wire.api import StatusRequest
from shared.wire.status import StatusReply
from tests.fixtures.nats_conf import nats_from_config
from tests.fixtures.redis import start_redis
from tests.harness import REPO_ROOT, make_tree
from tests.test_tracing import OtlpReceiver

AGENT = "secagent"
BUCKET = "mosaic-secrets"


@dataclass
class Moto:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self, service: str, secret: str | None = None) -> Any:
        return cast(Any, boto3).client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret or self.secret_key,
        )


@pytest.fixture
def moto_with_auth() -> Iterator[Moto]:
    """A moto S3 server of its own that checks signatures: after 3 unauthenticated calls
    (make an IAM user, its key and its policy) every request must be signed correctly."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, "moto_server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start in 15 s"
                time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="agent")
        key = iam.create_access_key(UserName="agent")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*"}]}
        policy["Statement"][0]["Resource"] = "*"  # type: ignore[index]
        iam.put_user_policy(UserName="agent", PolicyName="all", PolicyDocument=json.dumps(policy))
        moto = Moto(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        moto.client("s3").create_bucket(Bucket=BUCKET)
        yield moto
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Capture:
    """Everything the run showed anyone, by where it came from."""

    texts: dict[str, str] = field(default_factory=dict)
    nats: list[str] = field(default_factory=list)

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.texts[where] = self.texts.get(where, "") + text

    def on_msg(self, msg: Msg) -> None:
        headers = json.dumps(msg.headers or {})
        self.nats.append(
            f"{msg.subject} {msg.reply} {headers} {msg.data.decode('utf-8', 'replace')}"
        )

    def leaks(self, secret_values: dict[str, str]) -> list[str]:
        everything = {**self.texts, "nats messages": "\n".join(self.nats)}
        return [
            f"{what} in {where}"
            for what, value in secret_values.items()
            for where, text in everything.items()
            if value in text
        ]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _bucket_bytes(s3: Any) -> bytes:
    """Every object of the repository's bucket, concatenated."""
    out = bytearray()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            out += s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return bytes(out)


async def mosaic(*args: str, env: dict[str, str], cap: Capture, timeout: float = 120) -> int:
    """Run the CLI (in a thread: the NATS sniffer keeps reading), capture its stdout and
    stderr, return its exit code."""
    done = await anyio.to_thread.run_sync(
        partial(
            subprocess.run,
            [sys.executable, "-m", "mosaic.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            env={**os.environ, "COLUMNS": "200", "MOSAIC_LOG_LEVEL": "DEBUG", **env},
        )
    )
    cap.add(f"`{' '.join(args[:2])}` stdout", done.stdout)
    cap.add(f"`{' '.join(args[:2])}` stderr", done.stderr)
    return done.returncode


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


async def test_no_secret_appears_anywhere(
    tmp_path: Path,
    moto_with_auth: Moto,
    receiver: OtlpReceiver,
    fresh_postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    cap = Capture()
    moto = moto_with_auth
    passphrase = f"pass-{secrets.token_hex(12)}"
    redis_password = f"redis-{secrets.token_hex(12)}"
    file_secret = f"file-secret-{secrets.token_hex(16)}"
    wrong_s3_secret = f"wrong-{secrets.token_hex(16)}"
    wrong_nats_password = f"wrong-nats-{secrets.token_hex(12)}"
    pg_password = f"pg-{secrets.token_hex(12)}"  # the server trusts loopback: never checked
    catalog_url = fresh_postgres_url.replace(
        "postgresql://postgres@", f"postgresql://postgres:{pg_password}@"
    )
    assert pg_password in catalog_url

    # NATS with one user per part, passwords in files
    nats_port = free_port()
    nats_dir = tmp_path / "nats"
    conf = write_config(nats_dir, [AGENT], host="127.0.0.1", port=nats_port)
    creds = nats_dir / "creds"
    url = f"nats://127.0.0.1:{nats_port}"
    secret_values = {
        "S3 secret key": moto.secret_key,
        "wrong S3 secret key": wrong_s3_secret,
        "wrong NATS password in a URL": wrong_nats_password,
        "catalog password": pg_password,
        "key file passphrase": passphrase,
        "Redis password": redis_password,
        "secret file content": file_secret,
        **{
            f"NATS password of {u}": (creds / f"{u}.password").read_text().strip()
            for u in (AGENT, "coordinator", "operator")
        },
    }

    redis = start_redis(tmp_path / "redis")  # its readiness check needs no password
    redis.cli("CONFIG", "SET", "requirepass", redis_password)
    src = make_tree(tmp_path / "src", big_mib=1)
    (src / "secrets.env").write_text(f"API_TOKEN={file_secret}\n")
    http_port = free_port()

    def s3_toml(secret: str) -> str:
        return (
            f'[targets.s3]\ntype = "s3"\nbucket = "{BUCKET}"\nendpoint_url = "{moto.endpoint}"\n'
            f'access_key_id = "{moto.access_key}"\nsecret_access_key = "{secret}"\n'
        )

    key_file = tmp_path / "repo.key"
    agent_head = (
        f'name = "{AGENT}"\nnats_url = "{url}"\nkey_file = "{key_file}"\nack_wait_s = 10\n'
        f'nats_user = "{AGENT}"\nnats_password_file = "{creds / f"{AGENT}.password"}"\n'
    )
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text(agent_head + s3_toml(moto.secret_key))
    wrong_toml = tmp_path / "wrong.toml"
    wrong_toml.write_text(agent_head + s3_toml(wrong_s3_secret))
    coord_toml = tmp_path / "coordinator.toml"
    coord_toml.write_text(
        f'name = "coord"\nnats_url = "{url}"\nnats_user = "coordinator"\n'
        f'nats_password_file = "{creds / "coordinator.password"}"\n'
        f'[catalog]\nurl = "{catalog_url}"\n'
        f"[http]\nport = {http_port}\nanonymous = true\n"
        f'[datasets.files]\nagent = "{AGENT}"\ntarget = "s3"\n'
        f'source = {{ type = "files", path = "{src}" }}\n'
        f'[datasets.cache]\nagent = "{AGENT}"\ntarget = "s3"\n'
        f'source = {{ type = "redis", host = "127.0.0.1", port = {redis.port}, aof = false }}\n'
    )
    operator = [
        *("--nats", url, "--nats-user", "operator"),
        *("--nats-password-file", str(creds / "operator.password")),
    ]
    env = {"MOSAIC_PASSPHRASE": passphrase}

    def otel(name: str) -> dict[str, str]:
        """The daemons export their traces to the receiver (OTLP/HTTP, every 0.1 s)."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": f"{name}-svc",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    procs: dict[str, subprocess.Popen[bytes]] = {}
    sniffer: Bus | None = None
    nats_server = contextlib.ExitStack()
    nats_server.enter_context(nats_from_config(conf, nats_port, nats_dir / "server.log"))
    try:
        with anyio.fail_after(240):
            subprocess.run(
                ["redis-cli", "-p", str(redis.port), "SET", "session:1", "hello"],
                env={**os.environ, "REDISCLI_AUTH": redis_password},
                check=True,
                capture_output=True,
            )
            init = ["repo", "keys", "init", "--key-file", str(key_file)]
            env_var = {"KEY_PASS": passphrase}
            assert (
                await mosaic(*init, "--passphrase-from-env", "KEY_PASS", env=env_var, cap=cap) == 0
            )

            # everything on NATS from here on, as the coordinator's user sees it
            sniffer = await Bus.connect(
                url,
                name="sniffer",
                user="coordinator",
                password=secret_values["NATS password of coordinator"],
            )
            for wildcard in ("mosaic.>", "$JS.>", "$KV.>", "_INBOX.>"):

                async def keep(msg: Msg) -> None:
                    cap.on_msg(msg)

                await sniffer.nc.subscribe(wildcard, cb=keep)

            for name, args, extra in (
                ("coordinator", ["coordinator", "run", "--config", str(coord_toml)], {}),
                (
                    "agent",
                    ["agent", "run", "--config", str(agent_toml)],
                    {**env, "REDISCLI_AUTH": redis_password},
                ),
            ):
                out = open(tmp_path / f"{name}.log", "wb")
                procs[name] = subprocess.Popen(  # noqa: ASYNC220 - a daemon, waited for below
                    [sys.executable, "-m", "mosaic.cli", *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=REPO_ROOT,
                    env={**os.environ, "MOSAIC_LOG_LEVEL": "DEBUG", **otel(name), **extra},
                )
                out.close()
            with anyio.fail_after(60):  # the coordinator answers once it is ready
                while True:
                    assert procs["coordinator"].poll() is None, "the coordinator exited"
                    try:
                        reply = await sniffer.request("status", StatusRequest(), timeout=1)
                    except BusError:  # not answering yet (no responders, or a timeout)
                        await anyio.sleep(0.2)
                        continue
                    assert isinstance(reply, StatusReply), reply
                    break

            assert (
                await mosaic(
                    "backup", "--dataset", "files", "--type", "full", *operator, env={}, cap=cap
                )
                == 0
            )
            assert await mosaic("backup", "--dataset", "cache", *operator, env={}, cap=cap) == 0
            assert await mosaic("list", *operator, env={}, cap=cap) == 0
            assert await mosaic("status", *operator, env={}, cap=cap) == 0
            catalog = await open_catalog(catalog_url)
            try:
                (files_backup,) = await catalog.list_backups(dataset="files")
            finally:
                await catalog.aclose()
            backup_id = files_backup.backup_id
            dest = tmp_path / "restored"
            assert (
                await mosaic("restore", backup_id, "--to", str(dest), *operator, env={}, cap=cap)
                == 0
            )
            assert (dest / "secrets.env").read_text() == f"API_TOKEN={file_secret}\n"
            # drills reach the secured NATS with the same operator options (they once
            # took --nats only and could not log in)
            assert await mosaic("drill", "run", "files", *operator, env={}, cap=cap) == 0
            assert await mosaic("drill", "report", *operator, env={}, cap=cap) == 0
            assert await mosaic("audit", "--config", str(coord_toml), env={}, cap=cap) == 0
            assert await mosaic("repo", "list", "--config", str(agent_toml), env=env, cap=cap) == 0

            stored = _bucket_bytes(moto.client("s3"))  # read while the key still works

            # deliberately failing: a wrong secret key, then the S3 key revoked mid-run
            wrong = await mosaic(
                "repo", "backup", "--config", str(wrong_toml), str(src), env=env, cap=cap
            )
            assert wrong == 1
            iam = moto.client("iam")
            iam.delete_access_key(UserName="agent", AccessKeyId=moto.access_key)
            failed = await mosaic(
                "backup", "--dataset", "files", *operator, "--timeout", "60", env={}, cap=cap
            )
            assert failed == 1
            in_url = f"nats://operator:{wrong_nats_password}@127.0.0.1:{nats_port}"
            refused = await mosaic("status", "--nats", in_url, env={}, cap=cap)
            assert refused == 1
            no_db = catalog_url.replace(f":{_port(catalog_url)}/", ":1/")
            assert await mosaic("audit", "--catalog", no_db, env={}, cap=cap) == 1

            async with aiohttp.ClientSession() as http:
                for path in (
                    "/api/v1/backup/status",
                    "/api/v1/backups",
                    f"/api/v1/backups/{backup_id}",
                    "/api/v1/alerts",
                    "/api/v1/openapi.json",
                    "/metrics",
                ):
                    async with http.get(f"http://127.0.0.1:{http_port}{path}") as resp:
                        cap.add(f"HTTP {path}", f"{resp.status} {resp.headers} {await resp.text()}")

            for stream, wildcard in (
                (subjects.EVENTS_STREAM, subjects.events_all()),
                (subjects.ALERTS_STREAM, subjects.alerts_all()),
                (subjects.AUDIT_STREAM, subjects.audit_all()),
            ):
                info = await sniffer.js.stream_info(stream)
                sub = await sniffer.js.subscribe(
                    wildcard, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
                )
                for _ in range(info.state.messages):
                    msg = await sub.next_msg(timeout=5)
                    cap.add(f"stream {stream}", f"{msg.subject} {msg.headers} {msg.data!r}\n")
                await sub.unsubscribe()
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(15)
        if sniffer is not None:
            await sniffer.aclose()
        redis.stop()
        nats_server.close()

    with anyio.fail_after(20):  # spans are exported every 0.1 s; wait for the agent's
        while not any(s.service == "agent-svc" for s in receiver.spans):  # noqa: ASYNC110
            await anyio.sleep(0.1)
    cap.add("trace spans", repr(receiver.spans))
    for name in procs:
        cap.add(f"{name} process output", (tmp_path / f"{name}.log").read_bytes())
    cap.add("caplog", caplog.text)
    cap.add("nats-server log", (nats_dir / "server.log").read_bytes())
    with psycopg.connect(fresh_postgres_url) as pg:
        for table in ("jobs", "backups", "audit", "maintenance"):
            cap.add("catalog rows", repr(pg.execute(f"SELECT * FROM {table}").fetchall()))
    cap.add("repository objects", stored)

    # the run really happened and was really captured
    texts = cap.texts
    assert (
        "DEBUG" in texts["agent process output"] and "DEBUG" in texts["coordinator process output"]
    )
    assert any(".backup_completed" in m for m in cap.nats)
    assert any(".restore_completed" in m for m in cap.nats)
    failed_events = [m for m in cap.nats if m.startswith("mosaic.event.") and ".failed " in m]
    assert failed_events, "the revoked-key backup published no failed event"
    assert "InvalidAccessKeyId" in failed_events[-1] or "403" in failed_events[-1]
    assert "SignatureDoesNotMatch" in texts["`repo backup` stderr"]
    assert "refused the credentials in the URL" in texts["`status --nats` stderr"]
    assert "cannot connect" in texts["`audit --catalog` stderr"]
    assert len(stored) > 1 << 20 and texts["HTTP /metrics"].startswith("200")

    assert cap.leaks(secret_values) == []
