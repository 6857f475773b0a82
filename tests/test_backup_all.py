"""``mosaic-backup backup --all`` and ``--host``: one job per dataset through the
coordinator, followed to the end, a summary table, exit 1 when any failed. Real NATS,
a real coordinator and two real agents; the CLI is a real process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mosaic import fleet as fleet_module
from shared.wire.status import StatusReply
from tests.fixtures.fleet_stack import eventually, fleet
from tests.harness import make_tree


def _row(text: str, dataset: str) -> str:
    """The summary table's line for ``dataset``."""
    lines = [line for line in text.splitlines() if f" {dataset} " in line]
    assert len(lines) == 1, text
    return lines[0]


async def test_backup_all_backs_up_every_dataset_and_prints_one_row_each(
    nats_url: str, tmp_path: Path
) -> None:
    srcs = {n: make_tree(tmp_path / f"src-{n}", big_mib=1) for n in ("one", "two")}
    spec = {"one": ("a", srcs["one"]), "two": ("b", srcs["two"])}
    async with fleet(nats_url, tmp_path, spec) as f:
        proc = await f.cli("backup", "--all", "--type", "full", "--wait")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "backup of 2 dataset(s)" in proc.stdout
        for short, agent in (("one", "a"), ("two", "b")):
            name = f.datasets[short]
            row = _row(proc.stdout, name)
            assert f.agents[agent].name in row and "ok:" in row, proc.stdout
            assert re.search(r"\d+\.\d\d s", row) and "MiB" in row, row  # duration, bytes
            # the catalog holds the backup the row names, by that dataset's agent
            (b,) = await f.catalog.list_backups(dataset=name)
            assert b.backup_id in row and b.agent == f.agents[agent].name


async def test_one_failing_source_makes_the_exit_code_nonzero_and_is_named(
    nats_url: str, tmp_path: Path
) -> None:
    good = make_tree(tmp_path / "src-good", big_mib=1)
    spec = {"good": ("a", good), "gone": ("b", tmp_path / "no-such-folder")}
    async with fleet(nats_url, tmp_path, spec) as f:
        proc = await f.cli("backup", "--all", "--timeout", "120")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out
        assert "ok:" in _row(proc.stdout, f.datasets["good"])
        assert "FAILED" in _row(proc.stdout, f.datasets["gone"]), out
        assert f"1 of 2 failed: {f.datasets['gone']}" in proc.stderr, out
        assert "no-such-folder" in proc.stderr, out  # the agent's reason, in full
        assert await f.catalog.list_backups(dataset=f.datasets["gone"]) == []
        assert len(await f.catalog.list_backups(dataset=f.datasets["good"])) == 1


async def test_backup_host_picks_the_datasets_of_one_agent_or_host_name(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {
        "one": ("a", make_tree(tmp_path / "s1", big_mib=1)),
        "two": ("a", make_tree(tmp_path / "s2", big_mib=1)),
        "three": ("b", make_tree(tmp_path / "s3", big_mib=1)),
    }
    async with fleet(nats_url, tmp_path, spec) as f:
        proc = await f.cli("backup", "--host", f.agents["a"].name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "backup of 2 dataset(s)" in proc.stdout
        assert f.datasets["one"] in proc.stdout and f.datasets["two"] in proc.stdout
        assert f.datasets["three"] not in proc.stdout
        assert await f.catalog.list_backups(dataset=f.datasets["three"]) == []

        # the host name the agents report in their heartbeats (both run on this host)
        async def hostname() -> str | None:
            st = await f.coordinator.status()
            assert isinstance(st, StatusReply)
            found = {a.agent: a.hostname for a in st.agents if a.hostname}
            return found.get(f.agents["b"].name)

        host = await eventually("agent b's heartbeat", hostname)
        # the list is read page by page: with one dataset a page, all three still come
        monkeypatch.setattr(fleet_module, "PAGE", 1)
        listed, _ = await fleet_module.all_datasets(f.bus)
        assert [d.dataset for d in listed] == sorted(f.datasets.values())
        proc = await f.cli("backup", "--host", host, "--no-wait")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "backup of 3 dataset(s) (sent, not followed)" in proc.stdout
        proc = await f.cli("backup", "--host", "no-such-host")
        assert proc.returncode == 1
        assert "--host no-such-host: no dataset" in proc.stderr, proc.stderr
