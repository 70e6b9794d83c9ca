"""Reading a whole Source for ``pack``, in blocks of rows, in parallel processes, in row order.

# NOTE [ packing a source ]
``pack(path, source)`` writes every row of ``source``, in order. A source whose reads are
expensive (a FileSource decodes every file) is read by ``workers`` processes: each is handed
the source once, when it starts (it pickles small: paths, not pixels), then a block of rows at
a time, and the blocks come back in order, at most two per worker in flight, so memory stays
bounded however large the source. The processes start with this interpreter's default method
(fork on Linux up to Python 3.13), so a FileSource's ``load`` function must be picklable where
that method is spawn or forkserver. A source of cheap reads (arrays, a memory map) is copied in
this process: a second process would only add a pickle of every block.

Example:
    >>> import numpy as np
    >>> from kseq.sources import ArraySource
    >>> [len(b["x"]) for b in source_batches(ArraySource({"x": np.zeros((600, 1024))}), workers=0)]
    [256, 256, 88]
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from kseq.sources.base import Source, cheap_row_reads
from kseq.validators import integer

__all__ = ["source_batches"]

_BLOCK_BYTES = 4 << 20  # bytes of one block of rows handed to a worker
_MAX_BLOCK_ROWS = 256
_IN_FLIGHT = 2  # blocks per worker submitted ahead of the writer

_worker_source: Source | None = None  # the source of this pack worker process (set once, when it starts)


def source_batches(source: Source, workers: int | None) -> Iterator[dict[str, np.ndarray]]:
    """Every row of ``source`` as ``{field: array}`` blocks, in order; read by ``workers`` processes."""
    n = len(source)
    rows = _block_rows(source)
    blocks = [(start, min(start + rows, n)) for start in range(0, n, rows)]
    if workers is None:
        workers = 0 if cheap_row_reads(source) else min(os.cpu_count() or 1, len(blocks))
    workers = integer(workers, "workers", minimum=0, fix="It is the number of processes; 0 reads in this process.")
    if workers == 0:
        for start, stop in blocks:
            yield source.read(np.arange(start, stop))
        return
    context = multiprocessing.get_context()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(source,)) as pool:
        pending: deque[Future] = deque()
        queue = iter(blocks)
        for block in queue:
            pending.append(pool.submit(_read_block, *block))
            if len(pending) >= _IN_FLIGHT * workers:
                break
        while pending:
            yield pending.popleft().result()
            following = next(queue, None)
            if following is not None:
                pending.append(pool.submit(_read_block, *following))


def _block_rows(source: Source) -> int:
    row_bytes = sum(max(1, math.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in source.fields.values())
    return max(1, min(_MAX_BLOCK_ROWS, _BLOCK_BYTES // max(1, row_bytes)))


def _start(source: Source) -> None:
    global _worker_source
    _worker_source = source


def _read_block(start: int, stop: int) -> dict[str, np.ndarray]:
    assert _worker_source is not None
    return _worker_source.read(np.arange(start, stop))
