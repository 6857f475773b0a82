"""The in-memory chunk index: chunk id → (pack, offset, length, type, plaintext length).

A dict of tuples costs ~300 bytes per chunk in CPython; at 1 MiB chunks that is
~300 MiB of RAM per TiB of unique data. This index keeps ≤ 64 bytes per chunk:

- the bulk lives in one ``bytearray`` of fixed 49-byte records sorted by id
  (id 32 | pack number u32 | offset u32 | sealed length u32 | plaintext length u32 |
  type u8), searched by bisection;
- pack ids (32 bytes each) are stored once per pack in a ``bytearray``, records refer
  to them by number (the id → number dict only covers packs added since the last merge);
- new entries go to a small dict of packed values first, merged into the sorted array
  when the dict reaches 1/32 of the array (so its share stays ≤ ~6 bytes per chunk).

Measured by ``tests/test_index.py::test_memory_per_chunk`` with ``tracemalloc`` over one
million random entries (the test asserts the bound; the figure is in docs/benchmark.md).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple, overload

_REC = struct.Struct("<32sIIIIB")
_VAL = struct.Struct("<IIIIB")
REC_SIZE = _REC.size  # 49
_MIN_OVERLAY = 4096


class IndexEntry(NamedTuple):
    pack_id: bytes
    offset: int
    length: int  # sealed length in the pack
    otype: int
    raw_length: int  # plaintext length


class _Ids(Sequence[bytes]):
    """The sorted ids of the record array, as a sequence for :mod:`bisect`."""

    def __init__(self, buf: bytearray) -> None:
        self._buf = buf

    def __len__(self) -> int:
        return len(self._buf) // REC_SIZE

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            raise TypeError("slicing is not supported")
        o = i * REC_SIZE
        return bytes(self._buf[o : o + 32])


class ChunkIndex:
    def __init__(self) -> None:
        self._base = bytearray()
        self._overlay: dict[bytes, bytes] = {}  # id → packed value (_VAL)
        self._packs = bytearray()  # 32 bytes per pack number
        self._pack_no: dict[bytes, int] = {}  # only packs added since the last merge

    # --- mapping interface -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._base) // REC_SIZE + sum(1 for k in self._overlay if self._find(k) is None)

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, bytes) and self.get(chunk_id) is not None

    def get(self, chunk_id: bytes) -> IndexEntry | None:
        hit = self._overlay.get(chunk_id)
        if hit is not None:
            return self._entry(*_VAL.unpack(hit))
        pos = self._find(chunk_id)
        if pos is None:
            return None
        return self._entry(*_REC.unpack_from(self._base, pos * REC_SIZE)[1:])

    def _entry(self, pack_no: int, offset: int, length: int, raw: int, otype: int) -> IndexEntry:
        pack_id = bytes(self._packs[pack_no * 32 : pack_no * 32 + 32])
        return IndexEntry(pack_id, offset, length, otype, raw)

    def __getitem__(self, chunk_id: bytes) -> IndexEntry:
        e = self.get(chunk_id)
        if e is None:
            raise KeyError(chunk_id.hex())
        return e

    def __setitem__(self, chunk_id: bytes, entry: IndexEntry) -> None:
        no = self._pack_number(entry.pack_id)
        self._overlay[chunk_id] = _VAL.pack(
            no, entry.offset, entry.length, entry.raw_length, entry.otype
        )
        if len(self._overlay) >= max(_MIN_OVERLAY, len(self._base) // REC_SIZE // 32):
            self.compact()

    def items(self) -> Iterator[tuple[bytes, IndexEntry]]:
        for cid, val in list(self._overlay.items()):
            yield cid, self._entry(*_VAL.unpack(val))
        for i in range(len(self._base) // REC_SIZE):
            cid, *rest = _REC.unpack_from(self._base, i * REC_SIZE)
            if cid not in self._overlay:
                yield cid, self._entry(*rest)

    def pack_ids(self) -> set[bytes]:
        """Every pack an entry was ever added for (a superset of the packs in use)."""
        packs = self._packs
        return {bytes(packs[i : i + 32]) for i in range(0, len(packs), 32)}

    # --- internals -------------------------------------------------------------------

    def _pack_number(self, pack_id: bytes) -> int:
        n = self._pack_no.get(pack_id)
        if n is None:
            n = self._pack_no[pack_id] = len(self._packs) // 32
            self._packs += pack_id
        return n

    def _find(self, chunk_id: bytes) -> int | None:
        ids = _Ids(self._base)
        pos = bisect.bisect_left(ids, chunk_id)
        if pos < len(ids) and ids[pos] == chunk_id:
            return pos
        return None

    def compact(self) -> None:
        """Merge the overlay into the sorted array (entries in the overlay win)."""
        if not self._overlay:
            return
        new = sorted(cid + val for cid, val in self._overlay.items())
        old = self._base
        out = bytearray()
        i, n_old = 0, len(old) // REC_SIZE
        for rec in new:
            key = rec[:32]
            # copy the run of old records that sort before this one, in one slice
            j = bisect.bisect_left(_Ids(old), key, lo=i)
            out += old[i * REC_SIZE : j * REC_SIZE]
            i = j + 1 if j < n_old and old[j * REC_SIZE : j * REC_SIZE + 32] == key else j
            out += rec
        out += old[i * REC_SIZE :]
        self._base = out
        self._overlay = {}
        self._pack_no = {}  # a pack seen again later just gets a second number

    def memory_bytes(self) -> int:
        """Approximate bytes held (records, overlay, pack table), for reporting."""
        import sys

        overlay = sys.getsizeof(self._overlay) + sum(
            sys.getsizeof(k) + sys.getsizeof(v) for k, v in self._overlay.items()
        )
        packs = (
            sys.getsizeof(self._packs)
            + sys.getsizeof(self._pack_no)
            + 2 * sum(sys.getsizeof(p) for p in self._packs)
        )
        return len(self._base) + overlay + packs
