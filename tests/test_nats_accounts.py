"""One compromised agent against the NATS accounts of ``nats-config`` (issue 15).

A real nats-server runs from the generated config with TLS (certificates from
``mosaic-backup pki``, client certificates verified). Agent ``db1`` attacks with its own
credentials; everything is judged from the coordinator's side (the stream still has
its messages, the consumer still exists), and every test ends with the positive
control that db1 still does its own work and the coordinator receives it, so a test
cannot pass because nothing worked at all. ``test_the_redirection_is_real_on_one_account``
shows that the very same request deletes the audit stream when all users share one
account, as before: the attack in this suite is the one that was seen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import BadRequestError, NotFoundError

from coordinator.catalog import open_catalog
from coordinator.service import Coordinator
from mosaic.natsconfig import TlsFiles, write_config
from mosaic.pki import init_ca, issue
from shared import subjects
from shared.bus import Bus, fetch_one
from shared.config.coordinator import CatalogConfig, CoordinatorConfig, DatasetConfig
from shared.nats_credentials import nats_tls
from shared.natsserver import free_port, nats_server_binary
from shared.vocab import utcnow
from shared.wire.base import encode
from shared.wire.events import JobStarted, LocalAction
from shared.wire.sources import FilesSource

AGENTS = ["db1", "web1"]
USERS = [*AGENTS, "coordinator", "operator"]
DENIED_WAIT = 1.0
EXPIRES_NS = 100_000_000  # a pull request that times out at once: its 408 is the vehicle


@dataclass
class AccountsNats:
    url: str
    pki: Path
    creds: Path

    def tls(self, user: str) -> dict[str, Any]:
        return {
            "nats_tls_ca": str(self.pki / "ca.crt"),
            "nats_tls_cert": str(self.pki / f"{user}.crt"),
            "nats_tls_key": str(self.pki / f"{user}.key"),
        }

    def password_file(self, user: str) -> str:
        return str(self.creds / f"{user}.password")

    async def connect(self, user: str) -> Bus:
        """Connect as the agent, coordinator and operator processes do."""
        agent = user in AGENTS
        return await Bus.connect(
            self.url,
            name=user,
            user=user,
            password=Path(self.password_file(user)).read_text().strip(),
            inbox_prefix=subjects.agent_inbox(user) if agent else None,
            js_prefix=subjects.JS_IMPORT_PREFIX if agent else None,
            tls=nats_tls(CoordinatorConfig(**self.tls(user))),
            timeout=5,
        )


def start_nats(conf: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=f, stderr=f)
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(4) == b"INFO":
                    return proc
        except OSError:
            assert time.monotonic() < deadline, "nats-server did not start in 15 s"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def accounts_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccountsNats]:
    out = tmp_path_factory.mktemp("nats-accounts")
    pki = out / "pki"
    init_ca(pki)
    issue(pki, "nats", server=True, hosts=["127.0.0.1", "localhost"])
    for user in USERS:
        issue(pki, user)
    port = free_port()
    tls = TlsFiles(cert=pki / "nats.crt", key=pki / "nats.key", ca=pki / "ca.crt", verify=True)
    conf = write_config(out, AGENTS, host="127.0.0.1", port=port, tls=tls)
    proc = start_nats(conf, port, out / "nats-server.log")
    try:
        yield AccountsNats(f"nats://127.0.0.1:{port}", pki, out / "creds")
    finally:
        proc.terminate()
        proc.wait(10)


async def refused(caplog: pytest.LogCaptureFixture, *subjects_: str) -> None:
    """Wait (5 s at most) until the server has reported every one of ``subjects_``."""
    with anyio.move_on_after(5):
        while not all(s.lower() in caplog.text.lower() for s in subjects_):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    text = caplog.text.lower()
    assert [s for s in subjects_ if s.lower() not in text] == [], caplog.text


@dataclass
class World:
    coord: Bus
    db1: Bus
    events: object  # the coordinator's pull subscription on the events stream
    kv: object


@asynccontextmanager
async def world(nats: AccountsNats) -> AsyncIterator[World]:
    """The coordinator's streams, consumers, audit stream and lease bucket, each with
    something in it, and db1 connected with its own credentials."""
    coord = await nats.connect("coordinator")
    db1 = await nats.connect("db1")
    try:
        await coord.ensure_streams()
        with contextlib.suppress(BadRequestError):  # made by an earlier test
            await coord.js.add_stream(name=subjects.AUDIT_STREAM, subjects=[subjects.audit_all()])
        await coord.js.publish(subjects.audit("marker"), b"entry", stream=subjects.AUDIT_STREAM)
        try:
            kv = await coord.js.create_key_value(bucket=subjects.LEADER_BUCKET, history=1, ttl=60)
        except BadRequestError:
            kv = await coord.js.key_value(subjects.LEADER_BUCKET)
        await kv.put("leader", b"coordinator/1")
        for agent in AGENTS:
            await coord.ensure_agent_consumer(agent)
        await coord.js.publish(subjects.job("web1"), b"web1-job", stream=subjects.JOBS_STREAM)
        started = JobStarted(job_id="w-1", agent="web1", job_kind="backup", delivery=1, at=utcnow())
        await coord.js.publish(
            subjects.event("web1", "w-1", "started"), encode(started), stream=subjects.EVENTS_STREAM
        )
        events = await coord.events_consumer(subjects.COORDINATOR_EVENTS_CONSUMER)
        yield World(coord, db1, events, kv)
    finally:
        await db1.aclose()
        await coord.aclose()


async def stream_messages(coord: Bus, stream: str) -> int:
    return int((await coord.js.stream_info(stream)).state.messages)


async def db1_does_its_own_work(w: World, job: bytes) -> None:
    """The positive control: db1 pulls and acks its own job, publishes its own event,
    and the coordinator's events consumer receives that event."""
    sub = await w.db1.job_consumer("db1", ack_wait=30.0)
    await w.coord.js.publish(subjects.job("db1"), job, stream=subjects.JOBS_STREAM)
    msg = await fetch_one(sub, timeout=5.0)
    assert msg is not None and msg.data == job
    await msg.in_progress()
    await msg.ack_sync()
    subject = subjects.event("db1", job.decode(), "started")
    ack = await w.db1.js.publish(subject, b"{}", stream=subjects.EVENTS_STREAM)
    assert ack.stream == subjects.EVENTS_STREAM
    with anyio.fail_after(10):
        while True:
            try:
                msgs = await w.events.fetch(50, timeout=1)  # type: ignore[attr-defined]
            except TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            if any(m.subject == subject for m in msgs):
                break
    info = await w.coord.js.consumer_info(subjects.JOBS_STREAM, subjects.agent_consumer("db1"))
    assert info.num_ack_pending == 0 and info.num_pending == 0  # acked, gone


