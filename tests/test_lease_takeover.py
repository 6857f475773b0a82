"""Dead-holder lease takeover (issue 14): a prune killed with SIGKILL in the middle of its
garbage collection leaves its lease; the next prune takes over at once and reclaims the
space. A live holder — on this host or another — is never taken over, and a holder on
another host counts as dead only once its renewals have stopped for STALE_RENEWALS
intervals beyond GC's margin."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import msgspec
import pytest

from bench.faults import Repo, kill, tree_digest, wait_for, write_files
from engine import lease as lease_module
from engine.keys.files import load_key_file
from engine.lease import STALE_RENEWALS, LeaseInfo, LeaseLost, read_leases, stale
from engine.maintenance.prune import collect_garbage
from engine.repository import Repository
from engine.storage.local import LocalTarget
from tests.harness import REPO_ROOT

MARGIN = timedelta(seconds=0.1)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """Two backups of a changing tree: --keep-last 1 leaves garbage for GC."""
    r = Repo(tmp_path)
    src = tmp_path / "src"
    write_files(src, range(12))
    r.backup(src)
    write_files(src, range(100, 112))
    r.backup(src)
    return r


def _gc_waiting_its_margin(r: Repo) -> subprocess.Popen[str]:
    """A real `repo prune` stopped (by its margin of an hour) after the index swap."""
    before = r.segments()
    proc = r.start("prune", "--keep-last", "1", "--margin", "3600")
    assert wait_for(proc, lambda: bool(r.segments()) and not (r.segments() & before))
    assert r.leases() == 1
    return proc


async def _open(r: Repo) -> Repository:
    key = load_key_file(str(r.work / "repo.key"), None)
    return await Repository.open(LocalTarget("t", r.dir), key)


async def test_a_prune_killed_mid_gc_is_taken_over_at_once(repo: Repo) -> None:
    proc = _gc_waiting_its_margin(repo)
    pid = proc.pid
    kill(proc)
    assert repo.leases() == 1  # the killed prune's lease stays behind
    before = repo.data_bytes()
    done = repo.cli("prune", "--keep-last", "1", "--margin", "0.1")
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "lease of gc by" in text and f"pid {pid} is not running on this host" in text
    assert "treated as gone" in text and "deferred" not in text, text
    assert repo.data_bytes() < before  # the space is reclaimed now, not a ttl later
    assert repo.leases() == 0
    assert repo.verify()
    (kept,) = repo.ids()
    assert repo.restores(kept)


async def test_a_live_prune_is_never_taken_over(repo: Repo) -> None:
    proc = _gc_waiting_its_margin(repo)
    try:
        lease_keys = sorted(p.name for p in (repo.dir / "locks").iterdir())
        before = repo.data_bytes()
        done = repo.cli("prune", "--keep-last", "1", "--margin", "0.1")
        text = done.stdout + done.stderr
        assert done.returncode == 0, text
        assert "deferred" in text and "gc by" in text and "running since" in text, text
        assert "treated as gone" not in text
        assert sorted(p.name for p in (repo.dir / "locks").iterdir())[:1] == lease_keys[:1]
        assert repo.data_bytes() == before
        assert proc.poll() is None  # the holder still runs, still holding its lease
    finally:
        kill(proc)


_ELSEWHERE = """
import sys, anyio
from engine import lease as L
from engine.repository import Repository
from engine.storage.local import LocalTarget

L._host_identity = lambda: ("other-host", "other-machine", "other-boot", "pid:[1]")

async def main() -> None:
    repo = await Repository.open(LocalTarget("t", sys.argv[1]), bytes.fromhex(sys.argv[2]))
    async with L.lease(repo.target, repo.keys, holder="b@other-host", purpose="backup far"):
        print("held", flush=True)
        await anyio.sleep(3600)

