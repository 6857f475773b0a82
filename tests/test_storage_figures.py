"""Storage figures agree with ``df`` (issue 13): the targets' space, the heartbeat, the
coordinator's ``backup_storage_used_percent`` and the ``storage_low`` alert all count
used / (used + available), as ``df`` does, on real file systems: a loop-mounted ext4
made with ``mkfs.ext4 -m 5`` (5 % reserved for root, which the old formula
(total − free) / total counted as used) and, for the plain case, a size-limited tmpfs.
``df`` runs as a real process; its Use% is rounded up, so the percent is compared that way.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec
import pytest

from agent.heartbeat import target_space
from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator import alerts, overview
from coordinator.api_models import BackupStatusDoc
from coordinator.catalog import open_catalog
from coordinator.service import Coordinator
from engine.storage.local import LocalTarget
from engine.storage.open import open_target
from engine.storage.sftp import SftpTarget
from shared.config.agent import AgentConfig
from shared.config.coordinator import AlertsConfig, CatalogConfig, CoordinatorConfig, HttpConfig
from shared.config.targets import LocalTargetConfig, SftpTargetConfig
from shared.natsserver import NatsServer
from shared.vocab import utcnow
from shared.wire.base import encode
from shared.wire.monitoring import Alert, Heartbeat, TargetSpace, heartbeat_decoder
from tests.fixtures.sftp import SshdServer
from tests.harness import unique
from tests.test_heartbeat import get, metrics, until

MiB = 1 << 20


@dataclass(frozen=True)
class Df:
    """What ``df -B1 --output=size,used,avail,pcent`` printed for one mount."""

    size: int
    used: int
    avail: int
    pcent: int

    @property
    def free_ratio(self) -> float:
        return self.avail / (self.used + self.avail)

    @property
    def old_ratio(self) -> float:
        """The old, wrong free share: available / total."""
        return self.avail / self.size


def df(path: Path) -> Df:
    os.sync()
    out = subprocess.run(
        ["df", "-B1", "--output=size,used,avail,pcent", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    size, used, avail, pcent = out[1].split()
    return Df(int(size), int(used), int(avail), int(pcent.rstrip("%")))


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def ext4(where: Path, work: Path, *, size_mib: int = 64) -> Iterator[Path]:
    """A fresh ext4 (5 % reserved for root) on a loop device, mounted at ``where``."""
    image = work / f"{where.name}.img"
    with image.open("wb") as f:
        f.truncate(size_mib * MiB)
    _run("mkfs.ext4", "-q", "-m", "5", "-F", str(image))
    device = _run("losetup", "--find", "--show", str(image))
    try:
        where.mkdir(parents=True, exist_ok=True)
        _run("mount", device, str(where))
        try:
            yield where
        finally:
            subprocess.run(["umount", str(where)], check=False)
            if os.path.ismount(where):  # a failed test still holds a file there
                _run("umount", "-l", str(where))
    finally:
        _run("losetup", "-d", device)
        image.unlink()


@contextlib.contextmanager
def tmpfs(where: Path, *, size_mib: int = 64) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where))
    try:
        yield where
    finally:
        _run("umount", "-l", str(where))


def fill(where: Path, mib: int) -> None:
    with (where / "fill.bin").open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())


@pytest.fixture(params=["ext4", "tmpfs"])
def filled(request: pytest.FixtureRequest, sshd_server: SshdServer) -> Iterator[tuple[Path, str]]:
    """(mount, kind): a 64 MiB file system with 25 MiB written, in the SFTP user's home
    (so the SFTP target can ask the same mount for its statvfs)."""
    where = sshd_server.home / f"mnt-{uuid.uuid4().hex[:12]}"
    with contextlib.ExitStack() as stack:
        stack.callback(where.rmdir)
        if request.param == "ext4":
            stack.enter_context(ext4(where, sshd_server.home))
        else:
            stack.enter_context(tmpfs(where))
        fill(where, 25)
        yield where, request.param


async def test_target_space_and_coordinator_percent_equal_df(
    filled: tuple[Path, str], sshd_server: SshdServer
) -> None:
    filled_at, kind = filled
    local = LocalTarget("disk", filled_at / "repo")
    sftp = SftpTarget(
        "far",
        SftpTargetConfig(
            host=sshd_server.host,
            port=sshd_server.port,
            user=sshd_server.user,
            path=str(filled_at / "repo"),
            key_file=str(sshd_server.key_file),
            known_hosts=str(sshd_server.known_hosts),
        ),
    )
    try:
        seen = df(filled_at)
        if kind == "ext4":  # the reserved blocks are real: the old formula read higher
            assert seen.used + seen.avail < seen.size
            assert math.ceil(100 * (seen.size - seen.avail) / seen.size) > seen.pcent
        else:  # tmpfs reserves nothing: both formulas agree
            assert seen.used + seen.avail == seen.size
        for target in (local, sftp):
            space = await target.space()
            assert space is not None
            assert (space.total, space.used, space.free) == (seen.size, seen.used, seen.avail)
    finally:
        await sftp.aclose()

    # the agent's heartbeat over the wire, and the coordinator's figures from it
    cfg = AgentConfig(
        name="a1",
        nats_url="nats://127.0.0.1:1",
        key_file=str(filled_at / "k"),
        targets={"disk": LocalTargetConfig(path=str(filled_at / "repo"))},
    )
    space = await target_space("disk", cfg, local)
    hb = Heartbeat(
        agent="a1",
        hostname="h",
        version="v",
        at=utcnow(),
        interval_s=1,
        uptime_s=1,
        targets=[space],
    )
    [got] = heartbeat_decoder.decode(encode(hb)).targets
    assert (got.total, got.used, got.free) == (seen.size, seen.used, seen.avail)
    pct = overview.used_percent(got)
    assert pct is not None and math.ceil(pct) == seen.pcent
    ratio = overview.free_ratio(got)
    assert ratio == pytest.approx(seen.free_ratio, abs=1e-12)
    assert alerts.storage_low("a1", "disk", ratio, seen.free_ratio + 0.001) is not None
    assert alerts.storage_low("a1", "disk", ratio, seen.free_ratio - 0.001) is None


def test_an_old_agents_heartbeat_decodes_and_falls_back_to_the_old_formula() -> None:
    """An agent from before the ``used`` field sends total and free only."""
    old = (
        b'{"type":"heartbeat","agent":"old","hostname":"h","version":"0.9",'
        b'"at":"2026-12-01T00:00:00Z","interval_s":30.0,"uptime_s":5.0,"targets":'
        b'[{"name":"t","kind":"local","media":"disk","location":"onsite","tier":"local",'
        b'"total":1000,"free":250}]}'
    )
    hb = heartbeat_decoder.decode(old)
    [t] = hb.targets
    assert (t.total, t.free, t.used) == (1000, 250, None)
    assert overview.used_percent(t) == 75.0  # (total − free) / total, only for old agents
    new = msgspec.structs.replace(t, used=600)
    assert overview.used_percent(new) == pytest.approx(100 * 600 / 850)
    s3 = TargetSpace(name="s3", kind="s3", media="object", location="offsite", tier="remote")
    assert overview.used_percent(s3) is None and overview.free_ratio(s3) is None


# --- end to end: a real agent's heartbeats, the coordinator's /metrics and alerts --------


@asynccontextmanager
async def agent_then_coordinator(
    nats_url: str, work: Path, mounts: dict[str, Path], threshold: Callable[[dict[str, Df]], float]
) -> AsyncIterator[tuple[str, str]]:
    """Start an agent whose targets live on ``mounts``; once it runs (its key and
    repositories written), ``threshold(df figures)`` picks ``storage_min_free`` and a
    coordinator starts. Yields the agent's name and the coordinator's HTTP URL."""
    agent_cfg = AgentConfig(
        name=unique("dfagent"),
        nats_url=nats_url,
        key_file=str(work / "repo.key"),
        targets={n: LocalTargetConfig(path=str(m / "repo")) for n, m in mounts.items()},
        heartbeat_interval_s=0.2,
    )
    targets = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
    key, _ = await prepare_key(agent_cfg, targets)
    catalog = await open_catalog(f"sqlite:///{work / 'catalog.db'}")
    try:
        async with anyio.create_task_group() as tg:
            runner = AgentRunner(agent_cfg, key, targets)
            await tg.start(runner.run)
            min_free = threshold({n: df(m) for n, m in mounts.items()})
            cfg = CoordinatorConfig(
                name=unique("coord"),
                nats_url=nats_url,
                catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
                http=HttpConfig(port=0, anonymous=True),
                alerts=AlertsConfig(
                    interval_s=0.1, storage_min_free=min_free, disabled=["not_compliant"]
                ),
            )
            coordinator = Coordinator(cfg, catalog)
            await tg.start(coordinator.run)
            try:
                yield agent_cfg.name, f"http://127.0.0.1:{coordinator.http_port}"
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await runner.aclose()
    finally:
        await catalog.aclose()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[str]:
    """A NATS of this test's own: the session's keeps each agent's last heartbeat for a
    week, and this agent's "tight" target would then alert in every later coordinator."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server.url
    finally:
        server.stop()


