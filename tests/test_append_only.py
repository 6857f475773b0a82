"""Append-only targets: host agents can add objects but never delete or replace them;
only prune, run by the maintenance agent with full-rights credentials, deletes.

SFTP is enforced by a real sshd (``Match User`` forcing ``internal-sftp -u 0222 -P
remove,…``, tests/fixtures/sftp.py), local targets by the kernel's append-only attribute
(``chattr +a``, which works on this machine's ext4, also against root) and in code.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
import asyncssh
import pytest
from rich.console import Console

from agent.jobs.context import JobContext as MaintenanceContext
from agent.jobs.prune import run_prune
from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from coordinator.catalog import open_catalog
from coordinator.maintenance import Task
from coordinator.service import Coordinator
from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format import spec as fmt
from engine.keys.files import create_key_file
from engine.lease import lease, live_leases
from engine.maintenance.prune import collect_garbage, forget
from engine.repository import Repository
from engine.restore.tree import restore_tree
from engine.storage.local import (
    LocalTarget,
    has_append_attribute,
    prepare_append_only,
    set_append_attribute,
)
from engine.storage.sftp import SftpTarget
from mosaic import operator
from mosaic.compare import tree_differences
from mosaic.setup.systemd import agent_unit
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import (
    CatalogConfig,
    CoordinatorConfig,
    DatasetConfig,
    MaintenanceConfig,
)
from shared.config.targets import SftpTargetConfig
from shared.errors import ConfigError, TargetError
from shared.vocab import utcnow
from shared.wire.api import ApiError
from shared.wire.jobs import PruneJob
from shared.wire.records import JobRecord
from shared.wire.sources import FilesSource
from tests.fixtures.sftp import SshdServer, append_only_repo
from tests.harness import cli, make_tree, unique

QUIET = Console(quiet=True)
OFF = {"verify_cron": "", "replicate_cron": "", "drill_cron": ""}


@pytest.fixture
def sftp_pair(sshd_server: SshdServer) -> tuple[SftpTargetConfig, SftpTargetConfig]:
    return append_only_repo(sshd_server)


# --- SFTP: what the server refuses ------------------------------------------------------


async def test_sshd_refuses_the_append_only_user_every_destructive_request(
    sftp_pair: tuple[SftpTargetConfig, SftpTargetConfig],
) -> None:
    """Not the client's good manners: a compromised agent talking raw SFTP is refused."""
    _, cfg = sftp_pair
    root = cfg.path
    async with (
        asyncssh.connect(
            cfg.host,
            cfg.port,
            username=cfg.user,
            client_keys=[cfg.key_file],
            known_hosts=cfg.known_hosts,
            config=[],
            agent_path=None,
        ) as conn,
        conn.start_sftp_client() as sftp,
    ):
        async with sftp.open(f"{root}/manifests/b1", "wb") as f:
            await f.write(b"original")
        async with sftp.open(f"{root}/manifests/other", "wb") as f:
            await f.write(b"other")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.remove(f"{root}/manifests/b1")
        # denied requests are not even advertised (extensions), and refused if sent
        with pytest.raises((asyncssh.SFTPPermissionDenied, asyncssh.SFTPOpUnsupported)):
            await sftp.posix_rename(f"{root}/manifests/other", f"{root}/manifests/b1")
        with pytest.raises(asyncssh.SFTPError):  # plain rename never replaces
            await sftp.rename(f"{root}/manifests/other", f"{root}/manifests/b1")
        with pytest.raises(asyncssh.SFTPPermissionDenied):  # its files are 0444
            await sftp.open(f"{root}/manifests/b1", "r+b")
        with pytest.raises(asyncssh.SFTPPermissionDenied):  # and it cannot chmod them
            await sftp.chmod(f"{root}/manifests/b1", 0o644)
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.rmdir(f"{root}/locks")
        async with sftp.open(f"{root}/manifests/b1", "rb") as f:
            assert await f.read() == b"original"


