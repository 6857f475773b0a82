"""install-systemd writes units that systemd itself accepts, with the strategy's timers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.harness import cli


def _verify(files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=files[0].parent,
    )


def test_agent_and_coordinator_units_pass_systemd_analyze(tmp_path: Path) -> None:
    out = tmp_path / "units"
    proc = cli(
        "install-systemd",
        "--dir",
        str(out),
        "--agent-config",
        "/etc/mb/agent.toml",
        "--coordinator-config",
        "/etc/mb/coordinator.toml",
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [
        "mosaic-backup-agent.service",
        "mosaic-backup-coordinator.service",
    ]
    check = _verify(files)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    assert "agent run --config /etc/mb/agent.toml" in files[0].read_text()
    assert "DynamicUser=yes" in files[1].read_text()


def test_single_host_timers_follow_the_strategy(tmp_path: Path) -> None:
    out = tmp_path / "units"
    proc = cli(
        "install-systemd",
        "--dir",
        str(out),
        "--agent-config",
        "/etc/mb/agent.toml",
        "--single-host",
        "/srv/data",
        "/etc",
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    assert len(files) == 6
    check = _verify(files)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    monthly = (out / "mosaic-backup-monthly.timer").read_text()
    calendar = next(
        line.split("=", 1)[1] for line in monthly.splitlines() if line.startswith("OnCalendar=")
    )
    nxt = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=3", calendar],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    elapses = re.findall(r"(?:Next elapse|Iter\. #\d+): (\w{3}) \d{4}-\d{2}-(\d{2})", nxt)
    assert len(elapses) == 3
    assert all(day == "Sun" and 1 <= int(dom) <= 7 for day, dom in elapses)  # first Sundays
    daily = (out / "mosaic-backup-daily.service").read_text()
    assert daily.count("repo backup --config /etc/mb/agent.toml --type incremental") == 2


def test_existing_units_are_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "units"
    out.mkdir()
    (out / "mosaic-backup-agent.service").write_text("mine")
    proc = cli("install-systemd", "--dir", str(out), "--agent-config", "/etc/a.toml")
    assert proc.returncode == 1 and "--force" in proc.stderr
    assert (out / "mosaic-backup-agent.service").read_text() == "mine"


@pytest.mark.parametrize("args", [["--single-host", "/srv"], []])
def test_bad_arguments_are_one_line(tmp_path: Path, args: list[str]) -> None:
    proc = cli("install-systemd", "--dir", str(tmp_path), *args)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
