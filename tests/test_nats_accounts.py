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

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import NotFoundError

from shared import subjects
from shared.bus import Bus, fetch_one
from shared.natsserver import free_port
from shared.wire.events import JobStarted
from tests.fixtures.nats_accounts import (
    DENIED_WAIT,
    EXPIRES_NS,
    AccountsNats,
    accounts_server,
    db1_does_its_own_work,
    stream_messages,
    world,
)
from tests.fixtures.nats_conf import nats_from_config, refused


@pytest.fixture(scope="module")
def accounts_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccountsNats]:
    with accounts_server(tmp_path_factory) as nats:
        yield nats


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
    with nats_from_config(conf, port, tmp_path / "log"):
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
