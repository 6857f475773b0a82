"""Task groups that raise the error that happened, not an ExceptionGroup around it.

When one stage of a pipeline fails, its siblings are cancelled and anyio reports an
ExceptionGroup. Callers (and users) want the one real error: "pack 3f2a… failed
authentication", not a group. The other leaves are cancellations caused by it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of nested exception groups that is not a cancellation."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [first_error(e) for e in exc.exceptions]
        cancel = anyio.get_cancelled_exc_class()
        real = [e for e in leaves if not isinstance(e, cancel)]
        return (real or leaves)[0]
    return exc


@asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as eg:
        raise first_error(eg) from None
