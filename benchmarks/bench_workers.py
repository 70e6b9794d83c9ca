"""Workers: kseq's own pool vs Keras's pool, torch's DataLoader, threads, inline and Grain, on 64x224x224x3 batches.

Every loader builds each sample from its id (a cheap one-pass transform, or a CPU-heavy
one: 20 sqrt passes) and stacks 64 of them, in float32 (38.5 MB per batch) or uint8.
Rates are whole epochs of 16 batches after one warm-up epoch, so Keras's per-epoch pool
rebuild is counted, as it is in training. "iter" consumes the batches directly (what
``fit`` asks of a data pipeline); "fit" trains a tiny model on them with ``shuffle=False``.

Anchors: Keras's ``PyDataset(workers=2, use_multiprocessing=True)`` (a new pool every epoch,
batches pickled through a pipe), torch's ``DataLoader(num_workers=2, batch_size=64)`` over a
map-style dataset of the same per-sample work (``persistent_workers=True``, as torch advises for
repeated epochs), and Grain's ``mp_prefetch`` (shared-memory workers). torch and Grain are
benchmark-only dependencies, each skipped when not installed.

Two bounds, measured in the same run:
* the ceiling (iter): the same work in 2 plain forked processes that send nothing back;
* the floor (fit): a PyDataset returning precomputed batches of the same shape through the same
  ``fit``: the pace of Keras's PyDataset path and the step themselves, with no input cost.

Same conditions for every loader (NOTE [ malloc thresholds ] in kseq/workers/malloc.py): TensorFlow
leaves glibc's mmap threshold frozen at 128 KiB, so a process that builds 600 KB samples maps and
unmaps (and page-faults) each temporary. kseq's worker processes call ``tune_malloc()``; so that no
baseline pays what kseq's workers do not, the main process calls it before any loader runs, and every
forked pool (Keras's, the ceiling's, torch's) inherits it. TensorFlow sets ``M_TRIM_THRESHOLD`` back once
per process, when the first ``fit`` runs its generator dataset; kseq's datasets set the thresholds again
before each batch, and kseq's inline loader is the first to ``fit``, so every later ``fit`` of every loader
runs under them. :func:`malloc_effect` measures what the setting changes (inline and ceiling, both
settings, in turns, with minor page faults per batch).

Every figure is measured in ``REPEATS`` turns (each loader once per turn, in order, so drift and other
load hit them alike); the best turn is reported, and the row's name carries the range of the turns.
Streams run continuously from the warm-up into the measured epochs for every loader (kseq's, the
ceiling's and torch's prefetch alike), so none starts the measured epochs cold.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

from benchmarks.common import Result, in_turns, spread
from kseq import tune_malloc
from kseq.datasets.base import Dataset
from kseq.workers.config import default_start_method

SUITE = "workers"
BATCH = 64
SHAPE = (224, 224, 3)
WORKERS = 2
REPEATS = 3
AS_TF_LEAVES_IT = {"mmap_threshold": 128 * 2**10, "trim_threshold": 128 * 2**10}  # glibc after TF's patch

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


class Precomputed(keras.utils.PyDataset):
    """The floor: batches of the same shape, computed once; ``fit`` pays only its own path and the step."""

    def __init__(self, n: int, sample: Sample) -> None:
        super().__init__()
        self.n = n
        self.held = [sample.batch(np.arange(i * BATCH, (i + 1) * BATCH)) for i in range(4)]

    def __len__(self) -> int:
        return self.n // BATCH

    def __getitem__(self, index: int) -> tuple:
        return self.held[index % len(self.held)]


class SampleAt:
    """torch's map-style dataset: sample ``i`` and its label (module level, so workers unpickle it)."""

    def __init__(self, n: int, sample: Sample) -> None:
        self.n, self.sample = n, sample

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.float32]:
        return self.sample(int(i)), np.float32(i % 2)


def torch_loader(n: int, sample: Sample) -> Any:
    from torch.utils.data import DataLoader  # a benchmark-only dependency

    return DataLoader(SampleAt(n, sample), batch_size=BATCH, num_workers=WORKERS, shuffle=False,
                      persistent_workers=True, multiprocessing_context=default_start_method())


def close_torch(loader: Any) -> None:
    iterator = getattr(loader, "_iterator", None)  # persistent workers live in the loader's iterator
    if iterator is not None:
        iterator._shutdown_workers()


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


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# -- the ceiling: the same work in 2 processes, batches dropped where they are built ----------------

