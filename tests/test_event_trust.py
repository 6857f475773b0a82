"""The coordinator records an event only from the agent that was given the job, on that
agent's own subject: a compromised agent cannot record backups in another's name."""

from __future__ import annotations

from pathlib import Path

import anyio

from shared import subjects
from shared.config.targets import LocalTargetConfig
from shared.vocab import BackupSummary, utcnow
from shared.wire.api import BackupList, BackupRequest, JobAccepted, ListRequest
from shared.wire.base import encode
from shared.wire.events import BackupCompleted
from tests.harness import make_tree, running_stack


def _completed(job_id: str, agent: str, dataset: str, backup_id: str = "") -> BackupCompleted:
    s = BackupSummary(
        files=1,
        dirs=0,
        symlinks=0,
        bytes_read=1,
        bytes_new=1,
        bytes_stored=1,
        chunks_total=1,
        chunks_new=1,
        packs_written=1,
        duration_s=0.1,
    )
    now = utcnow()
    return BackupCompleted(
        job_id=job_id,
        agent=agent,
        backup_id=backup_id or job_id,
        dataset=dataset,
        target="t",
        backup_type="full",
        repository_id="r",
        started_at=now,
        finished_at=now,
        summary=s,
    )


async def test_forged_events_are_ignored(nats_url: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), src, with_agent=False
    ) as st:
        acc = await st.bus.request("backup", BackupRequest(dataset=st.dataset))
        assert isinstance(acc, JobAccepted)
        real = st.agent.name
        js = st.bus.js

        async def publish(subject_agent: str, ev: BackupCompleted) -> None:
            await js.publish(
                subjects.event(subject_agent, ev.job_id, "backup_completed"),
                encode(ev),
                stream=subjects.EVENTS_STREAM,
            )

        # Each forgery records a backup id of its own, so the listing tells them apart.
        # another agent, on its own subject, claiming the job
        await publish("intruder", _completed(acc.job_id, real, st.dataset, "forged-1"))
        # another agent naming itself, on the real agent's subject (permissions would stop
        # the publish; the coordinator must not trust it either)
        await publish(real, _completed(acc.job_id, "intruder", st.dataset, "forged-2"))
        # the right agent, but a dataset that job was not for
        await publish(real, _completed(acc.job_id, real, "other-dataset", "forged-3"))
        # the genuine event comes after them on the stream, and the coordinator records
        # events in stream order: once it is listed, the forgeries have been judged
        await publish(real, _completed(acc.job_id, real, st.dataset))
        with anyio.fail_after(10):
            while True:
                listed = await st.bus.request("list", ListRequest())
                assert isinstance(listed, BackupList)
                if any(b.backup_id == acc.job_id for b in listed.backups):
                    break
                await anyio.sleep(0.05)
        ids = sorted(b.backup_id for b in listed.backups)
        assert [i for i in ids if i.startswith("forged")] == [] and acc.job_id in ids
