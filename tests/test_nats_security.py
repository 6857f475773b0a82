"""Accounts, subject permissions and per-agent credentials against a real nats-server.

The server runs from the config that ``mosaic-backup nats-config`` writes, so what is
tested is what a deployment gets: agent ``alpha`` works with its own jobs and events,
agent ``beta`` can neither read alpha's jobs nor publish in alpha's name. The attacks
through reply subjects are in tests/test_nats_accounts.py.
"""

from __future__ import annotations

import json
import logging
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig
from rich.console import Console

from agent.heartbeat import heartbeat
from coordinator.heartbeats import HeartbeatStore
from mosaic import operator
from mosaic.compare import tree_differences
from mosaic.setup.natsconfig import write_config
from shared import subjects
from shared.bus import Bus, fetch_one
from shared.config.agent import AgentConfig
from shared.config.targets import LocalTargetConfig
from shared.errors import BusError
from shared.natsserver import free_port
from shared.wire.base import encode
from shared.wire.events import BackupCompleted, RestoreCompleted
from tests.fixtures.nats_conf import nats_from_config, refused
from tests.harness import cli, make_tree, running_stack

AGENTS = ["alpha", "beta", "gamma"]
QUIET = Console(quiet=True)
DENIED_WAIT = 1.0  # a denied JetStream request gets no reply; don't wait 5 s for it


@dataclass
class SecureNats:
    url: str
    conf: Path
    creds: Path

    def password(self, user: str) -> str:
        return (self.creds / f"{user}.password").read_text().strip()

    async def connect(self, user: str) -> Bus:
        """Connect like the agent and coordinator do: agents with their own inboxes."""
        agent = user in AGENTS
        return await Bus.connect(
            self.url,
            name=user,
            user=user,
            password=self.password(user),
            inbox_prefix=subjects.agent_inbox(user) if agent else None,
            js_prefix=subjects.JS_IMPORT_PREFIX if agent else None,
        )


@pytest.fixture(scope="module")
def secure_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureNats]:
    out = tmp_path_factory.mktemp("nats-secure")
    port = free_port()
    conf = write_config(out, AGENTS, host="127.0.0.1", port=port)
    with nats_from_config(conf, port, out / "nats-server.log"):
        yield SecureNats(f"nats://127.0.0.1:{port}", conf, out / "creds")


async def coordinator_with_streams(nats: SecureNats) -> Bus:
    bus = await nats.connect("coordinator")
    await bus.ensure_streams()
    return bus


def test_generated_files_are_private_and_hold_no_password(secure_nats: SecureNats) -> None:
    text = secure_nats.conf.read_text()
    assert stat.S_IMODE(secure_nats.conf.stat().st_mode) == 0o600
    for user in [*AGENTS, "coordinator", "operator"]:
        pw_file = secure_nats.creds / f"{user}.password"
        assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
        assert len(secure_nats.password(user)) >= 32
        assert secure_nats.password(user) not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    users = [u for u in lines if "user" in u]
    assert len(users) == len(AGENTS) + 2
    assert all(u["password"].startswith("$2") for u in users)
    alpha = next(u for u in users if u["user"] == "alpha")["permissions"]
    # its inboxes and its own agent API (agent/browse.py), nothing else
    assert alpha["subscribe"]["allow"] == ["_INBOX_alpha.>", "mosaic.agentapi.alpha.>"]
    assert "mosaic.event.alpha.>" in alpha["publish"]["allow"]
    assert not any(p.startswith("$JS.API") for p in alpha["publish"]["allow"])
    # alpha's account, and only it, may import alpha's consumer
    assert '"AGENT_alpha": {' in text
    pulls = [e for e in lines if "MSG.NEXT" in json.dumps(e) and "service" in e]
    alpha_pull = next(e for e in pulls if e.get("accounts") == ["AGENT_alpha"])
    assert alpha_pull["service"].endswith(".agent-alpha")
    assert alpha_pull["response_type"] == "stream"


