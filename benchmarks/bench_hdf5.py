"""HDF5 read paths: a shuffled epoch of 100k x 1024 float32 rows, batch 256, page cache warm.

Baselines measured in the same run, on the same data:

* in-RAM numpy fancy indexing (what kseq's contiguous path should match: target >= 0.85x);
* naive per-row h5py reads, ``np.stack([dset[i] for i in batch])`` (target >= 5x);
* h5py contiguous slices ``dset[s : s + 256]`` at shuffled chunk-aligned starts: the fastest way
  to read a file, with batch-level shuffling only (target >= 0.7x for chunked files). An
  uncompressed chunked file is read directly (sample-level shuffle) and compared with slices of
  the contiguous file; a gzip file, read in whole chunks with a block shuffle, with slices of
  the same gzip file (each slice one chunk: the cheapest way to read it).

And a memory check: two training epochs (``fit``) from a file larger than ``resident_mb`` (2 GiB;
256 MiB with --quick) must grow peak RSS by less than 300 MB, at >= 0.8x the rate of the same
epoch with the whole file memory-mapped. Each runs in a fresh process (``python -m
benchmarks.bench_hdf5 --memory FILE``), with the file in /tmp, the variants in turns: as a user runs it,
and both again after ``kseq.tune_malloc()`` (NOTE [ malloc thresholds ]).

Every reader starts from a warm page cache (:func:`warm_page_cache`), and every figure is the best
of its turns (variants in turns), its name carrying the range.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import numpy as np

from benchmarks.common import Result, in_turns, rate, spread, versus
from kseq import tune_malloc
from kseq.datasets import MultiInputDataset
from kseq.samplers.block import BlockShuffleSampler
from kseq.sources import _aio
from kseq.sources.hdf5 import RESIDENT_MB, HDF5Source
from kseq.sources.pack import pack

SUITE = "hdf5"
BATCH = 256
WIDTH = 1024
CODECS = ("lz4", "blosc", "zstd")  # hdf5plugin's, through kseq.pack (NOTE [ compression ])


def run(quick: bool) -> list[Result]:
    n = 20_000 if quick else 100_000
    timing = {"min_time": 0.3, "turns": 2} if quick else {"min_time": 1.0, "turns": 3}
    folder = Path(tempfile.mkdtemp(prefix="kseq-bench-hdf5-", dir="/tmp"))
    try:
        results = _reads(folder, n, timing)
        results += _memory(folder, (256 if quick else 2048) << 20, timing["turns"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def _reads(folder: Path, n: int, timing: dict) -> list[Result]:
    rng = np.random.default_rng(0)
    x = rng.random((n, WIDTH), dtype=np.float32)
    contiguous = pack(folder / "contiguous.h5", {"x": x}, progress=False)
    chunked = pack(folder / "chunked.h5", {"x": x}, chunks=BATCH, progress=False)  # 1 MiB chunks, no filter
    pack(folder / "gzip.h5", {"x": x}, compression="gzip", compression_opts=1, progress=False)
    gzip = HDF5Source(folder / "gzip.h5", cache_mb=32)  # 2 windows of 16 blocks; a fraction of the file
    codecs = {c: pack(folder / f"{c}.h5", {"x": x}, compression=c, progress=False) for c in CODECS}
    codecs = {c: HDF5Source(src.path, cache_mb=32) for c, src in codecs.items()}
    pread = HDF5Source(contiguous.path, resident_mb=0.001)  # what a file larger than resident_mb gets
    with h5py.File(folder / "unaligned.h5", "w") as f:  # h5py's default: no alignment (pack aligns)
        f.create_dataset("x", data=x)
    unaligned = HDF5Source(folder / "unaligned.h5")
    unaligned_pread = HDF5Source(unaligned.path, resident_mb=0.001)
    if contiguous.layouts["x"].offset % 4096 != 0 or unaligned.layouts["x"].offset % 4096 == 0:
        raise RuntimeError("expected pack's file aligned to a page, h5py's not")
    paths = (contiguous.readers, chunked.readers, gzip.readers, pread.readers)
    if paths != ({"x": "memmap"}, {"x": "memmap"}, {"x": "blocks"}, {"x": "pread"}):
        raise RuntimeError(f"unexpected read paths {paths}")
    order = rng.permutation(n)
    batches = [order[i : i + BATCH] for i in range(0, n - BATCH + 1, BATCH)]
    starts = rng.permutation(n // BATCH) * BATCH  # chunk-aligned: one whole chunk per slice
    released, growth = _released_map(contiguous, batches, timing)
    with h5py.File(contiguous.path) as fc, h5py.File(gzip.path) as fz:
        dc, dz = fc["x"], fz["x"]
        runs = {
            "numpy in RAM, fancy index": _epoch(lambda b: x[b], batches, None, timing),
            "h5py per-row reads (naive)": _epoch(lambda b: np.stack([dc[i] for i in b]), batches[:20], dc.file.filename,
                                                 timing),
            "h5py slices, contiguous file": _epoch(lambda s: dc[s : s + BATCH], starts, contiguous.path, timing),
            "h5py slices, gzip file": _epoch(lambda s: dz[s : s + BATCH], starts, gzip.path, timing),
            "kseq contiguous (memmap)": _epoch(contiguous.read, batches, contiguous.path, timing),
            "kseq contiguous (pread)": _epoch(pread.read, batches, contiguous.path, timing),
            "kseq contiguous (pread, os.preadv per run, no AIO)": _without_aio(
                _epoch(pread.read, batches, contiguous.path, timing)),
            "kseq unaligned file (memmap)": _epoch(unaligned.read, batches, unaligned.path, timing),
            "kseq unaligned file (pread)": _epoch(unaligned_pread.read, batches, unaligned.path, timing),
            "memory map released after every batch (madvise)": released,
            "kseq chunked, no filter (direct)": _epoch(chunked.read, batches, chunked.path, timing),
            "kseq gzip chunks, block shuffle": _block_epochs(gzip, timing),
            "kseq gzip chunks, exact shuffle": _epoch(gzip.read, batches[:2], gzip.path, timing),
        }
        runs |= {f"kseq {c} chunks, block shuffle": _block_epochs(src, timing) for c, src in codecs.items()}
        values = in_turns(runs, timing["turns"])
    compare = [
        ("kseq contiguous (memmap)", "numpy in RAM, fancy index", ">= 0.85x"),
        ("kseq contiguous (memmap)", "h5py per-row reads (naive)", ">= 5x"),
        ("kseq contiguous (pread)", "numpy in RAM, fancy index", None),
        ("kseq contiguous (pread)", "kseq contiguous (memmap)", None),
        ("kseq contiguous (pread)", "h5py per-row reads (naive)", None),
        ("kseq contiguous (pread)", "kseq contiguous (pread, os.preadv per run, no AIO)", None),
        ("kseq contiguous (memmap)", "kseq unaligned file (memmap)", None),
        ("kseq contiguous (pread)", "kseq unaligned file (pread)", None),
        ("memory map released after every batch (madvise)", "kseq contiguous (pread)", None),
        ("kseq chunked, no filter (direct)", "kseq contiguous (memmap)", None),
        ("kseq chunked, no filter (direct)", "h5py slices, contiguous file", ">= 0.7x"),
        ("kseq gzip chunks, block shuffle", "h5py slices, gzip file", None),
        ("kseq gzip chunks, block shuffle", "h5py slices, contiguous file", ">= 0.7x"),  # issue 3's target
        ("kseq gzip chunks, exact shuffle", "h5py slices, gzip file", None),
    ]
    for c in CODECS:
        compare += [(f"kseq {c} chunks, block shuffle", "h5py slices, contiguous file", ">= 0.7x"),  # issue 16
                    (f"kseq {c} chunks, block shuffle", "kseq gzip chunks, block shuffle", None)]
    rows = [Result(SUITE, f"{name} {spread(v)}", max(v)) for name, v in values.items() if not name.startswith("kseq")]
    sizes = [Result(SUITE, f"file size, {c}: x.nbytes / stored bytes", x.nbytes / src.layouts["x"].storage_bytes,
                    "x smaller") for c, src in {"gzip": gzip, **codecs}.items()]
    sizes.append(Result(SUITE, f"memory map released after every batch: peak RSS growth {spread(growth)}",
                        max(growth), "MB"))
    return rows + [versus(SUITE, values, name, base, target) for name, base, target in compare] + sizes


def _without_aio(turn: Callable[[], float]) -> Callable[[], float]:
    """``turn`` with Linux AIO off in this process: pread fields read with one os.preadv per run."""
    def off() -> float:
        kept = _aio._pool
        _aio._pool = _aio._Pool()
        _aio._pool.works = False
        try:
            return turn()
        finally:
            _aio._pool = kept

    return off


def _released_map(src: HDF5Source, batches: list, timing: dict) -> tuple[Callable[[], float], list[float]]:
    """Rows gathered from a memory map of the whole file, the map's pages released after every batch
    (``madvise(MADV_DONTNEED)``): what keeping RSS flat with a map would cost. Each turn appends its peak
    RSS growth (MB) to the list returned."""
    offset = src.layouts["x"].offset
    growth: list[float] = []

    def turn() -> float:
        warm_page_cache(src.path)
        with open(src.path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        rows = np.ndarray((len(src), WIDTH), np.float32, buffer=mapped, offset=offset)

        def epoch() -> None:
            for b in batches:
                np.take(rows, b, axis=0)
                mapped.madvise(mmap.MADV_DONTNEED)

        Path("/proc/self/clear_refs").write_text("5")
        before = _status_mb("VmRSS")
        value = rate(epoch, count=len(batches), min_time=timing["min_time"], repeats=1)
        growth.append(_status_mb("VmHWM") - before)
        return value  # the map closes when rows and epoch are collected

    return turn, growth


def _epoch(read: Callable[[object], object], batches: list, file: Path | None, timing: dict) -> Callable[[], float]:
    """One turn: the page cache warmed (``file``), then batches/s over passes of ``batches`` for ``min_time``."""
    def epoch() -> None:
        for b in batches:
            read(b)

    def turn() -> float:
        if file is not None:
            warm_page_cache(file)
        return rate(epoch, count=len(batches), min_time=timing["min_time"], repeats=1)

    return turn


def _block_epochs(src: HDF5Source, timing: dict) -> Callable[[], float]:
    """Batches of successive epochs in order: each call is one whole epoch with a fresh block order."""
    sampler = BlockShuffleSampler.for_source(src, batch_size=BATCH, seed=0, drop_remainder=True)
    epochs = iter(range(10**6))

    def epoch() -> None:
        e = next(epochs)
        for b in range(len(sampler)):
            src.read(sampler.indices(e, b))

    def turn() -> float:
        warm_page_cache(src.path)
        return rate(epoch, count=len(sampler), min_time=timing["min_time"], repeats=1)

    return turn


# -- memory check ---------------------------------------------------------------------------------


def _memory(folder: Path, nbytes: int, turns: int) -> list[Result]:
    free = shutil.disk_usage(folder).free
    if free < 3 * nbytes:
        print(f"hdf5: memory check skipped: {free >> 20} MiB free in {folder}, need {3 * nbytes >> 20} MiB")
        return []
    rows = nbytes // (WIDTH * 4)
    path = folder / "big.h5"
    rng = np.random.default_rng(1)
    step = 16384
    stream = ({"x": rng.random((min(step, rows - s), WIDTH), dtype=np.float32),
               "y": rng.random(min(step, rows - s), dtype=np.float32)} for s in range(0, rows, step))
    pack(path, stream, length=rows, progress=False)
    size = path.stat().st_size
    label = f"fit, {size / 1e9:.2f} GB file"
    budget = RESIDENT_MB if nbytes >> 20 > RESIDENT_MB else (nbytes >> 20) // 4  # the default; 1/4 with --quick
    ours = "kseq default" if budget == RESIDENT_MB else f"kseq resident_mb={budget}"
    # (resident_mb, tune_malloc in the child): as a user runs it, and after kseq.tune_malloc() (both variants)
    variants = {ours: (str(budget), False), "whole file mapped": ("1000000", False),
                f"{ours}, tune_malloc()": (str(budget), True), "whole file mapped, tune_malloc()": ("1000000", True)}
    reports: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(turns):  # a fresh process per variant and turn, variants in turns
        for name, (resident, tune) in variants.items():
            reports[name].append(_child(path, resident, tune))
    path.unlink()
    readers = {name: reports[name][0]["reader"] for name in variants}
    if list(readers.values()) != ["pread", "memmap"] * 2:
        raise RuntimeError(f"unexpected read paths {readers}")
    results = []
    for name in variants:
        growth = [r["growth_mb"] for r in reports[name]]
        results.append(Result(SUITE, f"{label}: peak RSS growth, {name} ({readers[name]}) {spread(growth)}",
                              max(growth), "MB", target="< 300 MB" if name.startswith("kseq") else None))
    names = list(variants)
    for pair in (names[:2], names[2:]):
        for epoch in (1, 2):
            values = {f"{label}: epoch {epoch}, {name} ({readers[name]})": [r["epochs"][epoch - 1]
                                                                            for r in reports[name]] for name in pair}
            kseq_row, mapped = values
            results.append(Result(SUITE, f"{mapped} {spread(values[mapped])}", max(values[mapped])))
            results.append(versus(SUITE, values, kseq_row, mapped, ">= 0.8x" if epoch == 1 else None))
    return results


def _child(path: Path, resident_mb: str, tune: bool) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "benchmarks.bench_hdf5", "--memory", str(path), "--resident-mb", resident_mb,
           *(["--tune-malloc"] if tune else [])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=1800,
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_page_cache(path: str | Path) -> None:
    """Read the file once, into one reused buffer (no RSS growth), so that every reader starts from a warm page
    cache. Needed on the project's VM: its kernel pages out file pages idle for a few seconds (DAMON reclaim)."""
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _EpochTimes(keras.callbacks.Callback):
    def __init__(self, batches: int) -> None:
        super().__init__()
        self.batches, self.rates, self.start = batches, [], 0.0

    def on_epoch_begin(self, *_: object) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, *_: object) -> None:
        self.rates.append(self.batches / (time.perf_counter() - self.start))


