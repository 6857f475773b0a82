"""Traces and JSON logs: one backup is one connected trace, received as real OTLP/HTTP.

The receiver is a small HTTP server decoding ``/v1/traces`` (protobuf
ExportTraceServiceRequest) with ``opentelemetry-proto``, fed by the real OTLP/HTTP
exporter through a BatchSpanProcessor: what Jaeger's OTLP port would receive.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import msgspec
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from rich.console import Console

from engine.keys.files import create_key_file
from mosaic import operator
from shared import logs, tracing
from shared.config.targets import LocalTargetConfig, S3TargetConfig
from shared.wire.events import BackupCompleted, RestoreCompleted
from tests.harness import REPO_ROOT, agent_toml, cli, make_tree, running_stack, unique

QUIET = Console(quiet=True)
SECRET = "s3cr3t-Zq9x-tracing"


@dataclass(frozen=True)
class Received:
    service: str
    scope: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, object]
    error: bool


class OtlpReceiver:
    """OTLP/HTTP traces endpoint on a free loopback port, in a thread."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver.add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, req: ExportTraceServiceRequest) -> None:
        out = []
        for rs in req.resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                out.extend(
                    Received(
                        service=attrs.get("service.name", ""),
                        scope=ss.scope.name,
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        attributes={
                            a.key: getattr(a.value, a.value.WhichOneof("value"))
                            for a in s.attributes
                        },
                        error=s.status.code == s.status.STATUS_CODE_ERROR,
                    )
                    for s in ss.spans
                )
        with self.lock:
            self.spans.extend(out)

    def named(self, prefix: str) -> list[Received]:
        with self.lock:
            return [s for s in self.spans if s.name.startswith(prefix)]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def provider(receiver: OtlpReceiver) -> Iterator[TracerProvider]:
    """Our spans go to the receiver for one test; the previous provider comes back."""
    p = TracerProvider(resource=Resource.create({"service.name": "mosaic-test"}))
    p.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces")))
    previous = tracing.install(p)
    yield p
    tracing.install(previous)
    p.shutdown()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """JSON lines of the agent's and coordinator's loggers, as `--log-format json`."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logs.JsonFormatter())
    saved = []
    for name in ("agent", "coordinator"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.level))
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    yield buf
    for lg, level in saved:
        lg.removeHandler(handler)
        lg.setLevel(level)


async def _wait_for(receiver: OtlpReceiver, name: str, job_id: str, *flush: TracerProvider) -> None:
    """Until the span ``name`` of ``job_id`` has arrived (the coordinator ends its record
    span after the catalog write, which may trail the event the test waited for)."""
    with anyio.fail_after(30):
        while not [s for s in receiver.named(name) if s.attributes.get("mosaic.job_id") == job_id]:
            for p in flush:
                p.force_flush()
            await anyio.sleep(0.05)


def _trace_of(receiver: OtlpReceiver, root: Received) -> list[Received]:
    """The spans of ``root``'s trace, checked to be one tree with ``root`` at the top."""
    spans = [s for s in receiver.spans if s.trace_id == root.trace_id]
    ids = {s.span_id for s in spans}
    assert [s for s in spans if s.parent_id == ""] == [root]
    assert all(s.parent_id in ids for s in spans if s.parent_id)
    return spans


def _start_agent(cfg: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [
                sys.executable,
                *("-m", "mosaic.cli", "agent", "run", "--config", str(cfg)),
                *("--log-format", "json"),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )


async def test_backup_is_one_trace_across_processes(
    nats_url: str, tmp_path: Path, receiver: OtlpReceiver, provider: TracerProvider
) -> None:
    """Coordinator in this process, agent a real `agent run --log-format json` process
    configured only by OTEL_* variables: one trace, joined through NATS headers."""
    src = make_tree(tmp_path / "src", big_mib=9)  # > 2 packs of 4 MiB: several uploads
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    name = unique("agent")
    async with running_stack(
        nats_url, tmp_path, target, src, with_agent=False, agent_name=name
    ) as st:
        cfg = agent_toml(
            tmp_path / "agent.toml",
            name=name,
            nats_url=nats_url,
            key_file=tmp_path / "repo.key",
            targets={"t": target},
        )
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": f"{name}-svc",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s, not 5 s
        }
        env.pop("OTEL_TRACES_EXPORTER", None)
        log_path = tmp_path / "agent.log"
        create_key_file(str(tmp_path / "repo.key"), None)  # no "created a key" notice
        proc = _start_agent(cfg, env, log_path)
        try:
            done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
            assert isinstance(done, BackupCompleted)
            await _wait_for(receiver, "record backup_completed", done.job_id, provider)
            await _wait_for(receiver, f"backup {st.dataset}", done.job_id)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(20)

    [dispatch] = receiver.named(f"dispatch backup {st.dataset}")
    spans = _trace_of(receiver, dispatch)  # one trace, the coordinator's dispatch its root
    assert dispatch.attributes["mosaic.job_id"] == done.job_id
    assert dispatch.service == "mosaic-test" and dispatch.scope == "mosaic.coordinator"
    # the agent's span continues it across NATS (traceparent in the job's headers)
    [agent_span] = [s for s in spans if s.name == f"backup {st.dataset}"]
    assert agent_span.parent_id == dispatch.span_id
    assert agent_span.service == f"{name}-svc" and agent_span.scope == "mosaic.agent"
    assert not agent_span.error
    # every pack upload is a child of the agent's span, with its size and object key
    uploads = [s for s in spans if s.name == "upload pack"]
    assert len(uploads) >= 2
    assert all(u.parent_id == agent_span.span_id for u in uploads)
    assert all(str(u.attributes["mosaic.key"]).startswith("data/") for u in uploads)
    assert sum(int(str(u.attributes["mosaic.bytes"])) for u in uploads) >= 9 << 20
    names = {s.name: s for s in spans}
    for child in ("read source", "write index", "commit manifest"):
        assert names[child].parent_id == agent_span.span_id, child
    assert names["commit manifest"].attributes["mosaic.backup_id"] == done.backup_id
    # the coordinator's recording of the agent's events joins the same trace
    recorded = [s for s in spans if s.name.startswith("record ")]
    assert {s.name for s in recorded} == {"record started", "record backup_completed"}
    assert all(s.parent_id == agent_span.span_id for s in recorded)
    # and no other trace was made for this job
    assert not [
        s for s in receiver.spans if s.trace_id != dispatch.trace_id and st.dataset in s.name
    ]

    # the agent's log is JSON lines; those logged inside the job carry its trace id
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    [done_line] = [x for x in lines if done.job_id in x["message"]]
    assert (done_line["trace_id"], done_line["span_id"]) == (
        dispatch.trace_id,
        agent_span.span_id,
    )
    assert "trace_id" not in lines[0]  # "agent … ready": outside any job