TARGETS = {
    "delete the audit stream": f"$JS.API.STREAM.DELETE.{subjects.AUDIT_STREAM}",
    "purge the jobs stream": f"$JS.API.STREAM.PURGE.{subjects.JOBS_STREAM}",
    "purge the events stream": f"$JS.API.STREAM.PURGE.{subjects.EVENTS_STREAM}",
    "delete web1's consumer": f"$JS.API.CONSUMER.DELETE.{subjects.JOBS_STREAM}.agent-web1",
    "delete the coordinator's consumer": (
        f"$JS.API.CONSUMER.DELETE.{subjects.EVENTS_STREAM}.{subjects.COORDINATOR_EVENTS_CONSUMER}"
    ),
    "write web1's event": subjects.event("web1", "forged", "completed"),
    "write web1's job": subjects.job("web1"),
    "write the audit stream": subjects.audit("forged"),
    "overwrite the leader lease": f"$KV.{subjects.LEADER_BUCKET}.leader",
}


async def test_reply_redirection_is_refused_and_changes_nothing(
    accounts_nats: AccountsNats,
) -> None:
    async with world(accounts_nats) as w:
        audit = await stream_messages(w.coord, subjects.AUDIT_STREAM)
        jobs_before = await w.coord.js.stream_info(subjects.JOBS_STREAM, subjects_filter=">")
        web1_events = await w.coord.js.stream_info(
            subjects.EVENTS_STREAM, subjects_filter="mosaic.event.web1.>"
        )
        assert web1_events.state.subjects  # something to lose
        durable = subjects.agent_consumer("db1")
        pull = f"{subjects.JS_IMPORT_PREFIX}.CONSUMER.MSG.NEXT.{subjects.JOBS_STREAM}.{durable}"
        info = f"{subjects.JS_IMPORT_PREFIX}.CONSUMER.INFO.{subjects.JOBS_STREAM}.{durable}"
        body = json.dumps({"batch": 1, "expires": EXPIRES_NS}).encode()
        # the "+ACK" confirmation of one of its own jobs (first: a pull below would take it)
        sub = await w.db1.job_consumer("db1", ack_wait=30.0)
        await w.coord.js.publish(subjects.job("db1"), b"db1-job-0", stream=subjects.JOBS_STREAM)
        job = await fetch_one(sub, timeout=5.0)
        assert job is not None and job.reply
        await w.db1.nc.publish(job.reply, b"+ACK", reply=TARGETS["delete the audit stream"])
        for target in TARGETS.values():
            # every reply db1 can provoke from JetStream: a pull's timeout status, a
            # consumer lookup, the stored-ack of its own event
            await w.db1.nc.publish(pull, body, reply=target)
            await w.db1.nc.publish(info, b"", reply=target)
            await w.db1.nc.publish(subjects.event("db1", "x", "started"), b"{}", reply=target)
        await w.db1.nc.flush()
        # Each attack pull has expired once a later pull of the same consumer has: the
        # consumer answers its waiting requests in order.
        later = json.dumps({"batch": 1, "expires": 2 * EXPIRES_NS}).encode()
        status = await w.db1.nc.request(pull, later, timeout=5)
        assert status.headers and status.headers.get("Status") == "408"

        # seen from the coordinator: everything is still there
        assert await stream_messages(w.coord, subjects.AUDIT_STREAM) == audit
        jobs = await w.coord.js.stream_info(subjects.JOBS_STREAM, subjects_filter=">")
        assert jobs.state.subjects == jobs_before.state.subjects  # web1's jobs, none forged
        assert (jobs.state.subjects or {}).get(subjects.job("web1"), 0) >= 1
        for stream, consumer in (
            (subjects.JOBS_STREAM, "agent-web1"),
            (subjects.EVENTS_STREAM, subjects.COORDINATOR_EVENTS_CONSUMER),
        ):
            assert (await w.coord.js.consumer_info(stream, consumer)).name == consumer
        events = await w.coord.js.stream_info(
            subjects.EVENTS_STREAM, subjects_filter="mosaic.event.web1.>"
        )
        assert events.state.subjects == web1_events.state.subjects  # none lost, none forged
        lease = await w.kv.get("leader")  # type: ignore[attr-defined]
        assert lease.value == b"coordinator/1"

        await db1_does_its_own_work(w, b"db1-job-1")


