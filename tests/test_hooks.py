"""Hooks: pre/post commands from the agent's config, with time limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from mosaic import operator
from shared.config.agent import HookConfig
from shared.config.targets import LocalTargetConfig
from shared.wire.events import BackupCompleted
from tests.harness import make_tree, running_stack

QUIET = Console(quiet=True)


async def test_pre_and_post_hooks_run_around_the_backup(nats_url: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    log = tmp_path / "hooks.log"
    hooks = HookConfig(
        pre=[f"echo pre $MOSAIC_DATASET >> {log}", f"echo dumped > {src}/from-pre-hook.txt"],
        post=[f"echo post $MOSAIC_RESULT >> {log}"],
    )
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), src, hooks=hooks
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted)
        assert done.summary.files == 8  # the pre-hook's file is in the backup
        assert log.read_text().split("\n")[:2] == [f"pre {st.dataset}", "post success"]


async def test_failing_pre_hook_fails_the_job_with_its_stderr(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    log = tmp_path / "hooks.log"
    hooks = HookConfig(
        pre=["echo 'database is locked' >&2; exit 3"], post=[f"echo post $MOSAIC_RESULT >> {log}"]
    )
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), src, hooks=hooks
    ) as st:
        with pytest.raises(operator.OperatorError) as exc:
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
    assert "pre-hook" in str(exc.value) and "exit 3" in str(exc.value)
    assert "database is locked" in str(exc.value)
    assert not log.exists()  # no backup started, so no post-hook
    assert not (tmp_path / "r" / "manifests").exists()


async def test_hook_over_its_time_limit_is_killed(nats_url: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    hooks = HookConfig(pre=["sleep 30"], timeout_s=0.5)
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), src, hooks=hooks
    ) as st:
        with pytest.raises(operator.OperatorError, match=r"did not finish within 0\.5s"):
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
