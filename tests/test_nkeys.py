"""Per-agent NKEY credentials against a real nats-server.

The server runs from what ``mosaic-backup nats-config --nkeys DIR`` writes: public keys in
the config, one seed per user in DIR. Agent ``alpha`` logs in with its seed and works with
its own jobs; ``beta``, with its own seed, can neither read alpha's jobs nor publish in
alpha's name; a seed the server does not know is refused with one line.
"""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from nats.errors import TimeoutError as NatsTimeout

from agent.runner import AgentRunner
from engine.storage.open import open_target
from mosaic.setup.natsconfig import write_config
from shared import nkeys, subjects
from shared.bus import Bus, fetch_one
from shared.config.agent import AgentConfig
from shared.config.load import load
from shared.errors import BusError, ConfigError
from shared.natsserver import free_port
from tests.fixtures.nats_conf import nats_from_config, refused
from tests.harness import cli

AGENTS = ["alpha", "beta"]
DENIED_WAIT = 1.0


@dataclass
class NkeyNats:
    url: str
    conf: Path
    seeds: Path

    def seed(self, user: str) -> str:
        return str(self.seeds / f"{user}.nk")

    async def connect(self, user: str) -> Bus:
        agent = user in AGENTS
        return await Bus.connect(
            self.url,
            name=user,
            nkeys_seed=self.seed(user),
            inbox_prefix=subjects.agent_inbox(user) if agent else None,
            js_prefix=subjects.JS_IMPORT_PREFIX if agent else None,
            timeout=5,
        )


@pytest.fixture(scope="module")
def nkey_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NkeyNats]:
    out = tmp_path_factory.mktemp("nats-nkeys")
    port = free_port()
    conf = write_config(out, AGENTS, host="127.0.0.1", port=port, nkeys_dir=out / "seeds")
    with nats_from_config(conf, port, out / "nats-server.log"):
        yield NkeyNats(f"nats://127.0.0.1:{port}", conf, out / "seeds")


def test_config_holds_public_keys_and_seeds_are_private(nkey_nats: NkeyNats) -> None:
    text = nkey_nats.conf.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    users = [u for u in lines if "nkey" in u]
    assert len(users) == 4 and all("password" not in u for u in lines)
    for user in [*AGENTS, "coordinator", "operator"]:
        seed_file = Path(nkey_nats.seed(user))
        assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
        seed = seed_file.read_text().strip()
        assert seed.startswith("SU") and seed not in text
        public = nkeys.from_seed(seed.encode()).public_key.decode()
        entry = next(u for u in users if u["nkey"] == public)
        if user == "alpha":
            # its inboxes and its own agent API (agent/browse.py)
            allow = ["_INBOX_alpha.>", "mosaic.agentapi.alpha.>"]
            assert entry["permissions"]["subscribe"]["allow"] == allow


async def test_agents_with_seeds_keep_to_their_own_subjects(
    nkey_nats: NkeyNats, caplog: pytest.LogCaptureFixture
) -> None:
    coord = await nkey_nats.connect("coordinator")
    alpha = await nkey_nats.connect("alpha")
    beta = await nkey_nats.connect("beta")
    try:
        await coord.ensure_streams()
        await coord.ensure_agent_consumer("alpha")  # the coordinator makes it
        sub = await alpha.job_consumer("alpha", ack_wait=5.0)
        await coord.js.publish(subjects.job("alpha"), b"secret-job", stream=subjects.JOBS_STREAM)
        forged = subjects.event("alpha", "forged-job", "completed")
        durable = subjects.agent_consumer("alpha")
        with caplog.at_level(logging.WARNING, logger="shared.bus"):
            with pytest.raises(NatsTimeout):
                await beta.nc.request(
                    f"$JS.API.CONSUMER.MSG.NEXT.{subjects.JOBS_STREAM}.{durable}",
                    b'{"batch": 1}',
                    timeout=DENIED_WAIT,
                )
            with pytest.raises(NatsTimeout):
                await beta.nc.jetstream(timeout=DENIED_WAIT).publish(forged, b"{}")
            seen = await beta.nc.subscribe(subjects.job("alpha"))
            await beta.nc.flush()
            await refused(
                caplog,
                'publish to "$js.api.consumer.msg.next.mosaic_jobs.agent-alpha"',
                f'publish to "{forged}"',
                'subscription to "mosaic.job.alpha"',
            )
        msg = await fetch_one(sub, timeout=5.0)  # alpha still gets its job, untouched
        assert msg is not None and msg.data == b"secret-job"
        await msg.ack_sync()
        assert seen.pending_msgs == 0
        ack = await alpha.js.publish(subjects.event("alpha", "j1", "started"), b"{}")
        assert ack.stream == subjects.EVENTS_STREAM
        info = await coord.js.stream_info(
            subjects.EVENTS_STREAM, subjects_filter="mosaic.event.alpha.forged-job.>"
        )
        assert not info.state.subjects
    finally:
        await beta.aclose()
        await alpha.aclose()
        await coord.aclose()