async def test_an_agent_cannot_list_other_agents_subjects(
    accounts_nats: AccountsNats, caplog: pytest.LogCaptureFixture
) -> None:
    """``STREAM.INFO`` with a subjects filter listed web1's job ids and datasets."""
    async with world(accounts_nats) as w:
        body = json.dumps({"subjects_filter": "mosaic.event.web1.>"}).encode()
        with caplog.at_level(logging.WARNING, logger="shared.bus"):
            for prefix in (subjects.JS_API, subjects.JS_IMPORT_PREFIX):
                with pytest.raises(NatsTimeout):
                    await w.db1.nc.request(
                        f"{prefix}.STREAM.INFO.{subjects.EVENTS_STREAM}", body, timeout=DENIED_WAIT
                    )
                with pytest.raises(NatsTimeout):
                    await w.db1.nc.request(f"{prefix}.STREAM.NAMES", b"", timeout=DENIED_WAIT)
                with pytest.raises(NatsTimeout):  # a stored event, read directly
                    await w.db1.nc.request(
                        f"{prefix}.DIRECT.GET.{subjects.EVENTS_STREAM}",
                        json.dumps({"seq": 1}).encode(),
                        timeout=DENIED_WAIT,
                    )
            await refused(
                caplog,
                f'publish to "$js.api.stream.info.{subjects.EVENTS_STREAM.lower()}"',
                f'publish to "js.mosaic.api.stream.info.{subjects.EVENTS_STREAM.lower()}"',
                'publish to "js.mosaic.api.stream.names"',
                'publish to "js.mosaic.api.direct.get.mosaic_events"',
            )
        # what db1 may ask about is its own consumer, which shows its own queue only
        own = await w.db1.js.consumer_info(subjects.JOBS_STREAM, subjects.agent_consumer("db1"))
        assert own.config.filter_subject == subjects.job("db1") and own.num_pending == 0
        await db1_does_its_own_work(w, b"db1-job-2")