def _train(path: str, resident_mb: float, tune: bool = False) -> dict:
    """In a fresh process: train two epochs from ``path``; report each epoch's rate and the peak RSS growth.
    The first epoch of a memory map faults every page in; the second finds them mapped. ``tune``: call
    ``kseq.tune_malloc()`` first, as a user would at the top of a script."""
    if tune:
        tune_malloc()
    src = HDF5Source(path, resident_mb=resident_mb)
    ds = MultiInputDataset(src, inputs="x", targets="y", batch_size=BATCH, seed=0)
    model = keras.Sequential([keras.Input((WIDTH,), name="x"), keras.layers.Dense(1)])
    model.compile("adam", "mse")  # plain SGD diverges on these 1,024 inputs, and NaN steps run 7x slower
    warm = {"x": np.zeros((2 * BATCH, WIDTH), np.float32), "y": np.zeros(2 * BATCH, np.float32)}
    model.fit(MultiInputDataset(warm, inputs="x", targets="y", batch_size=BATCH), verbose=0)  # build and trace
    warm_page_cache(path)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _status_mb("VmRSS")
    times = _EpochTimes(len(ds))
    history = model.fit(ds, epochs=2, shuffle=False, verbose=0, callbacks=[times])
    peak = _status_mb("VmHWM")
    loss = history.history["loss"][-1]
    if not np.isfinite(loss):
        raise RuntimeError(f"training diverged (loss {loss}): the rate would measure NaN arithmetic, not reading")
    return {"rows": len(src), "reader": src.readers["x"], "before_mb": before, "peak_mb": peak,
            "growth_mb": peak - before, "epochs": times.rates}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", required=True)
    parser.add_argument("--resident-mb", type=float, default=1024)
    parser.add_argument("--tune-malloc", action="store_true")
    args = parser.parse_args()
    print(json.dumps(_train(args.memory, args.resident_mb, args.tune_malloc)))
