"""Workers: kseq's own pool vs Keras's pool, threads, inline and Grain, on 64x224x224x3 batches.

Every loader builds each sample from its id (a cheap one-pass transform, or a CPU-heavy
one: 20 sqrt passes) and stacks 64 of them, in float32 (38.5 MB per batch) or uint8.
Rates are whole epochs of 16 batches after one warm-up epoch, so Keras's per-epoch pool
rebuild is counted, as it is in training. "iter" consumes the batches directly (what
``fit`` asks of a data pipeline); "fit" trains a tiny model on them with ``shuffle=False``.

Anchors: Keras's ``PyDataset(workers=2, use_multiprocessing=True)`` (a new pool every
epoch, batches pickled through a pipe) and Grain's ``mp_prefetch`` (shared-memory
workers; a benchmark-only dependency, skipped when not installed).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

from benchmarks.common import Result
from kseq.datasets.base import Dataset

SUITE = "workers"
BATCH = 64
SHAPE = (224, 224, 3)
WORKERS = 2


# -- the per-sample work, shared by every loader ---------------------------------------------------


class Sample:
    """Builds sample ``i``: ``base + i % 7`` (cheap), or 20 sqrt passes over it first (heavy). Picklable."""

    def __init__(self, dtype: str, heavy: bool) -> None:
        self.dtype = np.dtype(dtype)
        self.heavy = heavy
        self.base = (np.random.default_rng(0).random(SHAPE) * 200).astype(self.dtype)

    def __call__(self, i: int) -> np.ndarray:
        if not self.heavy:
            return self.base + self.dtype.type(i % 7)
        x = self.base.astype(np.float32) + np.float32(i % 7)
        for _ in range(20):
            x = np.sqrt(x + np.float32(1.0))
        return x.astype(self.dtype)

    def batch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([self(int(i)) for i in ids]), (ids % 2).astype(np.float32)


class KseqImages(Dataset):
    """The kseq loader: rows are sample ids; build_batch builds and stacks the samples."""

    def __init__(self, n: int, sample: Sample, **kwargs: Any) -> None:
        super().__init__({"id": np.arange(n)}, batch_size=BATCH, shuffle=False, **kwargs)
        self.sample = sample

    def build_batch(self, rows: dict[str, np.ndarray]) -> tuple:
        return self.sample.batch(rows["id"])


class KerasImages(keras.utils.PyDataset):
    """The same batches from a plain Keras PyDataset (its own pool when workers > 1)."""

    def __init__(self, n: int, sample: Sample, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n, self.sample = n, sample

    def __len__(self) -> int:
        return self.n // BATCH

    def __getitem__(self, index: int) -> tuple:
        return self.sample.batch(np.arange(index * BATCH, (index + 1) * BATCH))


class GrainBatch:
    """Grain's map step (a module-level callable, so its workers can unpickle it)."""

    def __init__(self, sample: Sample) -> None:
        self.sample = sample

    def __call__(self, i: int) -> tuple[np.ndarray, np.float32]:
        return self.sample(int(i)), np.float32(i % 2)


def grain_dataset(n: int, sample: Sample) -> Any:
    import grain  # a benchmark-only dependency
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # Grain reads absl flags; the benchmark has none of its own
    options = grain.MultiprocessingOptions(num_workers=WORKERS)
    batches = grain.MapDataset.range(n).map(GrainBatch(sample)).batch(BATCH).repeat()
    return batches.to_iter_dataset().mp_prefetch(options)


def have_grain() -> bool:
    try:
        import grain  # noqa: F401
    except ImportError:
        return False
    return True


# -- the ceiling: the same work in 2 processes, batches dropped where they are built ----------------

_WORKER_SAMPLE: Sample | None = None  # set once per pool process by _init_ceiling (inherited under fork)


def _init_ceiling(sample: Sample) -> None:
    global _WORKER_SAMPLE  # per-process state of the ceiling's pool only
    _WORKER_SAMPLE = sample


def _build_and_drop(index: int) -> int:
    _WORKER_SAMPLE.batch(np.arange(index * BATCH, (index + 1) * BATCH))  # type: ignore[union-attr]
    return index


def ceiling_rate(sample: Sample, per_epoch: int, epochs: int) -> float:
    """What any 2-process loader could reach on this machine now: no transport, nothing returned."""
    with multiprocessing.get_context("fork").Pool(WORKERS, _init_ceiling, (sample,)) as pool:
        list(pool.imap(_build_and_drop, range(per_epoch)))
        start = time.perf_counter()
        list(pool.imap(_build_and_drop, range(per_epoch * epochs)))
        return per_epoch * epochs / (time.perf_counter() - start)


# -- streams of batches, epoch after epoch ---------------------------------------------------------


def kseq_stream(ds: KseqImages) -> Iterator[Any]:
    while True:
        for i in range(len(ds)):
            yield ds[i]
        ds.on_epoch_end()


def keras_stream(ds: KerasImages) -> Iterator[Any]:
    """What fit does with a PyDataset: a new enqueuer (a new process pool) every epoch."""
    adapter = PyDatasetAdapter(ds, shuffle=False)
    while True:
        adapter.on_epoch_begin()
        yield from adapter.get_numpy_iterator()
        adapter.on_epoch_end()


def epochs_rate(stream: Iterator[Any], per_epoch: int, epochs: int) -> float:
    for _ in itertools.islice(stream, per_epoch):  # warm-up epoch: pools start, slots grow
        pass
    start = time.perf_counter()
    for _ in itertools.islice(stream, per_epoch * epochs):
        pass
    return per_epoch * epochs / (time.perf_counter() - start)


class EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:  # noqa: ARG002 - Keras's signature
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:  # noqa: ARG002 - Keras's signature
        self.times.append(time.perf_counter() - self._start)


def fit_rate(data: Any, dtype: str, per_epoch: int, epochs: int) -> float:
    inputs = keras.Input(SHAPE, dtype=dtype)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile("sgd", "mse")
    timer = EpochTimer()
    steps = per_epoch if not isinstance(data, keras.utils.PyDataset) else None  # Grain's stream is endless
    model.fit(data, epochs=1 + epochs, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[timer])
    return per_epoch * epochs / sum(timer.times[1:])


# -- the matrix ----------------------------------------------------------------------------------------


def loaders(n: int, sample: Sample) -> dict[str, Callable[[], tuple[Any, Callable[[], None]]]]:
    """name -> make(): (a dataset for fit, close). Each loader is made fresh for each measurement."""

    def kseq(**kwargs: Any) -> Callable[[], tuple[Any, Callable[[], None]]]:
        def make() -> tuple[Any, Callable[[], None]]:
            ds = KseqImages(n, sample, **kwargs)
            return ds, ds.close
        return make

    def keras_pool() -> tuple[Any, Callable[[], None]]:
        return KerasImages(n, sample, workers=WORKERS, use_multiprocessing=True), lambda: None

    def grain_pool() -> tuple[Any, Callable[[], None]]:
        ds = grain_dataset(n, sample)
        return ds, lambda: None

    out = {
        "inline": kseq(),
        "kseq 2 threads": kseq(workers=WORKERS),
        "kseq 2 processes": kseq(workers=WORKERS, use_multiprocessing=True),
        "keras 2 processes": keras_pool,
    }
    if have_grain():
        out["grain 2 processes"] = grain_pool
    return out


def stream_of(data: Any) -> Iterator[Any]:
    if isinstance(data, KseqImages):
        return kseq_stream(data)
    if isinstance(data, KerasImages):
        return keras_stream(data)
    return iter(data)


def measure(path: str, workload: str, dtype: str, heavy: bool, per_epoch: int, epochs: int) -> list[Result]:
    sample = Sample(dtype, heavy)
    rates = {}
    for name, make in loaders(per_epoch * BATCH, sample).items():
        data, close = make()
        try:
            if path == "iter":
                stream = stream_of(data)
                rates[name] = epochs_rate(stream, per_epoch, epochs)
                if hasattr(stream, "close"):
                    stream.close()
            else:
                rates[name] = fit_rate(data, dtype, per_epoch, epochs)
        finally:
            close()
    if path == "iter":
        rates["ceiling (2 procs, no transport)"] = ceiling_rate(sample, per_epoch, epochs)
    return report(f"{path} {workload}", rates, heavy)


def report(label: str, rates: dict[str, float], heavy: bool) -> list[Result]:
    ours = rates["kseq 2 processes"]
    results = [
        Result(SUITE, f"{label}: {name}", value, baseline=None if name == "inline" else "inline",
               ratio=None if name == "inline" else value / rates["inline"],
               target=">= 1.6x" if heavy and name == "kseq 2 processes" else None)
        for name, value in rates.items()
    ]
    results.append(Result(SUITE, f"{label}: kseq vs keras processes", ours, baseline="keras 2 processes",
                          ratio=ours / rates["keras 2 processes"], target=None if heavy else ">= 10x"))
    if "grain 2 processes" in rates:
        results.append(Result(SUITE, f"{label}: kseq vs grain processes", ours, baseline="grain 2 processes",
                              ratio=ours / rates["grain 2 processes"], target=">= 1x"))
    ceiling = "ceiling (2 procs, no transport)"
    if ceiling in rates:
        results.append(Result(SUITE, f"{label}: kseq vs the ceiling", ours, baseline="ceiling",
                              ratio=ours / rates[ceiling]))
    return results


def epoch_start(per_epoch: int, epochs: int, start_method: str) -> Result:
    """Seconds from on_epoch_end to the next epoch's first batch, after the first epoch, kseq processes."""
    ds = KseqImages(per_epoch * BATCH, Sample("float32", heavy=False), workers=WORKERS, use_multiprocessing=True,
                    start_method=start_method)
    waits = []
    try:
        for epoch in range(1 + epochs):
            for i in range(len(ds)):
                start = time.perf_counter()
                ds[i]
                if i == 0 and epoch > 0:
                    waits.append(time.perf_counter() - start)
            ds.on_epoch_end()
    finally:
        ds.close()
    return Result(SUITE, f"epoch start under {start_method}: kseq processes", float(np.mean(waits)), unit="s",
                  target="< 0.2 s")


WORKLOADS = [  # (label, dtype, heavy): the two with targets first
    ("f32 cheap", "float32", False),
    ("u8 heavy", "uint8", True),
    ("u8 cheap", "uint8", False),
]


def run(quick: bool) -> list[Result]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    per_epoch, epochs = (4, 1) if quick else (16, 2)
    results = []
    for label, dtype, heavy in WORKLOADS[:1] if quick else WORKLOADS:
        results += measure("iter", label, dtype, heavy, per_epoch, epochs)
    for label, dtype, heavy in WORKLOADS[:1] if quick else WORKLOADS[:2]:
        results += measure("fit", label, dtype, heavy, per_epoch, epochs)
    results.append(epoch_start(per_epoch, 1 if quick else 3, "spawn"))
    return results
