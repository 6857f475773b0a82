"""Job delivery: duplicates are dropped, a killed agent's job is redelivered and completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
from rich.console import Console

from mosaic import operator
from mosaic.compare import tree_differences
from shared import subjects
from shared.config.targets import LocalTargetConfig
from shared.vocab import utcnow
from shared.wire.api import ApiError, BackupList, BackupRequest, JobAccepted, ListRequest
from shared.wire.events import BackupCompleted, JobProgress, JobStarted, RestoreCompleted
from shared.wire.jobs import BackupJob
from shared.wire.sources import FilesSource
from tests.harness import REPO_ROOT, agent_toml, make_tree, running_stack, unique

QUIET = Console(quiet=True)


async def test_duplicate_job_publish_is_dropped(nats_url: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_url, tmp_path, target, src, with_agent=False) as st:
        job = BackupJob(
            job_id=unique("dup"),
            backup_id=unique("b"),
            dataset=st.dataset,
            agent=st.agent.name,
            target="t",
            source=FilesSource(path=str(src)),
            requested_at=utcnow(),
        )
        assert await st.bus.publish_job(job) is False
        assert await st.bus.publish_job(job) is True  # same Nats-Msg-Id → dropped
        stream = await st.bus.js.stream_info(
            subjects.JOBS_STREAM, subjects_filter=subjects.job(st.agent.name)
        )
        assert stream.state.subjects == {subjects.job(st.agent.name): 1}


async def test_each_api_verb_answers_only_its_own_request(nats_url: str, tmp_path: Path) -> None:
    """The operator API is a table verb → request type → handler: a request sent on
    another verb is refused, not answered as if it had come on its own."""
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_url, tmp_path, target, tmp_path, with_agent=False) as st:
        wrong = await st.bus.request("status", ListRequest(dataset=st.dataset))
        right = await st.bus.request("list", ListRequest(dataset=st.dataset))
        refused = await st.bus.request("list", BackupRequest(dataset=st.dataset))
    assert isinstance(wrong, ApiError) and wrong.code == "bad_request"
    assert wrong.message == "verb 'status' takes a StatusRequest, not a ListRequest"
    assert isinstance(right, BackupList) and right.backups == []
    assert isinstance(refused, ApiError) and "takes a ListRequest" in refused.message


def _slow_tree(root: Path) -> Path:
    """Many 1 MiB text files; with a high zstd level the backup takes seconds."""
    root.mkdir()
    for i in range(40):
        (root / f"f{i:03d}.txt").write_text(os.urandom(1 << 19).hex())
    return root


async def test_killed_agent_job_is_redelivered_and_completes(nats_url: str, tmp_path: Path) -> None:
    src = _slow_tree(tmp_path / "src")
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    name = unique("agent")
    async with running_stack(
        nats_url, tmp_path, target, src, with_agent=False, agent_name=name
    ) as st:
        cfg = agent_toml(
            tmp_path / "agent.toml",
            name=name,
            nats_url=nats_url,
            key_file=tmp_path / "repo.key",
            targets={"t": target},
            extra="ack_wait_s = 2.0\nprogress_interval_s = 0.1\nzstd_level = 15\n"
            "pack_size = 262144\nindex_every_packs = 2\n",
        )

        def start_agent() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "mosaic.cli", "agent", "run", "--config", str(cfg)],
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        first = start_agent()
        second = None
        try:
            acc = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, wait=False)
            assert isinstance(acc, JobAccepted)
            deliveries = []
            with anyio.fail_after(120):
                async for ev in st.bus.watch_job(acc.job_id, timeout=60):
                    if isinstance(ev, JobStarted):
                        deliveries.append(ev.delivery)
                    checkpointed = any((tmp_path / "repo" / "index").glob("*"))
                    if isinstance(ev, JobProgress) and second is None and checkpointed:
                        first.send_signal(signal.SIGKILL)  # mid-backup, no goodbye
                        first.wait()
                        second = start_agent()
                    if isinstance(ev, BackupCompleted):
                        done = ev
                        break
            assert second is not None, "the agent was never caught mid-backup"
            assert deliveries[:1] == [1] and deliveries[-1] >= 2
            assert done.summary.files == 40
            # the first attempt's checkpointed packs were reused, not uploaded again
            assert done.summary.chunks_new < done.summary.chunks_total
            await operator.until_cataloged(st.bus, done, QUIET)
            dest = tmp_path / "restored"
            res = await operator.restore(
                st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60
            )
            assert isinstance(res, RestoreCompleted)
            assert tree_differences(src, dest) == []
        finally:
            for p in (first, second):
                if p is not None and p.poll() is None:
                    p.terminate()
                    p.wait(10)


async def test_sigterm_hands_the_running_job_back_and_exits_cleanly(
    nats_url: str, tmp_path: Path
) -> None:
    """systemd/docker stop an agent with SIGTERM: it exits 0, and the job it was running
    is handed back at once — with ack_wait at 10 minutes, only that lets the next agent
    finish it within the test's limit."""
    src = _slow_tree(tmp_path / "src")
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    name = unique("agent")
    async with running_stack(
        nats_url, tmp_path, target, src, with_agent=False, agent_name=name
    ) as st:
        cfg = agent_toml(
            tmp_path / "agent.toml",
            name=name,
            nats_url=nats_url,
            key_file=tmp_path / "repo.key",
            targets={"t": target},
            extra="ack_wait_s = 600.0\nprogress_interval_s = 0.1\nzstd_level = 15\n",
        )
        argv = [sys.executable, "-m", "mosaic.cli", "agent", "run", "--config", str(cfg)]

        def start_agent(stderr: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=stderr)

        first = start_agent(subprocess.PIPE)
        second = None
        try:
            acc = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, wait=False)
            assert isinstance(acc, JobAccepted)
            deliveries = []
            with anyio.fail_after(120):
                async for ev in st.bus.watch_job(acc.job_id, timeout=60):
                    if isinstance(ev, JobStarted):
                        deliveries.append(ev.delivery)
                    if isinstance(ev, JobProgress) and second is None:
                        first.send_signal(signal.SIGTERM)
                        _, err = await anyio.to_thread.run_sync(
                            lambda: first.communicate(timeout=30)
                        )
                        assert first.returncode == 0, err.decode()
                        assert b"SIGTERM received" in err and b"handed back" in err, err
                        second = start_agent(subprocess.DEVNULL)
                    if isinstance(ev, BackupCompleted):
                        done = ev
                        break
            assert second is not None, "the agent was never caught mid-backup"
            assert deliveries == [1, 2]
            assert done.summary.files == 40
        finally:
            for p in (first, second):
                if p is not None and p.poll() is None:
                    p.terminate()
                    p.wait(10)
