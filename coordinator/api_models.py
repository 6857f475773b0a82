"""The HTTP API's response documents and the OpenAPI description generated from them.

The documents are msgspec Structs, so the JSON a client receives and the schema the
OpenAPI document advertises come from one definition and cannot drift apart. They are
HTTP-only shapes (no ``kind``/``schema`` tags of the NATS wire messages), built from the
same catalog rows (:class:`~shared.wire.api.BackupRecord`, ``JobRecord``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from shared.wire.monitoring import Alert
from shared.wire.records import BackupRecord, JobRecord
from shared.wire.status import (
    AgentStatus,
    CertificateStatus,
    DatasetStatus,
    TargetSpaceStatus,
    UnprotectedItem,
)

API_PREFIX = "/api/v1"
DOCUMENT_VERSION = 2  # of BackupStatusDoc
RECENT_FAILURES_S = 86400.0
# Times are always UTC-aware; saying so makes the schema read ``format: date-time``.
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


class BackupStatusDoc(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/v1/backup/status``: the strategy's health document.

    Totals and counters cover every dataset; ``datasets`` is one page of per-dataset
    detail (``?limit``, default 100, and ``?offset``), the datasets that need attention
    (failing, never backed up, not 3-2-1 compliant, replication over 1 h behind) first,
    then the others by name; ``?dataset=NAME`` shows one. ``storage_used``: what the
    catalogued backups take in their repositories; ``storage_free``: free space the
    agents' targets report in heartbeats (null: none can tell, as for S3); each as the
    strategy writes it ("245GB") and in bytes (``*_bytes``). The API has
    no authentication, so failed jobs' ``error_message`` is a category and the message
    with paths, URLs and hosts replaced (``<path>``, ``<endpoint>``); the coordinator's
    log and the NATS ``status`` reply keep the full text.
    """

    status: Literal["healthy", "degraded", "failing"]
    coordinator: str
    # 2: recent_failures became a count and storage_* human strings, as the strategy's
    # document shows them (1: a list and byte counts, now recent_failure_list and *_bytes)
    document_version: int = DOCUMENT_VERSION
    last_backup: UtcTime | None = None
    # the soonest scheduled run of any dataset; null: nothing is scheduled
    next_backup: UtcTime | None = None
    storage_used: str = "0B"  # "245GB": decimal units, as the strategy writes them
    storage_free: str | None = None  # null: no target reports its free space
    storage_used_bytes: int = 0
    storage_free_bytes: int | None = None
    backups_total: int = 0
    recent_failures: int = 0  # failed jobs in the last RECENT_FAILURES_S (24 h)
    recent_failure_list: list[JobRecord] = []  # the newest failures, any age
    datasets_total: int = 0
    datasets_failing: int = 0
    datasets_without_backup: int = 0
    datasets_not_compliant: int = 0
    # never backed up, first run plus grace still ahead (not counted as without backup)
    datasets_pending: int = 0
    # the lease holder (name/instance) and since when; null: none known
    active_coordinator: str | None = None
    active_since: UtcTime | None = None
    # coverage: what agents' inventories found that no dataset covers (ignored ones
    # listed and marked); null: no agent has sent an inventory
    unprotected_total: int | None = None
    unprotected: list[UnprotectedItem] = []
    certificates: list[CertificateStatus] = []
    windows_exceeded: int = 0  # datasets whose newest scheduled run overran its window
    offset: int = 0
    limit: int = 100
    datasets: list[DatasetStatus] = []
    agents: list[AgentStatus] = []
    targets: list[TargetSpaceStatus] = []


def human_bytes(n: int) -> str:
    """``245GB``, ``1.5TB``, ``512B``: decimal units without a space, as the strategy's
    status document writes them; one decimal below 10 of a unit."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            break
        value /= 1000
    if unit == "B" or value >= 10:
        return f"{value:.0f}{unit}"
    return f"{value:.1f}{unit}"


class AlertsDoc(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/v1/alerts``: the alerts firing now (descriptions redacted like the
    status document's error messages)."""

    alerts: list[Alert]


class BackupPage(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/v1/backups``: backups, newest first."""

    backups: list[BackupRecord]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str


class ErrorDoc(msgspec.Struct, frozen=True, kw_only=True):
    """Every non-2xx answer."""

    error: ErrorBody


def _json(ref: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API (built once at start-up)."""
    (status, page, record, error, alerts), components = msgspec.json.schema_components(
        [BackupStatusDoc, BackupPage, BackupRecord, ErrorDoc, AlertsDoc],
        ref_template="#/components/schemas/{name}",
    )
    bad = _json(error, "invalid query parameter")
    failed = _json(error, "the catalog could not be read")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mosaic-backup coordinator",
            "version": version,
            "description": "Read-only status of the backups the coordinator knows.",
        },
        "paths": {
            **_status_paths(status, bad, failed),
            **_backup_paths(page, record, error, bad, failed),
            **_other_paths(alerts),
        },
        "components": {"schemas": components},
    }


def _status_paths(status: Any, bad: Any, failed: Any) -> dict[str, Any]:
    return {
        f"{API_PREFIX}/backup/status": {
            "get": {
                "operationId": "backupStatus",
                "summary": "Overall health, last/next backup, storage, agents, 3-2-1",
                "parameters": [
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
                        "datasets detailed in this page (problems first)",
                    ),
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "default": 0},
                        "datasets to skip",
                    ),
                    _query("dataset", {"type": "string"}, "only this dataset's detail"),
                ],
                "responses": {
                    "200": _json(status, "the status document"),
                    "400": bad,
                    "500": failed,
                },
            }
        },
    }


def _backup_paths(page: Any, record: Any, error: Any, bad: Any, failed: Any) -> dict[str, Any]:
    return {
        f"{API_PREFIX}/backups": {
            "get": {
                "operationId": "listBackups",
                "summary": "Backups in the catalog, newest first",
                "parameters": [
                    _query(
                        "days",
                        {"type": "integer", "minimum": 1},
                        "only backups finished in the last N days",
                    ),
                    _query("dataset", {"type": "string"}, "only this dataset"),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
                        "at most this many rows",
                    ),
                ],
                "responses": {"200": _json(page, "the backups"), "400": bad, "500": failed},
            }
        },
        f"{API_PREFIX}/backups/{{backup_id}}": {
            "get": {
                "operationId": "getBackup",
                "summary": "One backup",
                "parameters": [
                    {
                        "name": "backup_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(record, "the backup"),
                    "404": _json(error, "no backup with this id"),
                    "500": failed,
                },
            }
        },
    }


def _other_paths(alerts: Any) -> dict[str, Any]:
    return {
        f"{API_PREFIX}/alerts": {
            "get": {
                "operationId": "listAlerts",
                "summary": "Alerts firing now, as this coordinator's alerter holds them",
                "responses": {"200": _json(alerts, "the firing alerts")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics, read from the catalog at scrape time",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        f"{API_PREFIX}/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "the OpenAPI 3.1 document")},
            }
        },
    }
