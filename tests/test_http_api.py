"""The coordinator's HTTP API over real HTTP: status document, backups, /metrics, OpenAPI.

A real stack (NATS, coordinator, agent) makes real backups; the API is read back with an
HTTP client on the port the coordinator bound, on both catalog backends.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from coordinator.api_models import BackupPage, BackupStatusDoc, ErrorDoc, human_bytes
from coordinator.metrics import Metrics, Snapshot
from mosaic import operator
from mosaic.operator import OperatorError
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load
from shared.config.targets import LocalTargetConfig
from shared.errors import ConfigError
from shared.vocab import utcnow
from shared.wire.events import BackupCompleted
from shared.wire.records import BackupRecord, JobRecord
from shared.wire.status import DatasetStatus, StatusReply
from tests.harness import REPO_ROOT, make_tree, running_stack, write_toml

QUIET = Console(quiet=True)


async def get(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → {sorted labels: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


async def test_status_backups_metrics_after_a_backup(
    nats_url: str, tmp_path: Path, catalog_url: str
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(
        nats_url, tmp_path, target, src, catalog_url=catalog_url, http=True
    ) as st:
        assert st.http_url is not None
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)

        code, ctype, body = await get(f"{st.http_url}/api/v1/backup/status")
        assert code == 200 and ctype.startswith("application/json")
        doc = msgspec.json.decode(body, type=BackupStatusDoc)
        assert doc.status == "healthy"
        assert doc.last_backup == done.finished_at
        assert doc.next_backup is None  # not scheduled
        # free space comes with the agent's heartbeat (sent at start, and every interval);
        # the total adds up every agent the shared NATS has heard of, so look at ours
        with anyio.fail_after(20):
            while (free := doc.datasets[0].storage_free) is None:
                await anyio.sleep(0.1)
                _, _, again = await get(f"{st.http_url}/api/v1/backup/status")
                doc = msgspec.json.decode(again, type=BackupStatusDoc)
        assert 0 < free <= shutil.disk_usage(tmp_path).total
        assert doc.storage_free_bytes is not None and doc.storage_free_bytes >= free
        assert doc.storage_used_bytes == done.summary.bytes_stored > 0
        # the strategy's document as written: "245GB" strings and a count of failures
        assert doc.storage_used == human_bytes(doc.storage_used_bytes)
        assert doc.storage_free == human_bytes(doc.storage_free_bytes)
        assert re.fullmatch(r"\d+(\.\d)?[KMGTP]?B", doc.storage_free), doc.storage_free
        assert doc.recent_failures == 0 and doc.recent_failure_list == []
        assert doc.document_version == 2 and doc.backups_total == 1
        [row] = doc.datasets
        assert (row.dataset, row.agent, row.target) == (st.dataset, st.agent.name, "t")
        assert row.last_backup is not None and row.last_backup.backup_id == done.backup_id
        raw = msgspec.json.decode(body)
        assert raw["next_backup"] is None and "last_backup" in raw  # explicit nulls

        code, _, body = await get(f"{st.http_url}/api/v1/backups?days=1&dataset={st.dataset}")
        assert code == 200
        page = msgspec.json.decode(body, type=BackupPage)
        assert [b.backup_id for b in page.backups] == [done.backup_id]
        code, _, body = await get(f"{st.http_url}/api/v1/backups?dataset=nope&limit=5")
        assert code == 200 and msgspec.json.decode(body, type=BackupPage).backups == []

        code, _, body = await get(f"{st.http_url}/api/v1/backups/{done.backup_id}")
        assert code == 200
        one = msgspec.json.decode(body, type=BackupRecord)
        assert (one.backup_id, one.bytes_read, one.finished_at) == (
            done.backup_id,
            done.summary.bytes_read,
            done.finished_at,
        )

        code, ctype, body = await get(f"{st.http_url}/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        m = metrics(body.decode())
        key = (("dataset", st.dataset), ("target", "t"))
        assert m["backup_last_success_timestamp"] == {key: done.finished_at.timestamp()}
        assert m["backup_size_bytes"] == {key: done.summary.bytes_read}
        assert m["backup_duration_seconds"] == {key: pytest.approx(done.summary.duration_s)}
        assert m["backup_failure_total"] == {(("dataset", st.dataset),): 0}
        assert m["mosaic_catalog_backups_total"] == {(): 1}
        # known only from a heartbeat (tests/test_heartbeat.py), never made up
        for labels, pct in m.get("backup_storage_used_percent", {}).items():
            assert [k for k, _ in labels] == ["agent", "target"] and 0 <= pct <= 100

        code, _, body = await get(f"{st.http_url}/api/v1/openapi.json")
        assert code == 200
        spec: dict[str, Any] = msgspec.json.decode(body)
        assert spec["openapi"].startswith("3.1")
        assert set(spec["paths"]) >= {
            "/api/v1/backup/status",
            "/api/v1/backups",
            "/api/v1/backups/{backup_id}",
            "/metrics",
        }
        schemas = spec["components"]["schemas"]
        assert {"BackupStatusDoc", "BackupPage", "BackupRecord", "ErrorDoc"} <= set(schemas)
        assert "storage_used" in schemas["BackupStatusDoc"]["properties"]


async def test_errors_are_json(nats_url: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_url, tmp_path, target, src, with_agent=False, http=True) as st:
        for path, status, code in [
            ("/api/v1/backups/no-such-backup", 404, "unknown_backup"),
            ("/api/v1/nothing-here", 404, "not_found"),
            ("/api/v1/backups?limit=0", 400, "bad_request"),
            ("/api/v1/backups?days=soon", 400, "bad_request"),
        ]:
            got, ctype, body = await get(f"{st.http_url}{path}")
            assert (got, ctype.split(";")[0]) == (status, "application/json"), path
            err = msgspec.json.decode(body, type=ErrorDoc).error
            assert err.code == code, path
        # no backup yet: degraded, and nothing invented
        _, _, body = await get(f"{st.http_url}/api/v1/backup/status")
        doc = msgspec.json.decode(body, type=BackupStatusDoc)
        assert doc.status == "degraded" and doc.last_backup is None and doc.storage_used == "0B"


async def test_failed_backup_shows_in_status_and_metrics(
    nats_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "does-not-exist"
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_url, tmp_path, target, missing, http=True) as st:
        with pytest.raises(OperatorError):
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        # The failure reaches the catalog moments after the operator saw the event.
        with anyio.fail_after(10):
            while True:
                _, _, body = await get(f"{st.http_url}/api/v1/backup/status")
                doc = msgspec.json.decode(body, type=BackupStatusDoc)
                # both parts of the document are read one after the other: wait for both
                if doc.recent_failure_list and doc.datasets[0].last_failure is not None:
                    break
                await anyio.sleep(0.05)
        assert doc.status in ("degraded", "failing")
        [failure] = doc.recent_failure_list
        assert doc.recent_failures == 1  # a count in the strategy's document
        assert failure.dataset == st.dataset and failure.status == "failed"
        assert doc.datasets[0].last_failure is not None
        # Unauthenticated: a category and the message without paths; the full text is
        # in the coordinator's log (and in the NATS status reply, which needs a login).
        for shown in (failure, doc.datasets[0].last_failure):
            assert shown.error_message is not None
            assert shown.error_message.startswith("source unreadable: "), shown.error_message
            assert "<path>" in shown.error_message
            assert str(tmp_path) not in shown.error_message
        assert str(tmp_path) not in body.decode()
        logged = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
        assert any(str(missing) in line for line in logged), logged
        full = await operator.status(st.bus, QUIET)
        assert full.recent_failures[0].error_message is not None
        assert str(missing) in full.recent_failures[0].error_message

        _, _, body = await get(f"{st.http_url}/metrics")
        m = metrics(body.decode())
        assert m["backup_failure_total"] == {(("dataset", st.dataset),): 1}
        assert "backup_last_success_timestamp" not in m  # never succeeded: absent, not 0


def test_http_config_is_validated(tmp_path: Path) -> None:
    ok = load(write_toml(tmp_path / "a.toml", "[http]\nport = 9000\n"), CoordinatorConfig)
    assert ok.http is not None and (ok.http.listen, ok.http.port) == ("127.0.0.1", 9000)
    assert load(write_toml(tmp_path / "b.toml", ""), CoordinatorConfig).http is None
    with pytest.raises(ConfigError, match=r"http\.port"):
        load(write_toml(tmp_path / "c.toml", "[http]\nport = 70000\n"), CoordinatorConfig)

    example = load(REPO_ROOT / "deploy" / "coordinator.toml.example", CoordinatorConfig)
    assert example.http is not None and example.http.port == 8470


def _failed(job_id: str, dataset: str, kind: str) -> JobRecord:
    now = utcnow()
    return JobRecord(
        job_id=job_id,
        job_kind=kind,
        dataset=dataset,
        agent="a",
        target="t",
        status="failed",
        requested_at=now,
        updated_at=now,
    )


def test_failure_counter_counts_backup_jobs_per_dataset() -> None:
    """Plain values: restores do not count, a dataset gone from the config still shows
    its failures, a configured dataset without failures reads 0."""
    status = StatusReply(
        status="degraded",
        coordinator="c",
        datasets=[DatasetStatus(dataset="db", agent="a", target="t")],
        recent_failures=[],
        backups_total=0,
    )
    failures = [
        _failed("1", "old", "backup"),
        _failed("2", "old", "backup"),
        _failed("3", "db", "restore"),
    ]
    text = Metrics().render(Snapshot(status=status, failures=failures)).decode()
    m = metrics(text)
    assert m["backup_failure_total"] == {(("dataset", "db"),): 0, (("dataset", "old"),): 2}
    assert "backup_size_bytes" not in m and m["mosaic_catalog_backups_total"] == {(): 0}


async def test_alerts_are_redacted_and_every_route_is_in_openapi(tmp_path: Path) -> None:
    """The alert list over real HTTP: descriptions carry no paths or endpoints. And the
    OpenAPI document the server serves lists every route the server answers."""
    from coordinator.api_models import AlertsDoc
    from coordinator.catalog import open_catalog
    from coordinator.http import HttpApi
    from shared.config.coordinator import HttpConfig
    from shared.wire.monitoring import Alert

    alert = Alert(
        status="firing",
        rule="backup_failed",
        dataset="db",
        fingerprint="backup_failed/db/",
        summary="backup of db failed",
        description=(
            "failed at 2026-12-03T02:00:00+00:00: job j1: repository.key_file: key file "
            "/etc/mosaic-backup/repository.key does not exist, but target 'off' "
            "(s3:mosaic-backups/web1 at https://s3.example.net:9000) holds a repository"
        ),
        starts_at=utcnow(),
    )

    async def status(**_: Any) -> StatusReply:
        return StatusReply(
            status="healthy", coordinator="c", datasets=[], recent_failures=[], backups_total=0
        )

    catalog = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    api = HttpApi(HttpConfig(port=0, anonymous=True), catalog, status, alerts=lambda: [alert])
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(api.serve)
            url = f"http://127.0.0.1:{api.port}"
            code, _, body = await get(f"{url}/api/v1/alerts")
            assert code == 200
            [shown] = msgspec.json.decode(body, type=AlertsDoc).alerts
            assert shown.summary == alert.summary and shown.fingerprint == alert.fingerprint
            for secret in ("/etc/mosaic-backup", "mosaic-backups", "s3.example.net"):
                assert secret not in body.decode(), secret
            assert "key file <path> does not exist" in shown.description
            assert "(<endpoint>)" in shown.description

            _, _, body = await get(f"{url}/api/v1/openapi.json")
            spec: dict[str, Any] = msgspec.json.decode(body)
            served = {
                r.resource.canonical for r in api.app().router.routes() if r.resource is not None
            }
            assert served and served <= set(spec["paths"]), served - set(spec["paths"])
            assert "AlertsDoc" in spec["components"]["schemas"]
            tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


def test_sizes_are_written_as_the_strategy_writes_them() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 1500, 245 * 10**9, 755 * 10**9)] == [
        "0B",
        "999B",
        "1.0KB",
        "1.5KB",
        "245GB",
        "755GB",
    ]
    assert human_bytes(12_345 * 10**15) == "12345PB"


async def test_status_document_carries_coverage_and_windows(tmp_path: Path) -> None:
    """What the NATS status reply says of coverage and windows, the HTTP document says."""
    from coordinator.catalog import open_catalog
    from coordinator.http import HttpApi
    from shared.config.coordinator import HttpConfig
    from shared.wire.status import CertificateStatus, UnprotectedItem

    items = [
        UnprotectedItem(agent="web1", kind="postgres", key="/var/lib/postgresql/15/main"),
        UnprotectedItem(agent="web1", kind="redis", key="6379", ignored=True, ignored_by="web1:*"),
    ]
    cert = CertificateStatus(agent="web1", path="/etc/ssl/x.pem", days_left=3.0, expiring=True)

    async def status(**_: Any) -> StatusReply:
        return StatusReply(
            status="degraded",
            coordinator="c",
            datasets=[],
            recent_failures=[],
            backups_total=0,
            unprotected=items,
            unprotected_total=1,
            inventories=1,
            certificates=[cert],
            windows_exceeded=2,
        )

    catalog = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    api = HttpApi(HttpConfig(port=0), catalog, status)
    try:
        doc = await api.status_document()
    finally:
        await catalog.aclose()
    assert doc.unprotected_total == 1 and doc.unprotected == items
    assert doc.certificates == [cert] and doc.windows_exceeded == 2


async def test_the_api_answers_only_a_valid_token_unless_anonymous(tmp_path: Path) -> None:
    """[http] without ``anonymous``: no token, a wrong one, an expired or a revoked one get
    the same 401; a viewer token reads the status document and /metrics; its first use
    is audited."""
    from datetime import timedelta

    from coordinator.audit import AuditTrail
    from coordinator.auth.tokens import TokenStore
    from coordinator.catalog import open_catalog
    from coordinator.http import HttpApi
    from shared.config.coordinator import HttpConfig

    async def status(**_: Any) -> StatusReply:
        return StatusReply(
            status="healthy", coordinator="c", datasets=[], recent_failures=[], backups_total=0
        )

    catalog = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    now = [utcnow()]
    tokens = TokenStore(catalog, AuditTrail(catalog), clock=lambda: now[0])
    _, viewer = await tokens.create("prom", "viewer", timedelta(days=1), actor="admin")
    _, short = await tokens.create("short", "viewer", timedelta(minutes=1), actor="admin")
    _, gone = await tokens.create("gone", "admin", timedelta(days=1), actor="admin")
    await tokens.revoke("gone", actor="admin")
    api = HttpApi(HttpConfig(port=0), catalog, status)
    api.tokens.clock = lambda: now[0] + timedelta(minutes=5)  # "short" has expired

    async def ask(path: str, token: str | None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{api.port}{path}", headers=headers) as r,
        ):
            return r.status, await r.read()

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(api.serve)
            refused = set()
            for token in (None, "", "mbk_nope_nope", viewer + "x", short, gone):
                code, body = await ask("/api/v1/backup/status", token)
                assert code == 401, (token, code)
                refused.add(msgspec.json.decode(body, type=ErrorDoc).error.message)
            assert len(refused) == 1 and "tokens create" in refused.pop()
            code, body = await ask("/api/v1/backup/status", viewer)
            assert code == 200 and msgspec.json.decode(body, type=BackupStatusDoc).status
            code, body = await ask("/metrics", viewer)
            assert code == 200 and b"# HELP" in body
            tg.cancel_scope.cancel()
        used = await catalog.list_audit(action="token_used")
        assert [e.actor for e in used] == ["token prom"]  # once, though used twice
    finally:
        await catalog.aclose()


async def test_the_api_serves_https_and_tls13_only_refuses_tls12(tmp_path: Path) -> None:
    import ssl

    from coordinator.catalog import open_catalog
    from coordinator.http import HttpApi
    from mosaic.setup.pki import init_ca, issue
    from shared.config.coordinator import HttpConfig

    ca, _ = init_ca(tmp_path / "pki")
    crt, key = issue(tmp_path / "pki", "coordinator", server=True, hosts=["127.0.0.1"])

    async def status(**_: Any) -> StatusReply:
        return StatusReply(
            status="healthy", coordinator="c", datasets=[], recent_failures=[], backups_total=0
        )

    def client(maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca))
        if maximum is not None:
            ctx.maximum_version = maximum
        return ctx

    cfg = HttpConfig(port=0, anonymous=True, tls_cert=str(crt), tls_key=str(key), tls13_only=True)
    catalog = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    api = HttpApi(cfg, catalog, status)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(api.serve)
            url = f"https://127.0.0.1:{api.port}/api/v1/backup/status"
            async with aiohttp.ClientSession() as s, s.get(url, ssl=client()) as r:
                assert r.status == 200 and r.url.scheme == "https"
            with pytest.raises(aiohttp.ClientError):
                async with aiohttp.ClientSession() as s:
                    await s.get(url, ssl=client(ssl.TLSVersion.TLSv1_2))
            tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()
    with pytest.raises(ConfigError, match="tls13_only needs tls_cert"):
        load(write_toml(tmp_path / "h.toml", "[http]\ntls13_only = true\n"), CoordinatorConfig)
