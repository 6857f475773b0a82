"""Every job kind on the wire has exactly one handler on the agent."""

from __future__ import annotations

import typing

import pytest

from agent.jobs.context import JobContext
from agent.jobs.table import HANDLERS, run_job
from shared.errors import ConfigError
from shared.wire.jobs import Job


def test_every_job_type_has_a_handler() -> None:
    assert set(HANDLERS) == set(typing.get_args(Job))


async def test_an_unknown_job_type_is_refused_before_anything_runs() -> None:
    def no_target(name: str) -> typing.NoReturn:
        raise ConfigError(f"no target {name}")

    async def no_open(*_: object, **__: object) -> typing.NoReturn:
        raise AssertionError("nothing may be opened for an unknown job")

    ctx = JobContext(agent="a", target=no_target, open=no_open)
    with pytest.raises(TypeError):
        await run_job(ctx, object())  # type: ignore[arg-type]
