"""The compact chunk index: behaves like a mapping and stays under 64 bytes per chunk."""

from __future__ import annotations

import os
import random
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from engine.index import ChunkIndex, IndexEntry


def _entry(i: int) -> IndexEntry:
    return IndexEntry(bytes([i % 7]) * 32, i * 10, 100 + i, 1, 200 + i)


@given(
    st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 10**6)), max_size=300)
)
def test_behaves_like_a_dict(ops: list[tuple[bytes, int]]) -> None:
    idx, ref = ChunkIndex(), {}
    for n, (cid, i) in enumerate(ops):
        idx[cid] = ref[cid] = _entry(i)
        if n % 50 == 49:
            idx.compact()
    for cid, e in ref.items():
        assert idx.get(cid) == e and cid in idx
    assert len(idx) == len(ref)
    assert dict(idx.items()) == ref
    assert idx.get(os.urandom(32)) is None


def test_memory_per_chunk() -> None:
    rnd = random.Random(1)
    n = 100_000
    packs = [rnd.randbytes(32) for _ in range(n // 8)]  # ~8 chunks per pack
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    idx = ChunkIndex()
    for i in range(n):
        idx[rnd.randbytes(32)] = IndexEntry(packs[i // 8], i, 1000, 1, 1 << 20)
    packs.clear()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_chunk = (after - before) / n
    print(f"index memory: {per_chunk:.1f} bytes per chunk over {n:,} chunks")
    assert per_chunk <= 64
