"""The operator API on NATS (``mosaic.api.<verb>``): a table verb → request type → handler.

Like nats micro's ``add_endpoint``: each verb is registered once with the one request
type it takes and its handler, and :meth:`OperatorApi.serve` subscribes every verb
(in the coordinators' queue group, so one coordinator answers). A request of another
type on a verb is refused with ``bad_request`` instead of being answered as if it had
come on its own verb. The coordinator's table is in ``coordinator/service.py``; the
read-only catalog queries are here (:class:`CatalogQueries`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import msgspec

from coordinator.catalog.base import Catalog
from shared.bus import Bus
from shared.vocab import utcnow
from shared.wire.api import (
    ApiError,
    ApiReply,
    ApiRequest,
    BackupList,
    ListRequest,
    MaintenanceList,
    MaintenanceListRequest,
)

R = TypeVar("R", bound=ApiRequest)

MAINTENANCE_LIST_MAX = 10_000


@dataclass(frozen=True)
class Endpoint:
    verb: str
    request: type[Any]  # one member of ApiRequest
    handler: Callable[[Any], Awaitable[ApiReply]]


class OperatorApi:
    """The verbs one coordinator answers."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}

    def add_endpoint(
        self, verb: str, request: type[R], handler: Callable[[R], Awaitable[ApiReply]]
    ) -> None:
        if verb in self.endpoints:
            raise ValueError(f"api verb {verb!r} registered twice")
        self.endpoints[verb] = Endpoint(verb, request, handler)

    async def handle(self, verb: str, req: ApiRequest) -> ApiReply:
        ep = self.endpoints.get(verb)
        if ep is None:
            known = ", ".join(sorted(self.endpoints))
            return ApiError(code="bad_request", message=f"unknown verb {verb!r} (known: {known})")
        if not isinstance(req, ep.request):
            return ApiError(
                code="bad_request",
                message=f"verb {verb!r} takes a {ep.request.__name__}, not a {type(req).__name__}",
            )
        return await ep.handler(req)

    async def serve(self, bus: Bus) -> None:
        for verb in self.endpoints:
            await bus.serve(verb, functools.partial(self.handle, verb))


class CatalogQueries:
    """The API's read-only answers straight from the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def backups(self, req: ListRequest) -> ApiReply:
        since = utcnow() - timedelta(days=req.days) if req.days is not None else None
        rows = await self.catalog.list_backups(since=since, dataset=req.dataset, limit=req.limit)
        copies = await self.catalog.copies_of([b.backup_id for b in rows])
        rows = [
            msgspec.structs.replace(b, copies=copies[b.backup_id]) if b.backup_id in copies else b
            for b in rows
        ]
        return BackupList(backups=rows)

    async def maintenance(self, req: MaintenanceListRequest) -> ApiReply:
        done = await self.catalog.list_maintenance(
            kind=req.job_kind,
            dataset=req.dataset,
            limit=max(min(req.limit, MAINTENANCE_LIST_MAX), 0),
        )
        return MaintenanceList(results=done)