async def test_append_only_sftp_target_adds_but_never_deletes_or_replaces(
    sftp_pair: tuple[SftpTargetConfig, SftpTargetConfig],
) -> None:
    full_cfg, cfg = sftp_pair
    target, full = SftpTarget("nas", cfg), SftpTarget("nas", full_cfg)
    try:
        await target.put("index/a", b"one")
        await target.put("index/a", b"one")  # a retried upload of the same bytes
        with pytest.raises(TargetError) as err:
            await target.put("index/a", b"two")
        text = str(err.value)
        assert "refuses to replace 'index/a'" in text and "targets.nas.append_only" in text
        assert "\n" not in text and not err.value.retryable
        with pytest.raises(TargetError, match="refuses to delete 'index/a'"):
            await target.delete("index/a")
        assert await target.get("index/a") == b"one"

        # create-if-absent still has exactly one winner, also in a race
        wins: list[bytes] = []

        async def create(i: int) -> None:
            racer = SftpTarget("nas", cfg)  # one connection each: a real race
            try:
                if await racer.create("config", f"v{i}".encode()):
                    wins.append(f"v{i}".encode())
            finally:
                await racer.aclose()

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(create, i)
        assert len(wins) == 1 and await full.get("config") == wins[0]

        await full.delete("index/a")  # the full-rights user may
        assert not await full.exists("index/a")
    finally:
        await target.aclose()
        await full.aclose()


async def test_leases_on_an_append_only_target_are_new_objects_and_end_without_deletes(
    sftp_pair: tuple[SftpTargetConfig, SftpTargetConfig], tmp_path: Path
) -> None:
    full_cfg, cfg = sftp_pair
    key = create_key_file(tmp_path / "k")
    target, full = SftpTarget("nas", cfg), SftpTarget("nas", full_cfg)
    try:
        repo = await Repository.open(target, key, create=True)
        ttl = timedelta(seconds=0.6)  # renewed every 0.2 s
        async with lease(target, repo.keys, holder="h", purpose="backup", ttl=ttl) as mine:
            with anyio.fail_after(20):
                while len([o async for o in target.list(fmt.LOCKS_PREFIX)]) < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            live, _ = await live_leases(target, repo.keys)
            assert [x.lease_id for x in live] == [mine.lease_id]
        live, dead = await live_leases(target, repo.keys)
        records = [o.key async for o in target.list(fmt.LOCKS_PREFIX)]
        assert live == [] and sorted(records) == dead and len(dead) >= 4
        for k in dead:  # what prune does with the full-rights user
            await full.delete(k)
        assert [o async for o in target.list(fmt.LOCKS_PREFIX)] == []
    finally:
        await target.aclose()
        await full.aclose()


# --- SFTP end to end: host agent appends, maintenance agent prunes ---------------------


@dataclass
class Pair:
    coordinator: Coordinator
    bus: Bus
    host: str
    maint: str
    dataset: str


@asynccontextmanager
async def two_agents(
    nats_url: str, work: Path, src: Path, full: SftpTargetConfig, append: SftpTargetConfig
) -> AsyncIterator[Pair]:
    host, maint, dataset = unique("host"), unique("maint"), unique("ds")
    key_file = str(work / "repo.key")
    agents = [
        AgentConfig(name=n, nats_url=nats_url, key_file=key_file, targets={"nas": t}, ack_wait_s=5)
        for n, t in ((host, append), (maint, full))
    ]
    coord_cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={
            dataset: DatasetConfig(agent=host, target="nas", source=FilesSource(path=str(src)))
        },
        maintenance=MaintenanceConfig(**OFF, agent=maint, gc_margin_s=0.2),
    )
    catalog = await open_catalog(coord_cfg.catalog.url)
    runners: list[AgentRunner] = []
    try:
        async with anyio.create_task_group() as tg:
            coordinator = Coordinator(coord_cfg, catalog)
            await tg.start(coordinator.run)
            for cfg in agents:
                targets = {"nas": SftpTarget("nas", cfg.targets["nas"])}  # type: ignore[arg-type]
                key, _ = await prepare_key(cfg, targets)
                runners.append(AgentRunner(cfg, key, targets))
                await tg.start(runners[-1].run)
            bus = await Bus.connect(nats_url, name="test")
            try:
                yield Pair(coordinator, bus, host, maint, dataset)
            finally:
                await bus.aclose()
                tg.cancel_scope.cancel()
    finally:
        for r in runners:
            await r.aclose()
        await catalog.aclose()