async def test_storage_low_and_used_percent_follow_df_end_to_end(
    own_nats: str, tmp_path: Path
) -> None:
    """Two ext4 targets: ``roomy`` is above the threshold by df's count but below it by
    the old formula (it must not fire), ``tight`` is below it by df's count (it fires).
    Both are in the same heartbeat and the same evaluation, so ``tight`` firing is the
    marker that ``roomy`` was looked at too."""
    picked: dict[str, Df] = {}

    def threshold(seen: dict[str, Df]) -> float:
        picked.update(seen)
        roomy, tight = seen["roomy"], seen["tight"]
        mid = (roomy.free_ratio + roomy.old_ratio) / 2
        assert roomy.old_ratio < mid < roomy.free_ratio and tight.free_ratio < mid
        return mid

    with ext4(tmp_path / "roomy", tmp_path) as roomy, ext4(tmp_path / "tight", tmp_path) as tight:
        fill(roomy, 25)
        fill(tight, 44)
        mounts = {"roomy": roomy, "tight": tight}
        async with agent_then_coordinator(own_nats, tmp_path, mounts, threshold) as (name, url):
            low = alerts.fingerprint("storage_low", name, "tight")
            body = await until("storage_low on tight", lambda: _firing(url, low))
            assert f"{100 - picked['tight'].pcent}% free" in body.summary
            assert alerts.fingerprint("storage_low", name, "roomy") not in await _all(url)

            m = metrics((await get(f"{url}/metrics")).decode())["backup_storage_used_percent"]
            doc = msgspec.json.decode(
                await get(f"{url}/api/v1/backup/status"), type=BackupStatusDoc
            )
            for target, mnt in mounts.items():
                now = df(mnt)
                assert now == picked[target]  # nothing wrote there meanwhile
                assert math.ceil(m[(("agent", name), ("target", target))]) == now.pcent
                [t] = [t for t in doc.targets if t.agent == name and t.target == target]
                assert (t.total, t.free) == (now.size, now.avail)
                assert t.used_percent is not None and math.ceil(t.used_percent) == now.pcent


async def _all(url: str) -> dict[str, Alert]:
    found = msgspec.json.decode(await get(f"{url}/api/v1/alerts"), type=dict[str, list[Alert]])
    return {a.fingerprint: a for a in found["alerts"]}


async def _firing(url: str, fingerprint: str) -> Alert | None:
    return (await _all(url)).get(fingerprint)
