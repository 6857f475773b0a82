"""The coordinator's read-only HTTP API: the status document, backups, ``/metrics``, OpenAPI.

Operators and monitoring (Prometheus, uptime checks, dashboards) speak HTTP, not NATS.
aiohttp runs inside the coordinator's own asyncio loop, so handlers await the same
catalog as the NATS API, and the server is one more task in the coordinator's task group
(readiness signalled once the port is bound). Every answer is read from the catalog at
request time, so any coordinator gives the same answer and nothing resets on restart.

Errors are ``{"error": {"code": …, "message": …}}`` with a fitting HTTP status; a
failure inside a handler is logged in full but answered without its details, because
library messages can carry hosts, users or URLs. For the same reason the failed jobs'
messages and the alerts' descriptions in the (unauthenticated) documents are redacted
by :func:`redact`: the coordinator logs every job failure in full when it arrives.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from importlib import metadata
from typing import Any

import anyio
import msgspec
from aiohttp import web

from coordinator.api_models import (
    API_PREFIX,
    RECENT_FAILURES_S,
    AlertsDoc,
    BackupPage,
    BackupStatusDoc,
    ErrorBody,
    ErrorDoc,
    human_bytes,
    openapi_document,
)
from coordinator.audit import AuditTrail
from coordinator.auth.errors import TokenRefused
from coordinator.auth.tokens import TokenStore
from coordinator.catalog.base import Catalog
from coordinator.checklist import public, with_check_path
from coordinator.metrics import CONTENT_TYPE, Metrics, read_snapshot
from coordinator.tls import server_context
from shared.config.coordinator import HttpConfig
from shared.errors import ConfigError, MosaicError
from shared.vocab import utcnow
from shared.wire.check import CheckReport
from shared.wire.monitoring import Alert
from shared.wire.records import JobRecord
from shared.wire.status import DatasetStatus, StatusReply

log = logging.getLogger(__name__)

StatusFn = Callable[..., Awaitable[StatusReply]]  # (limit=, offset=, dataset=)
AlertsFn = Callable[[], list[Alert]]
MAX_LIMIT = 10_000
# Datasets detailed in one status document by default (problems first; ?limit, ?offset).
STATUS_PAGE = 100
RECENT_FAILURES_SCAN = 1000  # failures read to count the last day's (the count's cap)
_enc = msgspec.json.Encoder()


# error code (its first matching prefix) → what an unauthenticated reader is told
_CATEGORIES = (
    ("target.not_found", "object missing on target"),
    ("target.unreadable", "target unreadable"),
    ("target", "target unreachable"),
    ("repository.integrity", "integrity error"),
    ("repository.partial_restore", "integrity error"),
    ("repository.key_file", "key file problem"),
    ("repository.wrong_key", "wrong key"),
    ("repository.damaged", "repository damaged"),
    ("repository", "repository error"),
    ("source", "source unreadable"),
    ("config", "configuration error"),
    ("bus", "NATS error"),
    ("catalog", "catalog error"),
    ("restore", "restore failed"),
    ("no_restore_point", "no restore point"),
    ("operator", "job refused"),
    ("internal", "internal error"),
)
_SECRETS = [
    # how a target describes itself: local:/path, s3:bucket/prefix at URL, sftp:user@host…
    (re.compile(r"\b(?:local|s3|sftp):[^\s'\"`()]+(?: at [^\s'\"`()]+)?"), "<endpoint>"),
    (re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`()]+"), "<endpoint>"),  # URLs
    (re.compile(r"(?<![\w<>/])~?/[^\s'\"`,;()]+"), "<path>"),
    (re.compile(r"\b[\w.-]+@[\w.-]+(?::\d+)?"), "<endpoint>"),  # user@host
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<endpoint>"),
    (re.compile(r"\[[0-9A-Fa-f:]*:[0-9A-Fa-f:]*\](?::\d+)?"), "<endpoint>"),  # [v6]:port
    (re.compile(r"\b[A-Za-z][\w-]*(?:\.[\w-]+)*:\d{2,5}\b"), "<endpoint>"),  # host:port
    # a bucket named in our words ("bucket 'x'", "bucket=x")
    (re.compile(r"(?i)\b(bucket)(\s+|=|:\s*)['\"]?[\w.-]+['\"]?"), r"\1\2<endpoint>"),
]


def redact(text: str) -> str:
    """``text`` fit for an unauthenticated reader: paths become ``<path>``, URLs, host
    names, addresses and buckets ``<endpoint>``."""
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


def public_error(code: str | None, message: str | None) -> str | None:
    """A failed job's message as the HTTP documents show it: ``category: redacted``."""
    if message is None:
        return None
    c = code or ""
    category = next(
        (cat for prefix, cat in _CATEGORIES if c == prefix or c.startswith(prefix + ".")),
        "job failed",
    )
    return f"{category}: {redact(message)[:300]}"