async def send(st: Pair, job: PruneJob) -> None:
    """As the coordinator's dispatch does, minus its checks: record, then publish."""
    await st.coordinator.catalog.record_job(
        JobRecord(
            job_id=job.job_id,
            job_kind="prune",
            dataset="",
            agent=job.agent,
            target=job.target,
            status="dispatched",
            requested_at=job.requested_at,
            updated_at=job.requested_at,
        )
    )
    await st.bus.publish_job(job)


async def eventually(what: str, probe: object, limit: float = 60) -> object:
    with anyio.move_on_after(limit):
        while True:
            got = await probe()  # type: ignore[operator]
            if got:
                return got
            await anyio.sleep(0.1)
    raise AssertionError(f"timed out after {limit:.0f}s waiting for {what}")


async def test_host_appends_and_only_the_maintenance_agent_prunes(
    nats_url: str, sftp_pair: tuple[SftpTargetConfig, SftpTargetConfig], tmp_path: Path
) -> None:
    full, append = sftp_pair
    src = make_tree(tmp_path / "src", big_mib=1)
    async with two_agents(nats_url, tmp_path, src, full, append) as st:
        ds = st.dataset
        older = await operator.backup(st.bus, ds, "full", QUIET, QUIET, timeout=120)
        extra = src / "only-in-the-second.bin"
        extra.write_bytes(random.Random(7).randbytes(600_000))
        second = await operator.backup(st.bus, ds, "full", QUIET, QUIET, timeout=120)
        extra.unlink()
        newest = await operator.backup(st.bus, ds, "full", QUIET, QUIET, timeout=120)
        ids = [b.backup_id for b in (older, second, newest)]  # type: ignore[union-attr]
        catalog = st.coordinator.catalog

        # The coordinator will not send prune to the append-only host agent …
        async def host_heartbeat() -> bool:
            return st.host in st.coordinator.heartbeats.last()

        await eventually("the host agent's heartbeat", host_heartbeat)
        refused = await st.coordinator.maintenance.build(
            Task("prune", st.host, "nas", datasets=(ds,)), "prune-x"
        )
        assert isinstance(refused, ApiError)
        assert f"agent {st.host!r} declares it append-only" in refused.message
        assert "[maintenance] agent" in refused.message

        # … and the host agent refuses one sent anyway.
        now = utcnow()
        await send(
            st,
            PruneJob(
                job_id="prune-host", agent=st.host, target="nas", forget=[ids[1]], requested_at=now
            ),
        )

        async def failed() -> object:
            rows = await catalog.list_maintenance(kind="prune", limit=5)
            return next((r for r in rows if r.job_id == "prune-host"), None)

        rec = await eventually("the host agent's refusal", failed)
        assert rec.outcome == "failed" and "is append-only" in rec.summary  # type: ignore[attr-defined]

        # The maintenance agent, with the full-rights user, prunes the second backup.
        await send(
            st,
            PruneJob(
                job_id="prune-maint",
                agent=st.maint,
                target="nas",
                forget=[ids[1]],
                gc_margin_s=0.2,
                requested_at=now,
            ),
        )

        async def pruned() -> object:
            rows = await catalog.list_maintenance(kind="prune", limit=5)
            return next((r for r in rows if r.job_id == "prune-maint"), None)

        rec = await eventually("the maintenance agent's prune", pruned)
        assert rec.outcome == "passed", rec  # type: ignore[attr-defined]
        summary = rec.summary  # type: ignore[attr-defined]
        assert summary.startswith("forgot 1 backup(s)") and "deferred" not in summary, summary
        assert " 0 pack(s) removed" not in summary  # the second backup's own data went
        manifests = sorted(p.name for p in (Path(full.path) / "manifests").iterdir())
        assert manifests == sorted([ids[0], ids[2]])
        for backup_id in (ids[0], ids[2]):
            dest = tmp_path / f"restored-{backup_id}"
            await operator.restore(st.bus, backup_id, str(dest), QUIET, QUIET, timeout=120)
            assert tree_differences(src, dest) == []
        # the host's ended leases were collected by the prune
        assert [p.name for p in (Path(full.path) / "locks").iterdir()] == []


