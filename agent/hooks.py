"""Pre and post commands around a backup, with a time limit each (see HookConfig)."""

from __future__ import annotations

import logging
import os
import subprocess

import anyio

from shared.config.agent import HookConfig
from shared.errors import SourceError

log = logging.getLogger(__name__)
STDERR_TAIL = 2000


async def run_hook(command: str, timeout: float, what: str, env: dict[str, str]) -> None:
    """Run one shell command; SourceError with its stderr tail if it fails or overruns."""
    try:
        with anyio.fail_after(timeout):
            result = await anyio.run_process(
                ["/bin/sh", "-c", command],
                check=False,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
            )
    except TimeoutError:
        raise SourceError(
            f"{what} {command!r} did not finish within {timeout:g}s (killed)"
        ) from None
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip()[-STDERR_TAIL:].replace("\n", " | ")
        raise SourceError(
            f"{what} {command!r} failed (exit {result.returncode}): {tail or 'no error output'}"
        )


async def run_pre(hooks: HookConfig, dataset: str) -> None:
    for command in hooks.pre:
        await run_hook(command, hooks.timeout_s, "pre-hook", {"MOSAIC_DATASET": dataset})


async def run_post(hooks: HookConfig, dataset: str, ok: bool) -> None:
    env = {"MOSAIC_DATASET": dataset, "MOSAIC_RESULT": "success" if ok else "failure"}
    for command in hooks.post:
        try:
            await run_hook(command, hooks.timeout_s, "post-hook", env)
        except SourceError as exc:
            log.warning("%s", exc)
