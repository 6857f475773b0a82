"""NATS itself enforces the roles of ``nats-config --viewers/--operators``, and keeps each
agent's own API (``mosaic.agentapi.<agent>.>``) to that agent, on a real nats-server
started from the generated config.

- A viewer's CLI lists, but its ``restore`` is refused by NATS in one line naming the
  subject, the user and the role, not after a timeout; an operator's restore arrives.
- An agent may not subscribe to another agent's API subjects, nor to all of them; the
  coordinator account (console and coordinator) asks each agent and only that agent
  answers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from mosaic.setup.natsconfig import write_config
from shared import subjects
from shared.asking import PermissionRefused, ask_agent
from shared.bus import Bus
from shared.config.auth import Role
from shared.natsserver import free_port
from shared.wire.api import (
    ApiReply,
    ApiRequest,
    BackupList,
    JobAccepted,
    RestoreRequest,
    StatusRequest,
)
from shared.wire.base import encode
from shared.wire.browse import TreeListing, TreeRequest, agent_request_decoder
from shared.wire.status import StatusReply
from tests.fixtures.nats_conf import nats_from_config, refused

AGENTS = ["db1", "web1"]
ROLE_USERS: dict[str, Role] = {"vic": "viewer", "olga": "operator"}


@dataclass
class RolesNats:
    url: str
    creds: Path

    def password_file(self, user: str) -> str:
        return str(self.creds / f"{user}.password")

    async def connect(self, user: str) -> Bus:
        agent = user in AGENTS
        return await Bus.connect(
            self.url,
            name=user,
            user=user,
            password=Path(self.password_file(user)).read_text().strip(),
            inbox_prefix=subjects.agent_inbox(user) if agent else None,
            js_prefix=subjects.JS_IMPORT_PREFIX if agent else None,
            timeout=5,
        )


@pytest.fixture(scope="module")
def roles_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolesNats]:
    out = tmp_path_factory.mktemp("nats-roles")
    port = free_port()
    conf = write_config(
        out,
        AGENTS,
        host="127.0.0.1",
        port=port,
        role_users=ROLE_USERS,
    )
    with nats_from_config(conf, port, out / "nats-server.log"):
        yield RolesNats(f"nats://127.0.0.1:{port}", out / "creds")


@pytest.fixture
async def coordinator(roles_nats: RolesNats) -> AsyncIterator[list[ApiRequest]]:
    """The coordinator's user answering ``list`` and ``restore`` (what it received is
    returned, so a test sees which requests arrived)."""
    bus = await roles_nats.connect("coordinator")
    got: list[ApiRequest] = []

    async def answer(req: ApiRequest) -> ApiReply:
        got.append(req)
        if isinstance(req, RestoreRequest):
            return JobAccepted(job_id="r-1", agent="db1")
        if isinstance(req, StatusRequest):
            return StatusReply(
                status="healthy", coordinator="c", datasets=[], recent_failures=[], backups_total=0
            )
        return BackupList(backups=[])

    subs = [await bus.serve(verb, answer) for verb in ("list", "status", "restore")]
    await bus.nc.flush()
    try:
        yield got
    finally:
        for s in subs:
            await s.unsubscribe()
        await bus.aclose()


async def cli(nats: RolesNats, user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (in a thread: this loop serves the API)."""
    return await anyio.to_thread.run_sync(lambda: _cli(nats, user, *argv))


