"""The coordinator cannot be blinded by one compromised agent (issue 15): a deleted or
tampered events consumer is put back and alerted on, the coordinator's own account may
not delete streams, and an agent's heartbeat speaks only for that agent. Same real TLS
nats-server from ``nats-config`` as tests/test_nats_accounts.py."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import BadRequestError, NotFoundError

from coordinator.catalog import open_catalog
from coordinator.service import Coordinator
from shared import subjects
from shared.bus import Bus
from shared.config.coordinator import CatalogConfig, CoordinatorConfig, DatasetConfig
from shared.vocab import utcnow
from shared.wire.events import LocalAction
from shared.wire.sources import FilesSource
from tests.fixtures.nats_accounts import (
    AGENTS,
    DENIED_WAIT,
    AccountsNats,
    accounts_server,
    stream_messages,
    world,
)
from tests.fixtures.nats_conf import refused


@pytest.fixture(scope="module")
def accounts_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccountsNats]:
    with accounts_server(tmp_path_factory) as nats:
        yield nats


# --- the coordinator cannot be blinded -----------------------------------------------


@asynccontextmanager
async def coordinator(nats: AccountsNats, work: Path) -> AsyncIterator[Coordinator]:
    cfg = CoordinatorConfig(
        name="coord",
        nats_url=nats.url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={
            f"ds-{a}": DatasetConfig(agent=a, target="t", source=FilesSource(path=str(work)))
            for a in AGENTS
        },
        nats_user="coordinator",
        nats_password_file=nats.password_file("coordinator"),
        **nats.tls("coordinator"),
    )
    catalog = await open_catalog(cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            c = Coordinator(cfg, catalog)
            c.guard_interval_s = 0.2
            await tg.start(c.run)
            yield c
            tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


async def recorded_local_action(c: Coordinator, db1: Bus) -> None:
    """db1 reports a local action on its own subject; wait until the coordinator has it
    in its audit trail (it read the events stream, so its consumer works)."""
    marker = f"marker-{os.urandom(4).hex()}"
    ev = LocalAction(
        job_id=f"local-{marker}", agent="db1", action="keys_rotated", actor="t", at=utcnow()
    )
    await db1.publish_event(ev)
    with anyio.fail_after(15):
        while (  # noqa: ASYNC110 (the catalog cannot notify)
            not [
                e
                for e in await c.catalog.list_audit(action="keys_rotated")
                if e.job_id == ev.job_id
            ]
        ):
            await anyio.sleep(0.05)


async def wait_for_repair(c: Coordinator, what: str) -> str:
    with anyio.fail_after(15):
        while True:
            found = [str(r) for _, r in c.repairs if r.what == what]
            if found:
                return found[0]
            await anyio.sleep(0.05)


async def test_coordinator_survives_its_consumer_deleted_and_alerts(
    accounts_nats: AccountsNats, tmp_path: Path
) -> None:
    durable = subjects.COORDINATOR_EVENTS_CONSUMER
    db1 = await accounts_nats.connect("db1")
    admin = await accounts_nats.connect("coordinator")  # the account's own rights
    try:
        async with coordinator(accounts_nats, tmp_path) as c:
            await recorded_local_action(c, db1)
            await admin.js.delete_consumer(subjects.EVENTS_STREAM, durable)
            found = await wait_for_repair(c, f"consumer {subjects.EVENTS_STREAM}/{durable}")
            assert "missing" in found
            await recorded_local_action(c, db1)  # it goes on reading events
            # the alerter's own loop may have raised it already: look at what fires now
            await c.alerter.tick()
            fired = c.alerter.firing()
            assert any(a.fingerprint.startswith("control_plane_changed/") for a in fired)
            audit = await c.catalog.list_audit(action="control_plane_repaired")
            assert any("missing" in e.detail for e in audit)
    finally:
        await admin.aclose()
        await db1.aclose()


async def test_coordinator_replaces_a_tampered_consumer_at_start_and_while_running(
    accounts_nats: AccountsNats, tmp_path: Path
) -> None:
    durable = subjects.COORDINATOR_EVENTS_CONSUMER
    what = f"consumer {subjects.EVENTS_STREAM}/{durable}"
    blind = api.ConsumerConfig(
        durable_name=durable,
        filter_subject="mosaic.event.nobody.>",
        ack_policy=api.AckPolicy.EXPLICIT,
    )
    db1 = await accounts_nats.connect("db1")
    admin = await accounts_nats.connect("coordinator")
    try:
        await admin.ensure_streams()
        try:
            await admin.js.delete_consumer(subjects.EVENTS_STREAM, durable)
        except NotFoundError:
            pass
        await admin.js.add_consumer(subjects.EVENTS_STREAM, blind)  # before it starts
        async with coordinator(accounts_nats, tmp_path) as c:
            assert "filter ['mosaic.event.nobody.>']" in await wait_for_repair(c, what)
            await recorded_local_action(c, db1)
            c.repairs.clear()
            await admin.js.add_consumer(subjects.EVENTS_STREAM, blind)  # while it runs
            assert "filter" in await wait_for_repair(c, what)
            await recorded_local_action(c, db1)
            info = await admin.js.consumer_info(subjects.EVENTS_STREAM, durable)
            assert info.config.filter_subject == subjects.events_all()
            # a consumer on the jobs stream that is no agent's own is removed
            await admin.js.add_consumer(
                subjects.JOBS_STREAM,
                api.ConsumerConfig(durable_name="thief", filter_subject=subjects.job("zz")),
            )
            await wait_for_repair(c, f"consumer {subjects.JOBS_STREAM}/thief")
            with pytest.raises(NotFoundError):
                await admin.js.consumer_info(subjects.JOBS_STREAM, "thief")
            assert timedelta(0) <= utcnow() - c.repairs[-1][0] < timedelta(hours=1)
    finally:
        await admin.aclose()
        await db1.aclose()


async def test_coordinator_account_may_not_delete_streams(
    accounts_nats: AccountsNats, caplog: pytest.LogCaptureFixture
) -> None:
    """Deny rules: not even the coordinator's own password deletes or purges a stream."""
    admin = await accounts_nats.connect("coordinator")
    try:
        await admin.ensure_streams()
        before = await stream_messages(admin, subjects.EVENTS_STREAM)
        js = admin.nc.jetstream(timeout=DENIED_WAIT)
        with caplog.at_level(logging.WARNING, logger="shared.bus"):
            with pytest.raises(NatsTimeout):
                await js.delete_stream(subjects.EVENTS_STREAM)
            with pytest.raises(NatsTimeout):
                await js.purge_stream(subjects.EVENTS_STREAM)
            await refused(
                caplog,
                'publish to "$js.api.stream.delete.mosaic_events"',
                'publish to "$js.api.stream.purge.mosaic_events"',
            )
        assert await stream_messages(admin, subjects.EVENTS_STREAM) == before
    finally:
        await admin.aclose()


async def test_heartbeat_of_its_own_only(accounts_nats: AccountsNats) -> None:
    """Heartbeats travel through the import of its own subject, and only that."""
    async with world(accounts_nats) as w:
        with contextlib.suppress(BadRequestError):  # the coordinator's, if it ran before
            await w.coord.js.add_stream(
                name=subjects.HEARTBEATS_STREAM,
                subjects=[subjects.heartbeats_all()],
                max_msgs_per_subject=1,
            )
        marker = os.urandom(4).hex().encode()
        await w.db1.nc.publish(subjects.heartbeat("web1"), b"forged " + marker)
        await w.db1.nc.publish(subjects.heartbeat("db1"), b"alive " + marker)
        await w.db1.nc.flush()
        with anyio.fail_after(5):
            while True:
                try:
                    last = await w.coord.js.get_last_msg(
                        subjects.HEARTBEATS_STREAM, subjects.heartbeat("db1")
                    )
                    if last.data == b"alive " + marker:
                        break
                except NotFoundError:
                    pass
                await anyio.sleep(0.02)
        info = await w.coord.js.stream_info(subjects.HEARTBEATS_STREAM, subjects_filter=">")
        assert subjects.heartbeat("web1") not in (info.state.subjects or {})