async def test_agent_fetches_acks_and_reports_its_own_jobs(secure_nats: SecureNats) -> None:
    coord = await coordinator_with_streams(secure_nats)
    alpha = await secure_nats.connect("alpha")
    try:
        await coord.ensure_agent_consumer("alpha")  # agents may not create consumers
        sub = await alpha.job_consumer("alpha", ack_wait=5.0)
        await coord.js.publish(subjects.job("alpha"), b"job-1", stream=subjects.JOBS_STREAM)
        msg = await fetch_one(sub, timeout=5.0)
        assert msg is not None and msg.data == b"job-1"
        await msg.in_progress()
        await msg.ack_sync()
        subject = subjects.event("alpha", "job-1", "started")
        ack = await alpha.js.publish(subject, b"{}", stream=subjects.EVENTS_STREAM)
        assert ack.stream == subjects.EVENTS_STREAM
        assert await fetch_one(sub, timeout=0.5) is None  # acked: not delivered again
    finally:
        await alpha.aclose()
        await coord.aclose()


async def test_second_agent_cannot_read_first_agents_jobs(
    secure_nats: SecureNats, caplog: pytest.LogCaptureFixture
) -> None:
    coord = await coordinator_with_streams(secure_nats)
    beta = await secure_nats.connect("beta")
    alpha = await secure_nats.connect("alpha")
    try:
        await coord.ensure_agent_consumer("alpha")
        await coord.ensure_agent_consumer("beta")
        sub = await alpha.job_consumer("alpha", ack_wait=5.0)
        await coord.js.publish(subjects.job("alpha"), b"secret-job", stream=subjects.JOBS_STREAM)
        durable = subjects.agent_consumer("alpha")
        with caplog.at_level(logging.WARNING, logger="shared.bus"):
            # bind alpha's durable consumer, create it anew, or pull from it directly,
            # through beta's imports and through the raw JetStream API
            for js in (beta.js, beta.nc.jetstream(timeout=DENIED_WAIT)):
                with pytest.raises(NatsTimeout):
                    await js.pull_subscribe(
                        subjects.job("alpha"), durable=durable, stream=subjects.JOBS_STREAM
                    )
            with pytest.raises(NatsTimeout):
                await beta.nc.jetstream(timeout=DENIED_WAIT).add_consumer(
                    subjects.JOBS_STREAM,
                    ConsumerConfig(
                        name=durable, durable_name=durable, filter_subject=subjects.job("alpha")
                    ),
                )
            for prefix in (subjects.JS_API, subjects.JS_IMPORT_PREFIX):
                with pytest.raises(NatsTimeout):
                    await beta.nc.request(
                        f"{prefix}.CONSUMER.MSG.NEXT.{subjects.JOBS_STREAM}.{durable}",
                        b'{"batch": 1}',
                        timeout=DENIED_WAIT,
                    )
            # nor may beta create or change a consumer of its own name
            with pytest.raises(NatsTimeout):
                await beta.nc.jetstream(timeout=DENIED_WAIT).add_consumer(
                    subjects.JOBS_STREAM,
                    Bus.agent_consumer_config("beta"),
                )
            # core NATS: the job subject itself, and alpha's inboxes
            seen = [await beta.nc.subscribe(subjects.job("alpha"))]
            seen.append(await beta.nc.subscribe(f"{subjects.agent_inbox('alpha')}.>"))
            await beta.nc.flush()
            await refused(
                caplog,
                'publish to "js.mosaic.api.consumer.info.mosaic_jobs.agent-alpha"',
                'publish to "$js.api.consumer.info.mosaic_jobs.agent-alpha"',
                'publish to "$js.api.consumer.create.mosaic_jobs.agent-alpha',
                'publish to "$js.api.consumer.msg.next.mosaic_jobs.agent-alpha"',
                'publish to "js.mosaic.api.consumer.msg.next.mosaic_jobs.agent-alpha"',
                'publish to "$js.api.consumer.create.mosaic_jobs.agent-beta',
                'subscription to "mosaic.job.alpha"',
                'subscription to "_inbox_alpha.>"',
            )

        # alpha still gets its job: beta's attempts took nothing, and saw nothing
        msg = await fetch_one(sub, timeout=5.0)
        assert msg is not None and msg.data == b"secret-job"
        await msg.ack_sync()
        assert all(s.pending_msgs == 0 for s in seen)
    finally:
        await alpha.aclose()
        await beta.aclose()
        await coord.aclose()


