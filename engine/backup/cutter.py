"""Content-defined cuts of files for the backup reader: FastCDC through one buffer.

Two ways in: :meth:`Cutter.cut_file` reads a file front to back; :meth:`Cutter.cut_sparse`
reads only the data regions of a sparse file (SEEK_DATA/SEEK_HOLE) and gives the very
same cuts, so a sparse file and a dense copy of it deduplicate (tests/test_sparse.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from io import RawIOBase

from pyfastcdc import FastCDC

from engine.backup.walk import file_region


class Cutter:
    """FastCDC over files through one buffer reused for the whole backup.

    pyfastcdc's ``cut_stream`` allocates and zero-fills a fresh buffer of twice the
    largest chunk (8 MiB) for every file: on a tree of small files that was half of the
    reader thread's time (py-spy). The cuts are the same as ``cut_stream``'s: a chunk is
    cut only when ``max_size`` bytes from its start are in the buffer, or at end of
    file. A yielded view is valid until the next one is asked for.
    """

    def __init__(self, fastcdc: FastCDC) -> None:
        self.fastcdc = fastcdc
        self._max = fastcdc.max_size
        self._buf = bytearray(2 * self._max)
        self._view = memoryview(self._buf)
        self._zeros: memoryview | None = None
        self._zero_chunk: memoryview | None = None

    def zero_chunk(self) -> memoryview:
        """The chunk that FastCDC cuts first from ``max_size`` zeros: every chunk that
        starts at least ``max_size`` bytes before the end of a hole is this one."""
        if self._zero_chunk is None:
            self._zeros = memoryview(bytes(len(self._buf)))
            first = next(iter(self.fastcdc.cut_buf(self._zeros[: self._max])))
            self._zero_chunk = self._zeros[: first.length]
        return self._zero_chunk

    def cut_sparse(self, f: RawIOBase) -> Iterator[memoryview]:
        """The cuts of :meth:`cut_file`, reading only the data regions of ``f``.

        A FastCDC cut depends only on the ``max_size`` bytes from the chunk's start (the
        rolling hash starts afresh per chunk), so a chunk starting ``max_size`` or more
        before a hole's end is always :meth:`zero_chunk`: those are yielded (as that
        very object, so the caller can reuse its id) without filling or scanning."""
        zchunk = self.zero_chunk()
        zeros, zlen = self._zeros, len(zchunk)
        assert zeros is not None
        fd = f.fileno()
        view, cap, most = self._view, len(self._buf), self._max
        base = end = 0  # file offset of view[0]; bytes in the buffer
        eof = False
        while True:
            while not eof and end < cap:
                pos = base + end
                hole, until = file_region(fd, pos)
                n = min(cap - end, until - pos)
                if hole:
                    view[end : end + n] = zeros[:n]
                else:
                    n = os.preadv(fd, [view[end : end + n]], pos)
                    eof = n == 0
                end += n
            start = 0
            for ch in self.fastcdc.cut_buf(view[:end]):
                if not eof and end - start < most:
                    break
                start += ch.length
                yield ch.data
            if eof:
                return
            base += start
            hole, until = file_region(fd, base)
            if hole and until - base >= most:
                runs = (until - base - most) // zlen + 1
                for _ in range(runs):
                    yield zchunk
                base, end = base + runs * zlen, 0  # refill from past the run
                continue
            self._buf[: end - start] = view[start:end]
            end -= start

    def cut_file(self, f: RawIOBase) -> Iterator[memoryview]:
        view, cap, most = self._view, len(self._buf), self._max
        end, eof = 0, False
        while True:
            while not eof and end < cap:
                n = f.readinto(view[end:])
                if n:
                    end += n
                else:
                    eof = True
            start = 0
            for ch in self.fastcdc.cut_buf(view[:end]):
                if not eof and end - start < most:
                    break  # this cut could move once more of the file is read
                start += ch.length
                yield ch.data
            if eof:
                return
            self._buf[: end - start] = view[start:end]  # memmove of the tail (< max_size)
            end -= start