anyio.run(main)
"""


def _far_holder(r: Repo) -> subprocess.Popen[str]:
    """A real process whose lease names another host, renewing it every 60 s."""
    key = load_key_file(str(r.work / "repo.key"), None)
    return subprocess.Popen(
        [sys.executable, "-c", _ELSEWHERE, str(r.dir), key.hex()],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


async def test_a_holder_on_another_host_is_dead_only_once_its_renewals_stop(
    repo: Repo,
) -> None:
    with _far_holder(repo) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "held\n"
            # alive and renewing: GC defers, and the lease stays
            report = await collect_garbage(await _open(repo), margin=MARGIN, forgotten=())
            assert report.deferred and "backup far by b@other-host" in report.deferred
            assert "held on another host" in report.deferred and not report.plan.dead
        finally:
            proc.kill()
            proc.wait()
    opened = await _open(repo)
    (far,) = [r.info for r in (await read_leases(opened.target, opened.keys))[0]]
    assert far.host == "other-host" and far.renew_every == 60.0 and far.renewed is not None
    # its renewals stopped: within STALE_RENEWALS intervals it is still live ...
    soon = far.renewed + timedelta(seconds=far.renew_every * (STALE_RENEWALS - 1))
    report = await collect_garbage(await _open(repo), now=soon, margin=MARGIN)
    assert report.deferred and not report.plan.dead
    # ... beyond them (and GC's margin), but long before its 15-minute expiry, it is dead
    later = far.renewed + timedelta(seconds=far.renew_every * STALE_RENEWALS + 1)
    assert later + MARGIN < far.expires
    report = await collect_garbage(await _open(repo), now=later, margin=MARGIN)
    assert report.deferred is None
    ((gone, why),) = report.plan.dead
    assert gone.lease_id == far.lease_id and why.startswith("not renewed since")
    assert (await read_leases(opened.target, opened.keys))[0] == []


def test_a_lease_that_does_not_say_how_often_it_renews_is_never_stale() -> None:
    """Leases written before issue 14 lack ``renewed``/``renew_every``: they decode with
    the defaults, and only their expiry ends them."""
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    old = msgspec.msgpack.encode(
        {
            "lease_id": "x",
            "holder": "h",
            "purpose": "backup",
            "started": long_ago,
            "expires": long_ago + timedelta(days=9999),
        }
    )
    info = msgspec.msgpack.decode(old, type=LeaseInfo)
    assert info.renewed is None and info.renew_every == 0.0
    assert stale(info, datetime.now(UTC)) is None
    renewing = msgspec.structs.replace(info, renewed=long_ago, renew_every=60.0)
    assert stale(renewing, datetime.now(UTC)) is not None


def test_a_holder_that_could_not_renew_in_time_stops() -> None:
    """The holder's half: a run suspended past the stale window must not commit."""
    now = datetime.now(UTC)
    info = LeaseInfo(lease_id="x", holder="h", purpose="backup b1", started=now, expires=now)
    lease_module._check_held(60.0 * STALE_RENEWALS, 60.0, info)  # just within: fine
    with pytest.raises(LeaseLost, match=r"backup b1\): not renewed for 241 s"):
        lease_module._check_held(60.0 * STALE_RENEWALS + 1, 60.0, info)


def test_restores_are_byte_identical_after_the_takeover(repo: Repo) -> None:
    """The kept backup's bytes are the source's, checked on its own."""
    proc = _gc_waiting_its_margin(repo)
    kill(proc)
    done = repo.cli("prune", "--keep-last", "1", "--margin", "0.1")
    assert done.returncode == 0, done.stdout + done.stderr
    out = repo.work / "out"
    (kept,) = repo.ids()
    assert repo.cli("restore", kept, "--to", str(out)).returncode == 0
    assert tree_digest(out) == tree_digest(repo.work / "src")


async def test_a_holder_frozen_past_the_stale_window_stops_instead_of_committing(
    tmp_path: Path,
) -> None:
    """A process frozen longer than STALE_RENEWALS renewals (here: its event loop blocked,
    as a SIGSTOP or a long GC pause would) finds on waking that GC may have taken its
    lease over: the body is cancelled with LeaseLost and never reaches its commit."""
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), bytes(32), create=True)
    committed = False
    ttl = timedelta(seconds=0.6)  # renews every 0.2 s: stale after 0.8 s without one
    with pytest.raises(LeaseLost, match="this run stops without committing"):
        async with lease_module.lease(repo.target, repo.keys, holder="f@h", purpose="p", ttl=ttl):
            time.sleep(1.2)  # the freeze itself: the event loop is blocked
            await anyio.sleep(30)  # the renewal task wakes first and fails the lease
            committed = True
    assert not committed
    assert (await read_leases(repo.target, repo.keys))[0] == []  # released all the same
