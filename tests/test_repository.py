"""The repository format round-trips arbitrary data and authenticates everything."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.format import spec as fmt
from engine.format.crypto import Keyring, open_sealed, seal
from engine.repository import Repository, WriteOptions
from engine.storage.local import LocalTarget

KEYS = Keyring({b"k" * 8: bytes(32)}, b"k" * 8, bytes(range(32)))


@given(st.binary(max_size=5000), st.sampled_from([None, 1, 3, 19]))
def test_seal_open_round_trip(payload: bytes, level: int | None) -> None:
    sealed = seal(KEYS, fmt.OT_DATA, b"id", payload, zstd_level=level)
    assert open_sealed(KEYS, b"id", sealed, "x") == (fmt.OT_DATA, payload)


def test_compression_skipped_when_it_does_not_pay() -> None:
    import os

    rnd = os.urandom(100_000)
    assert len(seal(KEYS, fmt.OT_DATA, b"i", rnd)) == len(rnd) + fmt.OVERHEAD
    assert len(seal(KEYS, fmt.OT_DATA, b"i", b"a" * 100_000)) < 1000


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blobs=st.lists(st.binary(min_size=0, max_size=300_000), min_size=1, max_size=8))
def test_blobs_round_trip_through_packs(tmp_path: Path, blobs: list[bytes]) -> None:
    async def run() -> None:
        import uuid

        target = LocalTarget("t", tmp_path / uuid.uuid4().hex)
        repo = await Repository.open(
            target, bytes(32), create=True, options=WriteOptions(pack_size=1 << 18)
        )
        ids = []
        for b in blobs:
            blob_id, sealed = repo.prepare_blob(fmt.OT_DATA, b)
            if sealed is not None:
                await repo.add_sealed(fmt.OT_DATA, blob_id, sealed, len(b))
            ids.append(blob_id)
        await repo.write_index()
        reopened = await Repository.open(target, bytes(32))
        assert [await reopened.read_blob(i) for i in ids] == blobs

    asyncio.run(run())


def test_two_writers_initialising_one_repository_agree(tmp_path: Path) -> None:
    """Two agents that find an empty target at the same moment end up with one
    repository (one chunk-id key), so their chunks deduplicate and restore."""

    async def run() -> None:
        repos: list[Repository] = []

        async def writer() -> None:
            repos.append(await Repository.open(LocalTarget("t", tmp_path), bytes(32), create=True))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(writer)
        assert len({r.config.repository_id for r in repos}) == 1
        assert len({r.config.chunk_id_key for r in repos}) == 1
        for i, repo in enumerate(repos):
            blob_id, sealed = repo.prepare_blob(fmt.OT_DATA, b"same data")
            if sealed is not None:
                await repo.add_sealed(fmt.OT_DATA, blob_id, sealed, 9)
            await repo.write_index()
            assert blob_id == repos[0].keys.chunk_id(b"same data"), i
        fresh = await Repository.open(LocalTarget("t", tmp_path), bytes(32))
        assert await fresh.read_blob(repos[0].keys.chunk_id(b"same data")) == b"same data"

    anyio.run(run)
