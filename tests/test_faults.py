"""The short CI version of bench/faults.py: every fault scenario once or twice, each
scored like the bench (survived, detected, lost, doubled). The full table, with 20 tries
of the kills, is `.venv/bin/python bench/faults.py` (docs/benchmark.md, "Faults")."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import faults, faults_net


@pytest.mark.parametrize(
    ("scenario", "tries"),
    [
        (faults.backup_kill, 2),
        (faults.prune_kill, 2),
        (faults.prune_takeover, 1),
        (faults.two_writers, 1),
        (faults.full_target, 1),
        (faults_net.s3_resets, 1),
        (faults_net.nats_kill, 1),
    ],
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_fault_scenario(tmp_path: Path, scenario: faults.Scenario, tries: int) -> None:
    tally = scenario(tmp_path, tries)
    print(f"\n{tally.row()}\n" + "\n".join(tally.notes))
    assert tally.tries == tries
    assert tally.lost == 0 and tally.doubled == 0, tally.notes
    assert tally.survived + tally.detected == tries, tally.notes