_WORKER_SAMPLE: Sample | None = None  # set once per pool process by _init_ceiling (inherited under fork)


def _init_ceiling(sample: Sample) -> None:
    global _WORKER_SAMPLE  # per-process state of the ceiling's pool only
    _WORKER_SAMPLE = sample


def _build_and_drop(index: int) -> int:
    """Build batch ``index`` in a ceiling worker; return the minor page faults it took."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    _WORKER_SAMPLE.batch(np.arange(index * BATCH, (index + 1) * BATCH))  # type: ignore[union-attr]
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def ceiling(sample: Sample, per_epoch: int, epochs: int) -> tuple[float, float]:
    """What any 2-process loader could reach here: no transport, nothing returned. Batches/s, faults/batch.

    One stream from the warm-up epoch into the measured ones, as every loader's stream runs.
    """
    with multiprocessing.get_context("fork").Pool(WORKERS, _init_ceiling, (sample,)) as pool:
        stream = pool.imap(_build_and_drop, range(per_epoch * (1 + epochs)))
        for _ in itertools.islice(stream, per_epoch):
            pass
        start = time.perf_counter()
        faults = sum(stream)
        return per_epoch * epochs / (time.perf_counter() - start), faults / (per_epoch * epochs)


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


def torch_stream(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def stream_of(data: Any) -> Iterator[Any]:
    if isinstance(data, KseqImages):
        return kseq_stream(data)
    if isinstance(data, KerasImages):
        return keras_stream(data)
    if type(data).__name__ == "DataLoader":
        return torch_stream(data)
    return iter(data)


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
    endless = not isinstance(data, keras.utils.PyDataset) and type(data).__name__ != "DataLoader"  # Grain
    model.fit(data, epochs=1 + epochs, steps_per_epoch=per_epoch if endless else None, shuffle=False, verbose=0,
              callbacks=[timer])
    return per_epoch * epochs / sum(timer.times[1:])


# -- the matrix ----------------------------------------------------------------------------------------

Make = Callable[[], tuple[Any, Callable[[], None]]]


def loaders(n: int, sample: Sample, path: str) -> dict[str, Make]:
    """name -> make(): (a dataset for fit or iteration, close). Each loader is made fresh for each measurement."""

    def kseq(**kwargs: Any) -> Make:
        def make() -> tuple[Any, Callable[[], None]]:
            ds = KseqImages(n, sample, **kwargs)
            return ds, ds.close
        return make

    out: dict[str, Make] = {
        "inline": kseq(),
        "kseq 2 threads": kseq(workers=WORKERS),
        "kseq 2 processes": kseq(workers=WORKERS, use_multiprocessing=True),
        "keras 2 processes": lambda: (KerasImages(n, sample, workers=WORKERS, use_multiprocessing=True), lambda: None),
    }
    if installed("torch"):
        def torch_make() -> tuple[Any, Callable[[], None]]:
            loader = torch_loader(n, sample)
            return loader, lambda: close_torch(loader)
        out["torch DataLoader 2 workers"] = torch_make
    if installed("grain"):
        out["grain 2 processes"] = lambda: (grain_dataset(n, sample), lambda: None)
    if path == "fit":
        out["floor (precomputed batches)"] = lambda: (Precomputed(n, sample), lambda: None)
    return out


def measure(path: str, workload: str, dtype: str, heavy: bool, per_epoch: int, epochs: int,
            repeats: int) -> list[Result]:
    sample = Sample(dtype, heavy)

    def once(make: Make) -> Callable[[], float]:
        def run_once() -> float:
            data, close = make()
            try:
                if path == "iter":
                    stream = stream_of(data)
                    value = epochs_rate(stream, per_epoch, epochs)
                    getattr(stream, "close", lambda: None)()
                    return value
                return fit_rate(data, dtype, per_epoch, epochs)
            finally:
                close()
        return run_once

    runs = {name: once(make) for name, make in loaders(per_epoch * BATCH, sample, path).items()}
    if path == "iter":
        runs["ceiling (2 procs, no transport)"] = lambda: ceiling(sample, per_epoch, epochs)[0]
    label = f"{path} {workload}" + ("" if path == "iter" else f" [{keras.backend.backend()}]")
    return report(label, in_turns(runs, repeats), heavy)


def report(label: str, values: dict[str, list[float]], heavy: bool) -> list[Result]:
    """The best turn of each loader; ratios of bests; each name carries the range of the same-turn ratios."""
    best = {name: max(v) for name, v in values.items()}
    ours = "kseq 2 processes"
    results = [
        Result(SUITE, f"{label}: {name} {spread(v)}", best[name],
               baseline=None if name == "inline" else "inline",
               ratio=None if name == "inline" else best[name] / best["inline"],
               target=">= 1.6x" if heavy and name == ours else None)
        for name, v in values.items()
    ]
    against = {
        "keras 2 processes": None if heavy else ">= 10x",
        "torch DataLoader 2 workers": None,
        "grain 2 processes": ">= 1x",
        "ceiling (2 procs, no transport)": None,
        "floor (precomputed batches)": ">= 0.9x",
    }
    for name, target in against.items():
        if name in values:
            results.append(Result(SUITE, f"{label}: kseq processes / {name.split(' (')[0]} "
                                  f"{spread(values[ours], values[name])}", best[ours], baseline=name,
                                  ratio=best[ours] / best[name], target=target))
    return results


# -- the malloc effect, and the epoch start ------------------------------------------------------------


def malloc_effect(per_epoch: int, epochs: int, repeats: int) -> list[Result]:
    """Inline and the ceiling on float32 cheap, with glibc as TensorFlow leaves it and after tune_malloc().

    Rates in turns; the name carries the fewest minor page faults per batch (the main process's for
    inline, the workers' for the ceiling), which show the setting each turn ran under.
    """
    sample = Sample("float32", heavy=False)
    faults: dict[str, float] = {}

    def inline_rate(setting: dict[str, int]) -> float:
        tune_malloc(**setting)
        ds = KseqImages(per_epoch * BATCH, sample)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        rate = epochs_rate(kseq_stream(ds), per_epoch, epochs)
        return _note(faults, "inline", setting, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
                     / (per_epoch * (1 + epochs)), rate)

    def ceiling_rate(setting: dict[str, int]) -> float:
        tune_malloc(**setting)  # the pool's processes fork from here and inherit it
        rate, per_batch = ceiling(sample, per_epoch, epochs)
        return _note(faults, "ceiling", setting, per_batch, rate)

    runs: dict[str, Callable[[], float]] = {}
    for where, fn in (("inline", inline_rate), ("ceiling", ceiling_rate)):
        for setting in (AS_TF_LEAVES_IT, {}):
            runs[f"{where}, {_setting(setting)}"] = lambda fn=fn, setting=setting: fn(setting)
    values = in_turns(runs, repeats)
    tune_malloc()  # back to the suite's condition
    results = []
    for name, v in values.items():
        base = name.replace("tune_malloc()", "as TF leaves it")
        ratio = None if base == name else max(v) / max(values[base])
        results.append(Result(SUITE, f"malloc, iter f32 cheap: {name}, {faults[name]:,.0f} faults/batch "
                              f"{spread(v)}", max(v), baseline=None if ratio is None else base, ratio=ratio))
    return results


def _setting(setting: dict[str, int]) -> str:
    return "as TF leaves it" if setting else "tune_malloc()"


def _note(faults: dict[str, float], where: str, setting: dict[str, int], per_batch: float, rate: float) -> float:
    name = f"{where}, {_setting(setting)}"
    faults[name] = min(faults.get(name, float("inf")), per_batch)
    return rate


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
    """The iterate rows and the malloc check do not involve the backend; they run under TensorFlow only
    (``KERAS_BACKEND=jax python -m benchmarks.run workers`` adds the fit rows on JAX)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    per_epoch, epochs, repeats = (4, 1, 1) if quick else (16, 2, REPEATS)
    tf = keras.backend.backend() == "tensorflow"
    results = malloc_effect(per_epoch, epochs, repeats) if tf else []
    tune_malloc()  # the same conditions for every loader (module docstring)
    for label, dtype, heavy in (WORKLOADS[:1] if quick else WORKLOADS) if tf else []:
        results += measure("iter", label, dtype, heavy, per_epoch, epochs, repeats)
    for label, dtype, heavy in WORKLOADS[:1] if quick else WORKLOADS[:2]:
        results += measure("fit", label, dtype, heavy, per_epoch, epochs, repeats)
    if tf:
        results.append(epoch_start(per_epoch, 1 if quick else 3, "spawn"))
    return results