async def test_second_agent_cannot_publish_as_first(
    secure_nats: SecureNats, caplog: pytest.LogCaptureFixture
) -> None:
    coord = await coordinator_with_streams(secure_nats)
    beta = await secure_nats.connect("beta")
    try:
        forged = subjects.event("alpha", "forged-job", "completed")
        with caplog.at_level(logging.WARNING, logger="shared.bus"):
            with pytest.raises(NatsTimeout):
                await beta.nc.jetstream(timeout=DENIED_WAIT).publish(forged, b"{}")
            with pytest.raises(NatsTimeout):  # nor may it create or change streams
                await beta.nc.jetstream(timeout=DENIED_WAIT).add_stream(
                    name="EVIL", subjects=["mosaic.evil.>"]
                )
            await beta.nc.publish(subjects.job("beta"), b"self-made job")
            await beta.nc.flush()
            await refused(
                caplog,
                f'publish to "{forged}"',
                'publish to "$js.api.stream.create.evil"',
                'publish to "mosaic.job.beta"',
            )
        info = await coord.js.stream_info(
            subjects.EVENTS_STREAM, subjects_filter="mosaic.event.alpha.forged-job.>"
        )
        assert not info.state.subjects  # the forged event never landed
        # its own events are fine
        await beta.js.publish(subjects.event("beta", "j", "started"), b"{}")
    finally:
        await beta.aclose()
        await coord.aclose()


async def test_wrong_password_is_one_line_naming_the_url(secure_nats: SecureNats) -> None:
    # refused credentials end the wait at once: with an hour to retry, the test can only
    # finish (inside its 180 s pytest timeout) if the refusal stops the retries
    with pytest.raises(BusError) as err:
        await Bus.connect(secure_nats.url, name="x", user="alpha", password="not-it", timeout=3600)
    message = str(err.value)
    assert secure_nats.url in message and "refused user 'alpha'" in message
    assert "not-it" not in message and "\n" not in message
    assert not err.value.retryable
    with pytest.raises(BusError, match="refused a client without credentials"):
        await Bus.connect(secure_nats.url, name="anon", timeout=5)


async def test_backup_and_restore_with_credentials(secure_nats: SecureNats, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    creds = secure_nats.creds
    async with running_stack(
        secure_nats.url,
        tmp_path,
        LocalTargetConfig(path=str(tmp_path / "repo")),
        src,
        agent_name="gamma",
        agent_user="gamma",
        agent_password_file=str(creds / "gamma.password"),
        coordinator_user="coordinator",
        coordinator_password_file=str(creds / "coordinator.password"),
        client_user="operator",
        client_password=secure_nats.password("operator"),
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        dest = tmp_path / "restored"
        res = await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60)
        assert isinstance(res, RestoreCompleted)
        assert tree_differences(src, dest) == []


def test_nats_config_command(tmp_path: Path) -> None:
    done = cli("nats-config", "--agents", "web1,db1", "--out", str(tmp_path), "--port", "4333")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "nats-server.conf").read_text()
    assert 'listen: "0.0.0.0:4333"' in text
    assert sorted(p.name for p in (tmp_path / "creds").iterdir()) == [
        "coordinator.password",
        "db1.password",
        "operator.password",
        "web1.password",
    ]
    clash = cli("nats-config", "--agents", "coordinator", "--out", str(tmp_path / "x"))
    assert clash.returncode == 1
    assert clash.stderr.strip().count("\n") == 0 and "'coordinator'" in clash.stderr


async def test_agent_heartbeats_only_as_itself(
    secure_nats: SecureNats, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """An agent's heartbeat reaches the coordinator; another agent cannot send one in its
    name (it could otherwise hide that the first one is down)."""
    coord = await coordinator_with_streams(secure_nats)
    alpha = await secure_nats.connect("alpha")
    beta = await secure_nats.connect("beta")
    store = HeartbeatStore()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store.run, coord)
            cfg = AgentConfig(
                name="alpha",
                key_file=str(tmp_path / "k"),
                targets={"t": LocalTargetConfig(path=str(tmp_path))},
            )
            hb = await heartbeat(cfg, {}, started=time.monotonic(), running_job=None)
            with caplog.at_level(logging.WARNING, logger="shared.bus"):
                await beta.nc.publish(subjects.heartbeat("alpha"), encode(hb))
                await beta.nc.flush()
                await refused(caplog, 'publish to "mosaic.heartbeat.alpha"')
            assert "alpha" not in store.last()
            await alpha.nc.publish(subjects.heartbeat("alpha"), encode(hb))
            with anyio.fail_after(5):
                while "alpha" not in store.last():  # noqa: ASYNC110 (a plain dict)
                    await anyio.sleep(0.02)
            assert store.last()["alpha"].heartbeat.targets[0].media == "disk"
            tg.cancel_scope.cancel()
    finally:
        await beta.aclose()
        await alpha.aclose()
        await coord.aclose()
