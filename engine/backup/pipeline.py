"""The parallel write pipeline: reader thread → sealer threads → packer → uploads.

::

    reader (1 thread)      read files in walk order, FastCDC, keyed BLAKE3, claim new ids
       │  batches of new chunks (≤ READ_BATCH_BYTES), bounded stream
    sealers (N threads)    zstd + AES-GCM (zstd releases the GIL, so N cores work)
       │  sealed batches, bounded stream
    packer (event loop)    fill packs; a full pack is hashed and handed to an upload
    uploads (≤ UPLOADS)    concurrent PUTs; blobs enter the index only after their PUT

Every stage is joined by a bounded memory stream, so a slow target slows the reader
instead of filling memory. Peak memory of the pipeline is about
``(QUEUE + 2·SEALERS + 2) · (READ_BATCH_BYTES + max chunk) + (UPLOADS + 1) · pack_size``
plus the reader's one reused buffer of 2 · max chunk (engine.backup.cutter.Cutter) — with the
defaults roughly 72 + 40 MiB, whatever the size of the data.

When one stage fails, the others fail as a consequence: a sealer sending to the packer
that has stopped gets ``BrokenResourceError``, the reader's ``emit`` likewise, the rest
are cancelled. Which of them anyio lists first depends on timing (a full target showed
a ``BrokenResourceError`` traceback in 6 of 16 runs), so :func:`_stages` raises the
root cause: the first error that is not such a consequence.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup

from engine.format import spec as fmt
from engine.repository import Repository, SealedPack
from shared.tasks import first_error, task_group

READ_BATCH_BYTES = 1 << 20
QUEUE = 2
UPLOADS = 2
SEALERS = max(1, min(4, os.cpu_count() or 1))

Plain = list[tuple[bytes, bytes]]  # (chunk id, plaintext) of claimed new chunks
Sealed = list[tuple[bytes, bytes, int]]  # (chunk id, sealed blob, plaintext length)
R = TypeVar("R")


def _seal_batch(repo: Repository, batch: Plain) -> Sealed:
    """Seal a batch, dropping each plaintext as soon as it is sealed (halves the peak)."""
    out: Sealed = []
    batch.reverse()
    while batch:
        bid, data = batch.pop()
        out.append((bid, repo.seal_blob(fmt.OT_DATA, bid, data), len(data)))
        del data
    return out


async def _sealer(
    repo: Repository, recv: ObjectReceiveStream[Plain], send: ObjectSendStream[Sealed]
) -> None:
    async with recv, send:
        async for batch in recv:
            await send.send(await anyio.to_thread.run_sync(_seal_batch, repo, batch))


async def _upload(repo: Repository, pack: SealedPack, slots: anyio.Semaphore) -> None:
    try:
        await repo.upload_pack(pack)
    finally:
        slots.release()


async def _packer(repo: Repository, recv: ObjectReceiveStream[Sealed]) -> None:
    slots = anyio.Semaphore(UPLOADS)
    async with task_group() as uploads, recv:
        async for batch in recv:
            for bid, blob, n in batch:
                await repo.add_sealed(fmt.OT_DATA, bid, blob, n, reserved=True, flush=False)
                if repo.pack_full():
                    pack = await anyio.to_thread.run_sync(repo.take_pack)
                    if pack is not None:
                        await slots.acquire()
                        uploads.start_soon(_upload, repo, pack, slots)


Emit = Callable[[Plain], None]

# What a stage raises when a stage it talks to has stopped: never the root cause.
_CONSEQUENCES = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


def root_cause(exc: BaseException) -> BaseException:
    """The error that stopped the pipeline, from anyio's (nested) exception group: the
    first leaf that is neither a cancellation nor a closed-stream consequence of it."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []

    def collect(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                collect(inner)
        else:
            leaves.append(e)

    collect(exc)
    cancel = anyio.get_cancelled_exc_class()
    for leaf in leaves:
        if not isinstance(leaf, (cancel, *_CONSEQUENCES)):
            return leaf
    return first_error(exc)


@asynccontextmanager
async def _stages() -> AsyncIterator[TaskGroup]:
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as eg:
        cause = root_cause(eg)
        raise cause from cause.__cause__


async def run_pipeline(repo: Repository, reader: Callable[[Emit], R]) -> R:
    """Run ``reader(emit)`` in a worker thread; everything it emits is sealed, packed
    and uploaded. Returns the reader's result once every pack it caused is stored (the
    last, partly filled pack stays open for the caller's ``write_index``)."""
    send_plain, recv_plain = anyio.create_memory_object_stream[Plain](QUEUE)
    send_sealed, recv_sealed = anyio.create_memory_object_stream[Sealed](QUEUE)
    async with _stages() as tg:
        async with recv_plain, send_sealed:
            for _ in range(SEALERS):
                tg.start_soon(_sealer, repo, recv_plain.clone(), send_sealed.clone())
        tg.start_soon(_packer, repo, recv_sealed)

        def emit(batch: Plain) -> None:
            if batch:
                anyio.from_thread.run(send_plain.send, batch)

        async with send_plain:
            result = await anyio.to_thread.run_sync(reader, emit)
    return result