async def test_an_agent_cannot_make_a_consumer_that_pushes_anywhere(
    accounts_nats: AccountsNats, caplog: pytest.LogCaptureFixture
) -> None:
    """A push consumer of its own name delivering to ``$JS.API.STREAM.PURGE…`` would be
    the same redirection: agents may create no consumer at all."""
    async with world(accounts_nats) as w:
        durable = subjects.agent_consumer("db1")
        cfg = api.ConsumerConfig(
            durable_name=durable,
            filter_subject=subjects.job("db1"),
            deliver_subject=f"$JS.API.STREAM.PURGE.{subjects.EVENTS_STREAM}",
            ack_policy=api.AckPolicy.EXPLICIT,
        )
        with caplog.at_level(logging.WARNING, logger="shared.bus"):
            for js in (w.db1.js, w.db1.nc.jetstream(timeout=DENIED_WAIT)):
                with pytest.raises(NatsTimeout):
                    await js.add_consumer(subjects.JOBS_STREAM, cfg, timeout=DENIED_WAIT)
            await refused(
                caplog,
                f'publish to "js.mosaic.api.consumer.durable.create.mosaic_jobs.{durable}',
                f'publish to "$js.api.consumer.durable.create.mosaic_jobs.{durable}',
            )
        info = await w.coord.js.consumer_info(subjects.JOBS_STREAM, durable)
        assert info.config.deliver_subject is None  # still the coordinator's pull consumer
        await db1_does_its_own_work(w, b"db1-job-3")


async def test_the_operator_account_reaches_the_api_only(
    accounts_nats: AccountsNats, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting the coordinator's consumer blinded it; operators now have no JetStream
    API beyond reading stored events."""
    async with world(accounts_nats) as w:
        op = await accounts_nats.connect("operator")
        try:
            delete = (
                f"CONSUMER.DELETE.{subjects.EVENTS_STREAM}.{subjects.COORDINATOR_EVENTS_CONSUMER}"
            )
            with caplog.at_level(logging.WARNING, logger="shared.bus"):
                for prefix in (subjects.JS_API, subjects.JS_IMPORT_PREFIX):
                    with pytest.raises(NatsTimeout):
                        await op.nc.request(f"{prefix}.{delete}", b"", timeout=DENIED_WAIT)
                await refused(
                    caplog, f'publish to "$js.api.{delete.lower()}"', "js.mosaic.api.consumer"
                )
            info = await w.coord.js.consumer_info(
                subjects.EVENTS_STREAM, subjects.COORDINATOR_EVENTS_CONSUMER
            )
            assert info.name == subjects.COORDINATOR_EVENTS_CONSUMER
            # what it may do: follow a job's stored events (watch_job)
            async for ev in op.watch_job("w-1", timeout=5):
                assert isinstance(ev, JobStarted) and ev.agent == "web1"
                break
        finally:
            await op.aclose()
        await db1_does_its_own_work(w, b"db1-job-4")


async def test_the_redirection_is_real_on_one_account(tmp_path: Path) -> None:
    """The control for the suite: with every user in one account and the subject
    permissions of before, db1's pull with a redirected reply deletes the audit stream."""
    port = free_port()
    db1_allow = [
        "$JS.API.CONSUMER.INFO.MOSAIC_JOBS.agent-db1",
        "$JS.API.CONSUMER.MSG.NEXT.MOSAIC_JOBS.agent-db1",
        "$JS.ACK.MOSAIC_JOBS.agent-db1.>",
        "mosaic.event.db1.>",
    ]
    users = [
        {"user": "coordinator", "password": "c"},
        {
            "user": "db1",
            "password": "d",
            "permissions": {"publish": {"allow": db1_allow}, "subscribe": {"allow": ["_INBOX.>"]}},
        },
    ]
    conf = tmp_path / "old.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f"jetstream {{ store_dir: {json.dumps(str(tmp_path / 'js'))} }}\n"
        f"authorization {{ users: {json.dumps(users)} }}\n"
    )
    proc = start_nats(conf, port, tmp_path / "log")
    try:
        url = f"nats://127.0.0.1:{port}"
        coord = await Bus.connect(url, name="c", user="coordinator", password="c")
        db1 = await Bus.connect(url, name="d", user="db1", password="d")
        try:
            await coord.ensure_streams()
            await coord.js.add_stream(name=subjects.AUDIT_STREAM, subjects=[subjects.audit_all()])
            await coord.ensure_agent_consumer("db1")
            pull = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.JOBS_STREAM}.agent-db1"
            body = json.dumps({"batch": 1, "expires": EXPIRES_NS}).encode()
            await db1.nc.publish(pull, body, reply=TARGETS["delete the audit stream"])
            with anyio.fail_after(10):
                while True:
                    try:
                        await coord.js.stream_info(subjects.AUDIT_STREAM)
                    except NotFoundError:
                        break  # deleted by db1
                    await anyio.sleep(0.05)
        finally:
            await db1.aclose()
            await coord.aclose()
    finally:
        proc.terminate()
        proc.wait(10)


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
            alerts = await c.alerter.tick()
            assert any(a.fingerprint.startswith("control_plane_changed/") for a in alerts)
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
