"""The fleet harness end to end: hosts in network namespaces, every part a real process
(nats-server, two coordinators on a PostgreSQL catalog, agents, a moto S3 server behind
the harness's fault proxy). A backup restores byte-identical across hosts; a partition
longer than ``ack_wait_s`` mid-backup leaves exactly one backup and no blocking lease;
20 % of S3 connections reset still gives a backup that verifies."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from mosaic.compare import tree_differences
from shared.wire.events import BackupCompleted, JobStarted
from tests.fleet.proxy import Knobs
from tests.fleet.topology import ACK_WAIT_S, NATS_PORT, Fleet, wait_until


def job_id_of(stderr: str) -> str:
    m = re.search(r"backup job (\S+) sent to agent", stderr)
    assert m, stderr
    return m.group(1)


def job_row(fl: Fleet, job_id: str) -> tuple[str, str | None] | None:
    rows = fl.catalog.query("SELECT status, backup_id FROM jobs WHERE job_id = %s", (job_id,))
    return (rows[0][0], rows[0][1]) if rows else None


def backup(fl: Fleet, short: str) -> str:
    """A backup of agent ``short``'s dataset to its end; the backup id from the catalog."""
    res = fl.cli("backup", "--dataset", fl.datasets[short], timeout=180)
    assert res.returncode == 0, res.stderr
    row = job_row(fl, job_id_of(res.stderr))
    assert row is not None and row[0] == "completed" and row[1], row
    return row[1]


def repo_backups(table: str) -> list[str]:
    """The backup ids of a ``repo list`` table."""
    return re.findall(r"^│ (backup-\S+)", table, flags=re.M)


def reach_nats(fl: Fleet, short: str) -> str:
    """Try to open a TCP connection to NATS from the agent's host; stderr of the try."""
    code = f"import socket; socket.create_connection(('{fl.ctl.address}', {NATS_PORT}), 3)"
    res = fl.host(short).check([sys.executable, "-c", code])
    return "connected" if res.returncode == 0 else res.stderr.strip().splitlines()[-1]


def test_backup_from_an_agent_host_restores_byte_identical(fleet: Fleet, tmp_path: Path) -> None:
    fl = fleet
    # the agent host reaches NATS only over its link
    assert reach_nats(fl, "a") == "connected"
    fl.a.link_down()
    assert "Network is unreachable" in reach_nats(fl, "a")
    fl.a.link_up()
    assert reach_nats(fl, "a") == "connected"

    backup_id = backup(fl, "a")
    dest = tmp_path / "restored"
    res = fl.cli("restore", backup_id, "--to", str(dest), timeout=180)
    assert res.returncode == 0, res.stderr
    assert tree_differences(fl.sources["a"], dest) == []
    assert fl.proxy.counts["bytes_up"] > 6 << 20  # the packs went over the links
    # agent b, over SFTP to the storage host
    backup_b = backup(fl, "b")
    dest_b = tmp_path / "restored-b"
    res = fl.cli("restore", backup_b, "--to", str(dest_b), timeout=180)
    assert res.returncode == 0, res.stderr
    assert tree_differences(fl.sources["b"], dest_b) == []
    # and agent b's PostgreSQL (a full base backup; WAL archiving on), verified on b
    res = fl.cli("backup", "--dataset", fl.pg_dataset, "--type", "full", timeout=180)
    assert res.returncode == 0, res.stderr
    row = job_row(fl, job_id_of(res.stderr))
    assert row is not None and row[0] == "completed" and row[1], row
    cfg = str(fl.agent_configs["b"])
    res = fl.cli("repo", "verify", "--config", cfg, "--read-data", row[1], on=fl.b, nats=False)
    assert res.returncode == 0, res.stderr + res.stdout


def test_partition_longer_than_ack_wait_leaves_one_backup_and_no_lease(fleet: Fleet) -> None:
    fl = fleet
    fl.proxy.knobs = Knobs(latency_up_s=0.05)  # a slow uplink: the backup takes seconds
    res = fl.cli("backup", "--dataset", fl.datasets["a"], "--no-wait")
    assert res.returncode == 0, res.stderr
    job = job_id_of(res.stderr)
    up_before = fl.proxy.counts["bytes_up"]
    wait_until("the backup to upload", lambda: fl.proxy.counts["bytes_up"] > up_before + (1 << 20))
    fl.a.link_down()
    row = job_row(fl, job)
    assert row is not None and row[0] != "completed", row  # cut off mid-backup
    time.sleep(ACK_WAIT_S * 3)  # the fault's length, not a wait for an outcome
    fl.a.link_up()
    fl.proxy.knobs = Knobs()

    def completed() -> bool:
        r = job_row(fl, job)
        return r is not None and r[0] == "completed"

    wait_until("the partitioned job to complete", completed, limit=120)
    _, backup_id = job_row(fl, job) or ("", None)
    # JetStream redelivered it (the partition outlasted ack_wait_s); it completed once
    events = fl.job_events(job)
    deliveries = [e.delivery for e in events if isinstance(e, JobStarted)]
    assert deliveries[0] == 1 and max(deliveries) >= 2, deliveries
    assert [e.backup_id for e in events if isinstance(e, BackupCompleted)] == [backup_id]
    rows = fl.catalog.query("SELECT backup_id FROM backups WHERE dataset = %s", (fl.datasets["a"],))
    assert [r[0] for r in rows] == [backup_id]
    # ... and one in the repository, too (a redelivered run did not store a second)
    cfg = str(fl.agent_configs["a"])
    listed = fl.cli("repo", "list", "--config", cfg, on=fl.a, nats=False)
    assert listed.returncode == 0, listed.stderr
    assert repo_backups(listed.stdout) == [backup_id], listed.stdout

    # no orphan lease: the next backup and a prune both complete
    second = backup(fl, "a")
    assert second != backup_id
    pruned = fl.cli(
        "repo", "prune", "--config", cfg, "--keep-last", "1", "--margin", "0", on=fl.a, nats=False
    )
    assert pruned.returncode == 0, pruned.stderr + pruned.stdout
    listed = fl.cli("repo", "list", "--config", cfg, on=fl.a, nats=False)
    assert repo_backups(listed.stdout) == [second], listed.stdout


def test_backup_survives_s3_connection_resets_and_verifies(fleet: Fleet) -> None:
    fl = fleet
    fl.proxy.knobs = Knobs(reset_share=0.2)
    before = fl.proxy.counts["reset"]
    backup_id = backup(fl, "a")
    assert fl.proxy.counts["reset"] > before  # resets really happened during it
    cfg = str(fl.agent_configs["a"])
    res = fl.cli("repo", "verify", "--config", cfg, "--read-data", backup_id, on=fl.a, nats=False)
    assert res.returncode == 0, res.stderr + res.stdout