async def test_agent_runner_logs_in_with_the_seed_from_its_config(
    nkey_nats: NkeyNats, tmp_path: Path
) -> None:
    coord = await nkey_nats.connect("coordinator")
    await coord.ensure_streams()
    await coord.ensure_agent_consumer("alpha")
    toml = tmp_path / "agent.toml"
    toml.write_text(
        f'name = "alpha"\nnats_url = "{nkey_nats.url}"\nkey_file = "{tmp_path / "k"}"\n'
        f'nats_nkey_seed_file = "{nkey_nats.seed("alpha")}"\n'
        f'[targets.t]\ntype = "local"\npath = "{tmp_path / "repo"}"\n'
    )
    cfg = load(toml, AgentConfig)
    runner = AgentRunner(cfg, b"k" * 32, {"t": open_target("t", cfg.targets["t"])})
    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(runner.run)  # connected, its consumer bound
                tg.cancel_scope.cancel()
    finally:
        await runner.aclose()
        await coord.aclose()


async def test_unknown_seed_is_refused_with_one_line(nkey_nats: NkeyNats, tmp_path: Path) -> None:
    stranger, _ = nkeys.generate_user()
    seed_file = tmp_path / "stranger.nk"
    seed_file.write_bytes(stranger + b"\n")
    with pytest.raises(BusError) as err:
        await Bus.connect(nkey_nats.url, name="x", nkeys_seed=str(seed_file), timeout=5)
    message = str(err.value)
    assert f"refused the NKEY seed in {seed_file}" in message
    assert "\n" not in message and stranger.decode() not in message
    assert not err.value.retryable


def test_bad_seed_file_names_the_field(tmp_path: Path) -> None:
    base = f'name = "a"\nkey_file = "{tmp_path / "k"}"\n[targets.t]\ntype = "local"\npath = "/x"\n'
    toml = tmp_path / "agent.toml"
    toml.write_text(f'nats_nkey_seed_file = "{tmp_path / "missing.nk"}"\n' + base)
    with pytest.raises(
        ConfigError, match=r"field 'nats_nkey_seed_file'.*missing.nk cannot be read"
    ):
        load(toml, AgentConfig)
    (tmp_path / "bad.nk").write_text("not a seed\n")
    toml.write_text(f'nats_nkey_seed_file = "{tmp_path / "bad.nk"}"\n' + base)
    with pytest.raises(ConfigError, match=r"field 'nats_nkey_seed_file'.*not an NKEY"):
        load(toml, AgentConfig)


def test_nats_config_nkeys_command(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    done = cli("nats-config", "--agents", "web1", "--out", str(tmp_path), "--nkeys", str(seeds))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in seeds.iterdir()) == ["coordinator.nk", "operator.nk", "web1.nk"]
    assert not (tmp_path / "creds").exists()
    assert '"nkey": "U' in (tmp_path / "nats-server.conf").read_text()