# --- local: chattr +a and the code-level refusal ---------------------------------------


@pytest.fixture
def append_dir(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "repo"
    folders = prepare_append_only(root)
    try:
        yield root
    finally:  # pytest must be able to remove it
        for folder in folders:
            set_append_attribute(folder, False)


async def test_local_append_only_folders_refuse_deletes_even_to_root(append_dir: Path) -> None:
    assert os.geteuid() == 0
    assert has_append_attribute(append_dir) and has_append_attribute(append_dir / "data" / "ff")
    target = LocalTarget("disk", append_dir, append_only=True)
    await target.put("manifests/b1", b"original")
    await target.put("manifests/b1", b"original")  # a retried upload
    assert await target.create("config", b"c1") and not await target.create("config", b"c2")
    with pytest.raises(TargetError, match="append-only target 'disk' refuses to replace"):
        await target.put("manifests/b1", b"changed")
    with pytest.raises(TargetError, match="refuses to delete 'manifests/b1'"):
        await target.delete("manifests/b1")
    # the kernel refuses too, whatever code runs as root
    with pytest.raises(PermissionError):
        (append_dir / "manifests" / "b1").unlink()
    (append_dir / "manifests" / "b2").write_bytes(b"x")
    with pytest.raises(PermissionError):
        os.replace(append_dir / "manifests" / "b2", append_dir / "manifests" / "b1")
    assert await target.get("manifests/b1") == b"original"
    assert await target.get("config") == b"c1"
    assert [p.name for p in (append_dir / "manifests").iterdir() if p.name.startswith(".")] == []


async def test_local_backup_on_append_only_folders_then_full_rights_prune(
    append_dir: Path, tmp_path: Path
) -> None:
    key = create_key_file(tmp_path / "k")
    host = LocalTarget("disk", append_dir, append_only=True)
    keep, drop = make_tree(tmp_path / "keep", big_mib=1), tmp_path / "drop"
    drop.mkdir()
    (drop / "big.bin").write_bytes(random.Random(3).randbytes(900_000))
    repo = await Repository.open(host, key, create=True)
    for backup_id, src in (("b-keep", keep), ("b-drop", drop)):
        spec = BackupSpec(
            backup_id=backup_id, dataset="d", agent="a", source=FilesSource(path=str(src))
        )
        await backup_dataset(repo, spec)
        repo = await Repository.open(host, key)

    ctx = MaintenanceContext(
        agent="a", target=lambda _: host, open=lambda t, create: Repository.open(t, key)
    )
    job = PruneJob(job_id="p1", agent="a", target="disk", forget=["b-drop"], requested_at=utcnow())
    with pytest.raises(ConfigError, match="target 'disk' of agent 'a' is append-only"):
        await run_prune(ctx, job)

    full = LocalTarget("disk", append_dir)  # the maintenance agent: lifts +a per delete
    repo = await Repository.open(full, key)
    await forget(repo, ["b-drop"])
    report = await collect_garbage(repo, margin=timedelta(seconds=0.1), forgotten=["b-drop"])
    assert report.deleted and not report.deferred
    assert sorted(p.name for p in (append_dir / "manifests").iterdir()) == ["b-keep"]
    assert has_append_attribute(append_dir / "manifests")  # put back after each delete
    dest = tmp_path / "restored"
    repo = await Repository.open(host, key)
    await restore_tree(repo, await repo.load_manifest("b-keep"), dest)
    assert tree_differences(keep, dest) == []


def test_agent_units_drop_the_capability_to_lift_append_only() -> None:
    cfg = AgentConfig(name="a", key_file="/etc/mosaic-backup/a.key", targets={})
    assert "CapabilityBoundingSet=~CAP_LINUX_IMMUTABLE" in agent_unit("/bin/mosaic", "/a.toml", cfg)


def test_append_only_layout_command(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    done = cli("append-only-layout", str(root))
    try:
        assert done.returncode == 0, done.stderr
        assert "262 folders made append-only" in done.stdout
        assert has_append_attribute(root) and has_append_attribute(root / "data" / "00")
    finally:
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            set_append_attribute(folder, False)
