"""The newest whole-host drill of every host in the status reply (one of
``StatusBuilder.fillers``): read from the catalog's ``host_drill`` results, so every
coordinator and the console answer the same."""

from __future__ import annotations

import msgspec

from coordinator.catalog.base import Catalog
from coordinator.jobs.host_drill import KIND
from coordinator.status import StatusBuilder
from shared.wire.status import HostDrillStatus, StatusReply

SCAN = 200  # host-drill results read per status (newest first); one per host is kept


def attach(status: StatusBuilder) -> None:
    async def fill(reply: StatusReply) -> StatusReply:
        return msgspec.structs.replace(reply, host_drills=await newest(status.catalog))

    status.fillers.append(fill)


async def newest(catalog: Catalog) -> list[HostDrillStatus]:
    seen: dict[str, HostDrillStatus] = {}
    for r in await catalog.list_maintenance(kind=KIND, limit=SCAN):
        if r.dataset and r.dataset not in seen:
            seen[r.dataset] = HostDrillStatus(
                host=r.dataset,
                job_id=r.job_id,
                outcome=r.outcome,
                finished_at=r.finished_at,
                rto_s=r.rto_s,
                rpo_s=r.rpo_s,
                summary=r.summary,
            )
    return [seen[h] for h in sorted(seen)]
