"""Active/standby coordinators: one lease holder, a fast take-over, no job lost or doubled.

First the lease alone (``coordinator.leader.Leader``) on real NATS: two holders never
overlap, a refused renewal and an unreachable NATS both stop the work before the key
can expire. Then two real coordinator processes on one NATS and one PostgreSQL catalog:
SIGKILL the active one and watch the other take the lease and the schedule over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest
from anyio.abc import Process
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from coordinator.catalog import open_catalog
from coordinator.leader import KEY, Leader
from coordinator.schedule import job_id
from shared import subjects
from shared.bus import Bus
from shared.config.coordinator import ScheduleConfig
from shared.natsserver import NatsServer
from shared.wire.api import StatusRequest
from shared.wire.jobs import job_decoder
from shared.wire.status import StatusReply
from tests.fixtures.relay import relay
from tests.harness import REPO_ROOT, unique

MAX_FAILOVER_S = 15.0  # the bound for a take-over after the active one dies


async def _quiet(_: Exception) -> None:
    """The fault test stops NATS on purpose; its reconnect errors are expected."""


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(
        url, reconnect_time_wait=0.2, max_reconnect_attempts=-1, error_cb=_quiet
    )
    try:
        yield nc
    finally:
        # closing after the fault test stopped the server flushes into a dead socket
        with contextlib.suppress(ConnectionResetError):
            await nc.close()


def holder_body(name: str, running: set[str], log: list[tuple[str, str, float]]) -> Any:
    """Work that records when it runs under the lease and when it was cancelled."""

    async def body(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        running.add(name)
        log.append((name, "start", anyio.current_time()))
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            running.discard(name)
            log.append((name, "stop", anyio.current_time()))

    return body


async def wait_for(pred: Callable[[], bool | Awaitable[bool]], timeout: float) -> None:
    """Poll ``pred`` (state in another process or server: no event to wait on) until it
    holds; TimeoutError after ``timeout``."""
    with anyio.fail_after(timeout):
        while True:
            ok = pred()
            if ok if isinstance(ok, bool) else await ok:
                return
            await anyio.sleep(0.02)


# --- the lease alone ------------------------------------------------------------------


async def test_two_leaders_never_both_hold_the_lease(nats_url: str) -> None:
    bucket = unique("lease")
    running: set[str] = set()
    log: list[tuple[str, str, float]] = []
    overlaps: list[float] = []
    async with connection(nats_url) as nc:
        js = nc.jetstream()
        leaders = {n: Leader(js, f"{n}/1", ttl_s=1.5, bucket=bucket) for n in ("a", "b")}
        scopes = {n: anyio.CancelScope() for n in leaders}

        async def run(name: str) -> None:
            with scopes[name]:
                await leaders[name].run_when_leader(holder_body(name, running, log))

        async def watch() -> None:
            while True:
                both = all(lead.is_leader for lead in leaders.values())
                if both or len(running) > 1:
                    overlaps.append(anyio.current_time())
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            tg.start_soon(run, "a")
            tg.start_soon(run, "b")
            await wait_for(lambda: len(running) == 1, 5)
            first = next(iter(running))
            other = "b" if first == "a" else "a"
            # several ttls pass: renewals keep the same holder, the other keeps waiting
            # (the marker: the holder's own renewals, each a new revision of the key)
            kv = await js.key_value(bucket)
            start = (await kv.get(KEY)).revision

            async def renewed_for_four_ttls() -> bool:
                return bool((await kv.get(KEY)).revision >= start + 4 * 3)  # renew: ttl/3

            await wait_for(renewed_for_four_ttls, 4 * 1.5 + 5)
            assert running == {first} and leaders[first].is_leader
            assert (await kv.get(KEY)).value == f"{first}/1".encode()
            assert not leaders[other].is_leader
            # the holder stops cleanly: it releases the key, the other takes it at once
            scopes[first].cancel()
            await wait_for(lambda: running == {other}, 2)
            assert leaders[other].is_leader and not leaders[first].is_leader
            tg.cancel_scope.cancel()
        await js.delete_key_value(bucket)
    assert overlaps == []
    assert [(n, e) for n, e, _ in log] == [
        (first, "start"),
        (first, "stop"),
        (other, "start"),
        (other, "stop"),
    ]


async def test_a_refused_renewal_stops_the_work_at_once(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = unique("lease")
    running: set[str] = set()
    log: list[tuple[str, str, float]] = []
    async with connection(nats_url) as nc:
        js = nc.jetstream()
        leader = Leader(js, "a/1", ttl_s=3.0, bucket=bucket)
        async with anyio.create_task_group() as tg:
            await tg.start(leader.run_when_leader, holder_body("a", running, log))
            assert running == {"a"}
            # someone overwrites the key (an operator, a split brain): the holder's
            # next compare-and-swap fails and the work stops at that renewal
            kv = await js.key_value(bucket)
            caplog.set_level(logging.INFO, logger="coordinator.leader")
            await kv.put(KEY, b"intruder/1")
            await wait_for(lambda: not running, leader.renew_s + 1)
            # stopped because that renewal was refused, not because the lease ran out
            steps = [r.getMessage() for r in caplog.records if "stepping down" in r.getMessage()]
            assert steps == [f"lease {KEY}: taken over or expired, stepping down"]
            assert not leader.is_leader
            assert (await kv.get(KEY)).value == b"intruder/1"  # never written back
            tg.cancel_scope.cancel()
        await js.delete_key_value(bucket)


async def test_unreachable_nats_stops_the_work_before_the_lease_expires(tmp_path: Path) -> None:
    """The holder loses NATS (cut off by a relay) while a rival still reaches it and
    tries to take the lease all along: the holder's work has stopped before the rival's
    create succeeds (which it does once the key expired on the server)."""
    server = NatsServer(tmp_path / "nats").start()
    running: set[str] = set()
    log: list[tuple[str, str, float]] = []
    try:
        async with (
            relay(server.port) as cut_able,
            connection(cut_able.url) as nc,
            connection(server.url) as probe,
        ):
            leader = Leader(nc.jetstream(), "a/1", ttl_s=3.0, bucket=unique("lease"))
            async with anyio.create_task_group() as tg:
                await tg.start(leader.run_when_leader, holder_body("a", running, log))
                kv = await probe.jetstream().key_value(leader.bucket)
                first = (await kv.get(KEY)).revision
                await wait_for(lambda: renewed_since(kv, first), 5)
                await cut_able.cut()
                with anyio.fail_after(3.0 + 5):
                    while True:
                        try:
                            await kv.create(KEY, b"rival/1")
                        except (KeyWrongLastSequenceError, KeyNotFoundError):
                            await anyio.sleep(0.02)
                            continue
                        log.append(("rival", "acquired", anyio.current_time()))
                        break
                assert [(n, e) for n, e, _ in log] == [
                    ("a", "start"),
                    ("a", "stop"),
                    ("rival", "acquired"),
                ]
                assert not leader.is_leader and not running
                tg.cancel_scope.cancel()
    finally:
        server.stop()


async def renewed_since(kv: Any, revision: int) -> bool:
    return bool((await kv.get(KEY)).revision != revision)


# --- two coordinator processes --------------------------------------------------------

EVERY_MINUTE = ScheduleConfig(cron="* * * * *", backup_type="incremental", grace_s=120)


def coordinator_toml(
    path: Path, name: str, nats_url: str, catalog_url: str, dataset: str, agent: str
) -> Path:
    path.write_text(
        f'name = "{name}"\nnats_url = "{nats_url}"\nscheduler_interval_s = 0.5\n'
        f'[catalog]\nurl = "{catalog_url}"\n'
        f'[datasets.{dataset}]\nagent = "{agent}"\ntarget = "t"\n'
        f'source = {{ type = "files", path = "/srv" }}\n'
        f"[[datasets.{dataset}.schedules]]\n"
        f'cron = "{EVERY_MINUTE.cron}"\nbackup_type = "incremental"\n'
        f"grace_s = {EVERY_MINUTE.grace_s}\n"
    )
    return path


def minute_fires(after: datetime, until: datetime) -> list[datetime]:
    t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    out = []
    while t <= until:
        out.append(t)
        t += timedelta(minutes=1)
    return out


async def jobs_published(js: Any, agent: str) -> Counter[str]:
    """Job id → how many messages for it the JOBS stream holds (no agent consumes them)."""
    seen: Counter[str] = Counter()
    seq = 1
    while True:
        try:
            msg = await js.get_msg(
                subjects.JOBS_STREAM, seq=seq, subject=subjects.job(agent), next=True
            )
        except NotFoundError:
            return seen
        seen[job_decoder.decode(msg.data).job_id] += 1
        seq = msg.seq + 1


async def test_standby_takes_over_when_the_active_coordinator_is_killed(
    nats_url: str, fresh_postgres_url: str, tmp_path: Path
) -> None:
    dataset, agent = unique("ds"), unique("agent")  # no agent runs: jobs stay in the stream
    names = [unique("coord-a"), unique("coord-b")]
    catalog = await open_catalog(fresh_postgres_url)  # schema first, not raced by both
    # configured a day ago: runs inside the grace window are due (a new dataset's are not)
    await catalog.datasets_seen([dataset], datetime.now(UTC) - timedelta(days=1))
    procs: dict[str, Process] = {}
    logs = {n: tmp_path / f"{n}.log" for n in names}
    bus = await Bus.connect(nats_url, name="test")
    kv: Any = None

    async def owner() -> str | None:
        nonlocal kv
        try:
            kv = kv or await bus.js.key_value(subjects.LEADER_BUCKET)
            return bytes((await kv.get(KEY)).value).decode()
        except NotFoundError:  # no bucket yet, or no holder right now
            return None

    async def owned_by(names: list[str]) -> bool:
        o = await owner()
        return o is not None and o.split("/")[0] in names

    try:
        for n in names:
            cfg = coordinator_toml(
                tmp_path / f"{n}.toml", n, nats_url, fresh_postgres_url, dataset, agent
            )
            with logs[n].open("wb") as out:
                procs[n] = await anyio.open_process(
                    [sys.executable, "-m", "mosaic.cli", "coordinator", "run", "--config", cfg],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=REPO_ROOT,
                    env={**os.environ, "MOSAIC_LOG_LEVEL": "INFO"},
                )

        # 1. one of them takes the lease (a stale one of an earlier test expires first)
        await wait_for(lambda: owned_by(names), 25)
        leading_since = datetime.now(UTC)
        active = str(await owner()).split("/")[0]
        standby = next(n for n in names if n != active)
        # ... and dispatches the newest run inside the grace window (the older ones are
        # superseded: one run per schedule and pass). Which minute is newest depends on
        # when its first pass ran, maybe just before or after a minute turned: take the
        # newest fire it dispatched.
        window_start = leading_since - timedelta(seconds=EVERY_MINUTE.grace_s - 10)
        fires = minute_fires(window_start, leading_since + timedelta(seconds=15))

        async def newest_dispatched() -> datetime | None:
            done = [f for f in fires if await catalog.get_job(job_id(dataset, EVERY_MINUTE, f))]
            return max(done) if done else None

        async def first_pass() -> bool:
            return await newest_dispatched() is not None

        await wait_for(first_pass, 10)
        newest = await newest_dispatched()
        assert newest is not None

        # 2. SIGKILL the active one: nothing is released, the key has to expire, and the
        # standby takes it within the bound (how long it takes: bench/, not here)
        procs[active].kill()
        await procs[active].wait()
        await wait_for(lambda: owned_by([standby]), MAX_FAILOVER_S)

        # 3. the new active one catches up: it publishes the newest run again (it is
        # "dispatched", never started; or a newer minute's): JetStream must drop repeats
        def caught_up() -> bool:
            return "dispatched scheduled job" in logs[standby].read_text()

        await wait_for(caught_up, 10)
        # every run due by now goes out (a minute may have turned during the test); the
        # standby's re-publications above are in, so JetStream has judged them
        until = datetime.now(UTC)
        since = newest - timedelta(seconds=1)
        expected = [job_id(dataset, EVERY_MINUTE, f) for f in minute_fires(since, until)]

        async def all_published() -> bool:
            return set(expected) <= set(await jobs_published(bus.js, agent))

        await wait_for(all_published, 10)  # else a scheduled run was lost in the hand-over
        published = await jobs_published(bus.js, agent)
        assert all(c == 1 for c in published.values()), f"published twice: {published}"
        for j in published:
            job = await catalog.get_job(j)
            assert job is not None and job.dataset == dataset
        assert procs[standby].returncode is None
        # the survivor says it is the active one
        reply = await bus.request("status", StatusRequest())
        assert isinstance(reply, StatusReply)
        assert (reply.coordinator, reply.active) == (standby, True)

        # 4. a clean stop (SIGTERM, as systemd and docker send it) exits 0 and releases
        # the lease at once instead of leaving it to expire
        procs[standby].terminate()
        assert await procs[standby].wait() == 0, logs[standby].read_text()
        assert await owner() is None
        assert "released the lease" in logs[standby].read_text()
    finally:
        with anyio.CancelScope(shield=True):
            for p in procs.values():
                if p.returncode is None:
                    p.kill()
                await p.wait()
                await p.aclose()
            # the killed processes held the lease: free it for later tests' coordinators
            with contextlib.suppress(NotFoundError):
                await (await bus.js.key_value(subjects.LEADER_BUCKET)).delete(KEY)
            await bus.aclose()
            await catalog.aclose()
