"""shard=: rows read and batches/s per process, for 1 and 2 real processes over one HDF5 file.

Each process iterates every batch of one epoch of its shard (``Dataset(path, shard=(p, n))``)
at the same time as the others, counting the rows its source reads. The baseline is one
process reading the whole dataset. With 2 processes each reads half the rows, in batches of
half the global batch: per process, the rate of global batches should hold while the rows read
halve. Each figure is repeated 3 times (fresh processes each time); the spread is shown.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from benchmarks.common import Result
from kseq.datasets import Dataset
from kseq.sources import HDF5Source


class CountingSource(HDF5Source):
    """An HDF5Source that counts the rows it reads."""

    rows_read = 0

    def read(self, indices, fields=None):
        self.rows_read += len(indices)
        return super().read(indices, fields)


def _epoch(path: str, shard: tuple[int, int], batch_size: int, start: object) -> tuple[float, int]:
    source = CountingSource(path)
    ds = Dataset(source, batch_size=batch_size, seed=0, shard=shard)
    ds.get_batch(0)  # open the file, map it
    source.rows_read = 0
    start.wait()  # every process starts its epoch together
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds.get_batch(i, 1)
    return len(ds) / (time.perf_counter() - t0), source.rows_read


def _run(path: str, count: int, batch_size: int) -> list[tuple[float, int]]:
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        start = manager.Barrier(count)
        with ctx.Pool(count) as pool:
            jobs = [pool.apply_async(_epoch, (path, (p, count), batch_size, start)) for p in range(count)]
            return [job.get(timeout=300) for job in jobs]


def run(quick: bool = False) -> list[Result]:
    rows, width, batch_size = (20_000, 256, 256) if quick else (100_000, 1024, 256)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "shard.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.random.default_rng(0).random((rows, width), dtype=np.float32))
        measured: dict[int, list[list[tuple[float, int]]]] = {1: [], 2: []}
        for _ in range(3):
            for count in (1, 2):  # in turns
                measured[count].append(_run(path, count, batch_size))
    results = []
    one = [r[0][0] for r in measured[1]]
    for count, runs in measured.items():
        rates = [min(rate for rate, _ in run) for run in runs]  # the slowest process sets a collective's pace
        read = max(r for _, r in runs[0])  # the process that reads most
        spread = f"{min(rates):.0f}-{max(rates):.0f}"
        results.append(Result("shard", f"{count} process(es): slowest process, spread {spread}", max(rates),
                              baseline=None if count == 1 else "1 process",
                              ratio=None if count == 1 else max(rates) / max(one)))
        results.append(Result("shard", f"{count} process(es): rows read per process", read, unit="rows",
                              baseline=None if count == 1 else "1 process",
                              ratio=None if count == 1 else read / rows))
    return results
