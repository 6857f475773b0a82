"""``mosaic-backup verify``: the coordinator sends the verify to the agent that holds the
key, the CLI follows it and prints what was found. Real NATS, a real coordinator and
real agents, real repositories on disk; the CLI is a real process."""

from __future__ import annotations

import math
import re
from pathlib import Path

from mosaic import operator
from shared.wire.events import BackupCompleted
from tests.fixtures.fleet_stack import Fleet, eventually, fleet
from tests.harness import make_tree
from tests.test_maintenance_jobs import QUIET, flip_byte_in_a_pack


async def _backup(f: Fleet, short: str) -> str:
    done = await operator.backup(f.bus, f.datasets[short], "full", QUIET, QUIET, timeout=120)
    assert isinstance(done, BackupCompleted)
    return done.backup_id


def _row(text: str, name: str) -> str:
    """The summary table's row of ``name`` (the one with the verify job's id)."""
    lines = [line for line in text.splitlines() if f" {name} " in line and " verify-" in line]
    assert len(lines) == 1, text
    return lines[0]


async def test_verify_dataset_passes_then_names_the_flipped_pack(
    nats_url: str, tmp_path: Path
) -> None:
    spec = {"web": ("a", make_tree(tmp_path / "src", big_mib=2))}
    async with fleet(nats_url, tmp_path, spec) as f:
        name = f.datasets["web"]
        first, second = await _backup(f, "web"), await _backup(f, "web")
        proc = await f.cli("verify", "--dataset", name, "--read-data", "--wait")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        row = _row(proc.stdout, name)
        assert "passed: 2 backup(s)" in row and f.agents["a"].name in row, proc.stdout

        pack = flip_byte_in_a_pack(f.repos["a"])
        proc = await f.cli("verify", "--dataset", name, "--read-data", "--detailed")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out
        assert "DAMAGED: 1 object(s)" in _row(proc.stdout, name), out
        assert pack.name in proc.stdout and pack.name in proc.stderr, out
        # --detailed: the pack, what is wrong, the backups it breaks and the repair
        detail = proc.stdout[proc.stdout.index("damaged objects") :]
        assert pack.name in detail and "repo repair packs" in detail, detail
        assert first in detail and second in detail, detail
        assert re.search(rf"{first}\s.*DAMAGED: .*{pack.name}", proc.stdout), proc.stdout

        # recorded like a scheduled verify: a failed result for the dataset, and the alert
        (rec, ok) = await f.catalog.list_maintenance(kind="verify", limit=2)
        assert (rec.dataset, rec.outcome, ok.outcome) == (name, "failed", "passed")
        assert pack.name in rec.summary

        async def alert() -> list[str]:
            return [a.summary for a in f.coordinator.alerter.firing() if a.rule == "verify_failed"]

        assert await eventually("verify_failed", alert) == [
            f"verify of target t holding {name} failed"
        ]
        (audited, _) = await f.catalog.list_audit(action="verify_requested")
        assert audited.dataset == name and audited.job_id == rec.job_id


async def test_verify_one_backup_and_a_share_of_the_packs(nats_url: str, tmp_path: Path) -> None:
    spec = {"web": ("a", make_tree(tmp_path / "src", big_mib=3))}
    async with fleet(nats_url, tmp_path, spec, pack_size=1 << 16) as f:
        older, newer = await _backup(f, "web"), await _backup(f, "web")
        proc = await f.cli("verify", newer, "--detailed")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "passed: 1 backup(s)" in _row(proc.stdout, newer), proc.stdout
        assert re.search(rf"{newer}\s.*ok", proc.stdout) and older not in proc.stdout

        proc = await f.cli("verify", newer, "--read-data", "--subset", "1%")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        m = re.search(r"(\d+)/(\d+) packs read", proc.stdout)
        assert m is not None, proc.stdout
        read, total = int(m.group(1)), int(m.group(2))
        assert total > 1 and read == math.ceil(total / 100), proc.stdout

        proc = await f.cli("verify", "no-such-backup")
        assert proc.returncode == 1 and "no backup 'no-such-backup'" in proc.stderr
        proc = await f.cli("verify", newer, "--subset", "5%")
        assert proc.returncode == 1 and "--subset needs --read-data" in proc.stderr


async def test_verify_all_checks_every_dataset_on_its_own_agent(
    nats_url: str, tmp_path: Path
) -> None:
    spec = {
        "one": ("a", make_tree(tmp_path / "s1", big_mib=1)),
        "two": ("b", make_tree(tmp_path / "s2", big_mib=1)),
    }
    async with fleet(nats_url, tmp_path, spec) as f:
        await _backup(f, "one")
        await _backup(f, "two")
        proc = await f.cli("verify", "--all", "--read-data")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "verify of 2 job(s)" in proc.stdout
        for short, agent in (("one", "a"), ("two", "b")):
            row = _row(proc.stdout, f.datasets[short])
            assert "passed" in row and f.agents[agent].name in row, proc.stdout

        pack = flip_byte_in_a_pack(f.repos["b"])
        proc = await f.cli("verify", "--all", "--read-data")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "passed" in _row(proc.stdout, f.datasets["one"])
        assert "DAMAGED" in _row(proc.stdout, f.datasets["two"])
        assert f"1 of 2 failed: {f.datasets['two']}" in proc.stderr
        assert pack.name in proc.stderr