def _public_job(job: JobRecord | None) -> JobRecord | None:
    if job is None or job.error_message is None:
        return job
    return msgspec.structs.replace(
        job, error_message=public_error(job.error_code, job.error_message)
    )


def _public_dataset(ds: DatasetStatus) -> DatasetStatus:
    if ds.last_failure is None:
        return ds
    return msgspec.structs.replace(ds, last_failure=_public_job(ds.last_failure))


class BadRequest(Exception):
    """A query parameter is invalid; answered with 400."""


def _json(doc: msgspec.Struct | dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=_enc.encode(doc), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(ErrorDoc(error=ErrorBody(code=code, message=message)), status)


def _int_param(request: web.Request, name: str, lo: int, hi: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name}={raw!r} is not an integer") from None
    if value < lo or (hi is not None and value > hi):
        upper = f" and {hi}" if hi is not None else ""
        raise BadRequest(f"query parameter {name}={value} must be between {lo}{upper}")
    return value


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as the JSON error document, never an HTML page or a traceback."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, "bad_request", str(exc))
    except web.HTTPException as exc:  # unknown path, wrong method
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else exc.reason.lower().replace(" ", "_")
        return _error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
    except MosaicError as exc:
        # Our own errors carry a stable code and messages already free of credentials.
        log.warning("HTTP %s %s failed: %s", request.method, request.path, exc)
        return _error(503 if exc.retryable else 500, exc.code, str(exc))
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return _error(500, "internal", "internal error; see the coordinator's log")


class HttpApi:
    """The HTTP server of one coordinator; :meth:`serve` does nothing if ``cfg`` is None."""

    def __init__(
        self,
        cfg: HttpConfig | None,
        catalog: Catalog,
        status: StatusFn,
        *,
        alerts: AlertsFn | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self.cfg = cfg
        self._alerts = alerts
        self.catalog = catalog
        self.tokens = TokenStore(catalog, audit or AuditTrail(catalog))
        self._status = status
        self.metrics = Metrics()
        # The bound port while serving (the real one when the config says 0).
        self.port: int | None = None
        try:
            version = metadata.version("mosaic-backup")
        except metadata.PackageNotFoundError:
            version = "unknown"
        self._openapi = _enc.encode(with_check_path(openapi_document(version), API_PREFIX))
        # the checklist (coordinator/checklist.py), set by the service; None: not served
        self.check: Callable[[], Awaitable[CheckReport]] | None = None

    def app(self) -> web.Application:
        guards = [] if self.cfg is None or self.cfg.anonymous else [self._token_guard]
        app = web.Application(middlewares=[_errors, *guards])
        app.router.add_get(f"{API_PREFIX}/backup/status", self.get_status)
        app.router.add_get(f"{API_PREFIX}/backups", self.list_backups)
        app.router.add_get(f"{API_PREFIX}/backups/{{backup_id}}", self.get_backup)
        app.router.add_get(f"{API_PREFIX}/openapi.json", self.get_openapi)
        app.router.add_get("/metrics", self.get_metrics)
        app.router.add_get(f"{API_PREFIX}/alerts", self.get_alerts)
        app.router.add_get(f"{API_PREFIX}/check", self.get_check)
        return app

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``started()`` once the port is bound."""
        cfg = self.cfg
        if cfg is None:
            task_status.started()
            return
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, cfg.listen, cfg.port, ssl_context=server_context(cfg, "http")
            )
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(
                    f"http: cannot listen on {cfg.listen}:{cfg.port}: {exc.strerror} "
                    "(choose another [http] listen/port, or stop what holds it)"
                ) from exc
            self.port = int(runner.addresses[0][1])
            scheme = "https" if cfg.tls else "http"
            log.info("HTTP API on %s://%s:%d%s/", scheme, cfg.listen, self.port, API_PREFIX)
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self.port = None
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    @web.middleware
    async def _token_guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every request presents an API token (any role: all of this is viewer's reading);
        one message for a missing, unknown, expired or revoked token."""
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and presented:
            try:
                await self.tokens.verify(presented)
                return await handler(request)
            except TokenRefused:
                pass
        return _error(
            401,
            "unauthorized",
            "this API needs a valid token: send `Authorization: Bearer <token>` (make one "
            "with `mosaic-backup tokens create NAME --role viewer`), or set [http] "
            "anonymous = true",
        )

    # --- handlers ----------------------------------------------------------------------

    async def status_document(
        self, *, limit: int = STATUS_PAGE, offset: int = 0, dataset: str | None = None
    ) -> BackupStatusDoc:
        """The strategy's status document: the NATS ``status`` reply plus totals.

        ``storage_used`` is what the catalogued backups take in their repositories (after
        dedup and compression; kept as a per-target sum by the catalog), ``storage_free``
        the free space the agents' targets report in heartbeats (None: none reports)."""
        st = await self._status(limit=limit, offset=offset, dataset=dataset)
        frees = [t.free for t in st.targets if t.free is not None]
        used, free = sum(t.catalog_bytes for t in st.targets), sum(frees) if frees else None
        since = utcnow() - timedelta(seconds=RECENT_FAILURES_S)
        failures = await self.catalog.recent_failures(limit=RECENT_FAILURES_SCAN)
        return BackupStatusDoc(
            status=st.status,
            coordinator=st.coordinator,
            last_backup=st.last_backup_at,
            next_backup=st.next_backup,
            storage_used=human_bytes(used),
            storage_free=None if free is None else human_bytes(free),
            storage_used_bytes=used,
            storage_free_bytes=free,
            backups_total=st.backups_total,
            recent_failures=sum(1 for j in failures if j.updated_at >= since),
            recent_failure_list=[j for j in map(_public_job, st.recent_failures) if j is not None],
            datasets_total=st.datasets_total,
            datasets_failing=st.datasets_failing,
            datasets_without_backup=st.datasets_without_backup,
            datasets_not_compliant=st.datasets_not_compliant,
            datasets_pending=st.datasets_pending,
            active_coordinator=st.active_coordinator,
            active_since=st.active_since,
            unprotected_total=st.unprotected_total if st.inventories else None,
            unprotected=st.unprotected,
            certificates=st.certificates,
            windows_exceeded=st.windows_exceeded,
            offset=offset,
            limit=limit,
            datasets=[_public_dataset(d) for d in st.datasets],
            agents=st.agents,
            targets=st.targets,
        )

    async def get_status(self, request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", 1, MAX_LIMIT) or STATUS_PAGE
        offset = _int_param(request, "offset", 0, None) or 0
        dataset = request.query.get("dataset") or None
        return _json(await self.status_document(limit=limit, offset=offset, dataset=dataset))

    async def list_backups(self, request: web.Request) -> web.Response:
        days = _int_param(request, "days", 1, 36500)
        limit = _int_param(request, "limit", 1, MAX_LIMIT) or 1000
        dataset = request.query.get("dataset") or None
        since = utcnow() - timedelta(days=days) if days is not None else None
        rows = await self.catalog.list_backups(since=since, dataset=dataset, limit=limit)
        return _json(BackupPage(backups=rows))

    async def get_backup(self, request: web.Request) -> web.Response:
        backup_id = request.match_info["backup_id"]
        row = await self.catalog.get_backup(backup_id)
        if row is None:
            return _error(404, "unknown_backup", f"no backup with id {backup_id!r}")
        return _json(row)

    async def get_openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def get_metrics(self, request: web.Request) -> web.Response:
        snap = await read_snapshot(self.catalog, self._status)
        body = self.metrics.render(snap)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def get_alerts(self, request: web.Request) -> web.Response:
        """The alerts firing now, as this coordinator's alerter holds them (in memory:
        another coordinator, or this one just after a restart, may list fewer)."""
        firing = self._alerts() if self._alerts is not None else []
        shown = [
            msgspec.structs.replace(a, description=redact(a.description)) if a.description else a
            for a in firing
        ]
        return _json(AlertsDoc(alerts=shown))

    async def get_check(self, request: web.Request) -> web.Response:
        """The validation checklist, as ``mosaic-backup check`` shows it (redacted)."""
        if self.check is None:
            return _error(404, "not_found", f"{request.path}: the checklist is not served here")
        return _json(public(await self.check(), redact))