async def test_restore_is_one_trace_without_secrets(
    nats_url: str,
    tmp_path: Path,
    receiver: OtlpReceiver,
    provider: TracerProvider,
    json_log: io.StringIO,
    s3_bucket: S3TargetConfig,
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    # moto accepts any key: a distinctive one, so that finding it anywhere means a leak
    target = msgspec.structs.replace(s3_bucket, secret_access_key=SECRET)
    async with running_stack(nats_url, tmp_path, target, src) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        dest = tmp_path / "restored"
        res = await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60)
        assert isinstance(res, RestoreCompleted)
        await _wait_for(receiver, "record restore_completed", res.job_id, provider)

    [dispatch] = receiver.named(f"dispatch restore {st.dataset}")
    spans = _trace_of(receiver, dispatch)
    [agent_span] = [s for s in spans if s.name == f"restore {st.dataset}"]
    assert agent_span.parent_id == dispatch.span_id
    names = {s.name: s for s in spans}
    assert names["restore data"].parent_id == agent_span.span_id
    assert names["record restore_completed"].parent_id == agent_span.span_id
    # the backup before it is a trace of its own
    [backup_dispatch] = receiver.named(f"dispatch backup {st.dataset}")
    assert backup_dispatch.trace_id != dispatch.trace_id

    # the S3 secret key appears in no span (names, attributes) and no log line
    assert SECRET not in repr(receiver.spans)
    assert SECRET not in json_log.getvalue()
    backup_spans = _trace_of(receiver, backup_dispatch)
    uploads = [s for s in backup_spans if s.name == "upload pack"]
    assert uploads and all(s3_bucket.bucket in str(u.attributes["mosaic.target"]) for u in uploads)

    # in-process JSON lines: the coordinator's dispatch line carries the restore's trace
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    [dispatched] = [
        x
        for x in lines
        if x["logger"] == "coordinator.jobs.dispatch" and res.job_id in x["message"]
    ]
    assert (dispatched["trace_id"], dispatched["span_id"]) == (
        dispatch.trace_id,
        dispatch.span_id,
    )


def test_setup_from_env_exports_with_service_name(receiver: OtlpReceiver) -> None:
    """The daemons' path: the standard OTEL_* variables turn OTLP/HTTP export on."""
    previous = tracing.install(None)
    try:
        on = tracing.setup_from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url + "/", "OTEL_SERVICE_NAME": "web1-agent"},
            "mosaic-backup-agent",
        )
        assert on
        with tracing.span("env-configured span", attributes={"mosaic.dataset": "ds1"}):
            headers = tracing.inject({})
        tracing.shutdown()  # flushes
        [got] = receiver.named("env-configured span")
        assert got.service == "web1-agent"
        assert headers["traceparent"].split("-")[1] == got.trace_id
    finally:
        tracing.install(previous)


@pytest.mark.parametrize(
    "env",
    [
        {},  # nothing configured: no exporter, no network
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "zipkin"},
    ],
)
def test_tracing_off_adds_no_trace_but_passes_a_parent_on(env: dict[str, str]) -> None:
    previous = tracing.install(None)
    try:
        assert not tracing.setup_from_env(env, "mosaic-backup-agent")
        assert tracing.current_provider() is None
        with tracing.span("not recorded"):
            assert tracing.inject({}) == {}
            assert tracing.ids() is None
        # an agent without tracing keeps the coordinator's trace going in its events
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        with tracing.span("pass-through", context=tracing.extract({"traceparent": parent})):
            assert tracing.inject({})["traceparent"] == parent
    finally:
        tracing.install(previous)


def test_bad_log_format_is_one_line() -> None:
    res = cli("agent", "run", "--config", "/nonexistent.toml", "--log-format", "yaml")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "mosaic-backup: error: --log-format: log format 'yaml' is unknown (use 'text' or 'json')"
    ]