def _cli(nats: RolesNats, user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "mosaic-backup"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAIC_")}
    env["XDG_CONFIG_HOME"] = str(nats.creds.parent)  # no operator profile there
    return subprocess.run(
        [
            str(exe),
            *argv,
            "--nats",
            nats.url,
            "--nats-user",
            user,
            "--nats-password-file",
            nats.password_file(user),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


async def test_viewer_lists_but_nats_refuses_its_restore_in_one_line(
    roles_nats: RolesNats, coordinator: list[ApiRequest]
) -> None:
    listed = await cli(roles_nats, "vic", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(r.__class__.__name__ == "ListRequest" for r in coordinator)

    argv = ("restore", "b-1", "--to", "/srv/restore/x", "--no-wait", "--timeout", "60")
    restored = await cli(roles_nats, "vic", *argv)
    assert restored.returncode == 1
    lines = restored.stderr.strip().splitlines()
    assert lines == [
        "mosaic-backup: error: NATS refused mosaic.api.restore for user vic: "
        "the viewer role may not restore"
    ], restored.stderr
    assert not any(isinstance(r, RestoreRequest) for r in coordinator)  # never arrived


async def test_operator_restore_reaches_the_coordinator(
    roles_nats: RolesNats, coordinator: list[ApiRequest]
) -> None:
    done = await cli(roles_nats, "olga", "restore", "b-2", "--to", "/srv/restore/y", "--no-wait")
    assert done.returncode == 0, done.stderr
    assert [r.backup_id for r in coordinator if isinstance(r, RestoreRequest)] == ["b-2"]


async def test_viewer_bus_raises_permission_refused(roles_nats: RolesNats) -> None:
    bus = await roles_nats.connect("vic")
    try:
        with pytest.raises(PermissionRefused) as err:
            req = RestoreRequest(backup_id="b", destination="/x", requested_by="vic")
            await bus.request("restore", req, timeout=30)
        assert err.value.subject == "mosaic.api.restore" and err.value.user == "vic"
        with pytest.raises(PermissionRefused):  # nor may it ask an agent directly
            await ask_agent(bus, "db1", "tree", TreeRequest(backup_id="b"), timeout=30)
    finally:
        await bus.aclose()


async def serve_tree(bus: Bus, agent: str) -> object:
    async def on_msg(msg: object) -> None:
        req = agent_request_decoder.decode(msg.data)  # type: ignore[attr-defined]
        assert isinstance(req, TreeRequest)
        listing = TreeListing(backup_id=req.backup_id, dataset=agent, path="", entries=[], total=0)
        await msg.respond(encode(listing))  # type: ignore[attr-defined]

    return await bus.nc.subscribe(subjects.agentapi_all(agent), cb=on_msg)


async def test_an_agent_answers_only_its_own_api(
    roles_nats: RolesNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shared.bus")
    coord = await roles_nats.connect("coordinator")
    db1 = await roles_nats.connect("db1")
    web1 = await roles_nats.connect("web1")
    try:
        # db1 tries to take web1's requests, and everyone's
        await db1.nc.subscribe(subjects.agentapi("web1", "tree"))
        await db1.nc.subscribe("mosaic.agentapi.>")
        await db1.nc.flush()
        await refused(
            caplog,
            'permissions violation for subscription to "mosaic.agentapi.web1.tree"',
            'permissions violation for subscription to "mosaic.agentapi.>"',
        )
        await serve_tree(db1, "db1")
        await serve_tree(web1, "web1")
        await db1.nc.flush()
        await web1.nc.flush()
        for agent in AGENTS:
            reply = await ask_agent(coord, agent, "tree", TreeRequest(backup_id="b"), timeout=10)
            assert isinstance(reply, TreeListing) and reply.dataset == agent
    finally:
        for b in (web1, db1, coord):
            await b.aclose()


def test_nats_config_role_flags(tmp_path: Path) -> None:
    """The command's flags: each listed user gets its role's verbs; a user in two roles
    is refused in one line."""
    exe = str(Path(sys.executable).parent / "mosaic-backup")
    ok = subprocess.run(
        [
            exe,
            "nats-config",
            "--agents",
            "db1",
            "--viewers",
            "vic, val",
            "--operators",
            "olga",
            "--out",
            str(tmp_path / "ok"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    conf = (tmp_path / "ok" / "nats-server.conf").read_text()
    users = {
        u["user"]: u["permissions"]["publish"]["allow"]
        for u in (json.loads(line) for line in conf.splitlines() if '"user"' in line)
    }
    assert "mosaic.api.list" in users["val"] and "mosaic.api.restore" not in users["val"]
    assert "mosaic.api.restore" in users["olga"] and "mosaic.api.users" not in users["olga"]
    assert (tmp_path / "ok" / "creds" / "vic.password").is_file()
    twice = subprocess.run(
        [
            exe,
            "nats-config",
            "--agents",
            "db1",
            "--viewers",
            "vic",
            "--operators",
            "vic",
            "--out",
            str(tmp_path / "twice"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert twice.returncode == 1
    assert twice.stderr.strip().splitlines() == [
        "mosaic-backup: error: nats-config: user 'vic' is given as viewer and as operator; "
        "give each user one role"
    ]
    assert not (tmp_path / "twice" / "nats-server.conf").exists()
