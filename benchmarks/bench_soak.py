"""Soak: 200 epochs of ``fit`` on one dataset and one kseq pool, watching for anything that grows.

Two runs of the same training, in turn: ``workers=2, use_multiprocessing=True`` (2 worker
processes, shared-memory slots) and ``workers=2`` (2 threads). After every epoch a callback
samples the resident memory (RSS, ``/proc/<pid>/status``) of the main process and of each
worker process, the main process's open file descriptors, and the bytes its shared-memory
slots hold (``SlotPool.nbytes``: the slots are nameless, so this is kseq's whole /dev/shm use).
Each series is reported as a least-squares slope over the epochs after a warm-up (the first
10%, when pools, slots, the allocator and the framework settle), in KiB (or descriptors) per
100 epochs, next to its total change over those epochs. Flat is the target: a leak shows as a
steady slope, not as noise. This is a measurement, not a timed test.

Then, without ``fit``, 1,600 batches served by a pool of 2 worker processes under ``tracemalloc``:
the Python allocations they leave behind (so a main-process slope can be told apart from kseq's own
Python objects).

The dataset is a ``MultiInputDataset`` subclass whose ``build_batch`` adds noise from
``self.batch_rng()`` (a fresh batch every time, as augmentation does): 16 batches of
256 x 256 float32 (256 KiB each) per epoch.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from typing import Any

import keras
import numpy as np

from benchmarks.common import Result
from kseq.datasets.multi_input import MultiInputDataset

SUITE = "soak"
ROWS, WIDTH, BATCH = 4096, 256, 256
WARMUP = 0.1


class Noisy(MultiInputDataset):
    """The rows plus per-batch noise: every batch is a new array, as with real augmentation."""

    def build_batch(self, rows: dict[str, np.ndarray]) -> Any:
        x, y = super().build_batch(rows)[:2]
        return {"x": x["x"] + self.batch_rng().normal(size=x["x"].shape).astype("float32")}, y


class Sampler(keras.callbacks.Callback):
    """After every epoch: RSS of the main process and each worker, open descriptors, slot bytes."""

    def __init__(self, dataset: Noisy) -> None:
        super().__init__()
        self.dataset = dataset
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:  # noqa: ARG002 - Keras passes both
        loader = self.dataset._loader
        row = {"main RSS": _rss_kib(os.getpid()), "open fds": float(len(os.listdir("/proc/self/fd")))}
        for number, pid in enumerate(loader.pids() if loader is not None else []):
            row[f"worker {number} RSS"] = _rss_kib(pid)
        slots = getattr(loader, "_slots", None)
        row["shm KiB"] = slots.nbytes() / 1024 if slots is not None else 0.0
        self.rows.append(row)


def _rss_kib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    return float("nan")


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((WIDTH,), name="x")
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="y")(hidden))
    model.compile("adam", "mse")
    return model


def soak(epochs: int, **workers: Any) -> tuple[list[dict[str, float]], list[int], list[int]]:
    """Train ``epochs`` epochs; the per-epoch samples, and the worker pids after the first and last epoch."""
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(ROWS, WIDTH)).astype("float32"), "y": rng.normal(size=(ROWS, 1)).astype("float32")}
    with Noisy(data, inputs="x", targets="y", batch_size=BATCH, seed=0, **workers) as ds:
        model, sampler = _model(), Sampler(ds)
        model.fit(ds, epochs=1, shuffle=False, verbose=0)
        first = ds._loader.pids() if ds._loader is not None else []
        model.fit(ds, epochs=epochs, shuffle=False, verbose=0, callbacks=[sampler])
        last = ds._loader.pids() if ds._loader is not None else []
    return sampler.rows, first, last


def slope(series: list[float]) -> tuple[float, float]:
    """Least-squares slope per 100 epochs after the warm-up, and the change over those epochs."""
    start = max(1, int(len(series) * WARMUP))
    y = np.asarray(series[start:], dtype=float)
    x = np.arange(y.size, dtype=float)
    per_epoch = float(np.polyfit(x, y, 1)[0]) if y.size > 1 else 0.0
    return 100 * per_epoch, float(y[-1] - y[0]) if y.size else 0.0


def python_growth(batches: int) -> float:
    """KiB of Python allocations (``tracemalloc``) that outlive ``batches`` batches served by a pool of 2
    worker processes, read without ``fit``: from a snapshot after a warm-up of 100 batches to the end."""
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(ROWS, WIDTH)).astype("float32"), "y": rng.normal(size=(ROWS, 1)).astype("float32")}
    with Noisy(data, inputs="x", targets="y", batch_size=BATCH, seed=0, workers=2, use_multiprocessing=True) as ds:
        per_epoch = len(ds)
        tracemalloc.start()
        try:
            for i in range(100):
                ds[i % per_epoch]
                if i % per_epoch == per_epoch - 1:
                    ds.on_epoch_end()
            gc.collect()
            before = tracemalloc.take_snapshot()
            for i in range(100, 100 + batches):
                ds[i % per_epoch]
                if i % per_epoch == per_epoch - 1:
                    ds.on_epoch_end()
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / 1024


def run(quick: bool = False) -> list[Result]:
    epochs = 20 if quick else 200
    results = []
    for mode, workers in (("2 processes", {"workers": 2, "use_multiprocessing": True}), ("2 threads", {"workers": 2})):
        rows, first, last = soak(epochs, **workers)
        if first != last:
            print(f"soak {mode}: the pool changed during the run: {first} -> {last}")
        for name in rows[0]:
            per_100, change = slope([row[name] for row in rows])
            unit = "fds/100ep" if name == "open fds" else "KiB/100ep"
            last_value = rows[-1][name]
            label = f"{mode}, {name} (now {last_value:,.0f}, change {change:+,.0f})"
            results.append(Result(SUITE, label, per_100, unit))
    batches = 200 if quick else 1600
    results.append(Result(SUITE, f"2 processes, Python allocations kept over {batches} batches (tracemalloc)",
                          python_growth(batches), "KiB"))
    return results
