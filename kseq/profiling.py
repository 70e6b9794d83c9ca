"""``kseq.profile``: is the input the bottleneck? A dataset's time per stage, and the model's step beside it.

# NOTE [ what profile measures ]
A kseq batch is ``build_batch(read_rows(sampler.indices(epoch, index)))`` (``Dataset.get_batch``),
computed inline or by the dataset's own workers, handed over to the main process, and (for a
list-built model) put into the model's structure by a :class:`~kseq.ModelView`. ``profile`` times
each part from outside, on the dataset as it is, in four passes over the first ``batches`` batches:

1. Stages, in this process: ``sampler.indices``, ``read_rows`` and ``build_batch`` timed one by one
   inside ``batch_context(epoch, index)``, as ``get_batch`` sets it, so ``batch_rng()`` and
   ``batch_position()`` see the same batch; then the view's ``adapt``.
2. Delivery: ``ds[i]`` (or the view's) as ``fit`` reads them, with the dataset's workers. The pool
   is closed first, so the first batch's latency includes the pool start, as in a fresh ``fit``.
   For an inline dataset this pass is the independent total the stages should add up to; what is
   left is kseq's bookkeeping ("other").
3. Transport (workers only): one batch is asked for, the workers get time to fill the queue, then
   batches that are already computed are asked for: what the main process still spends on each is
   the hand-over (shared memory to an array, or a thread's queue).
4. With a model: one-epoch ``fit`` calls in turns, on the same batches held in memory (the model's
   own step, and the floor of Keras's PyDataset path) and on the dataset, one untimed turn first
   (compiles), timed between ``on_train_batch_end`` calls, the best of ``epochs`` turns each (a
   load spike on a shared machine slows one turn, not the verdict). The step waits on data for
   ``real - held`` seconds per step, but never longer than a batch takes to be delivered (pass 2):
   a gap beyond that is the machine's noise, not the input (measured here under load: a 140 ms
   step read 140 and 210 ms in two turns while its batches took 0.1 ms). The wait fraction is
   ``min(real - held, delivered) / real``.

Per batch, a stage's time is the median over the batches timed, and so is an inline dataset's
delivered total: on a shared machine another process's burst lands on a few batches (measured here
under load: most batches 1.1 ms, a few 20-270 ms), and a median keeps a stage's typical cost where a
mean would move with the burst. With workers, batches arrive unevenly (one waits, the next is
ready), so their total is the mean. The dataset's epoch and the model's weights and optimizer state
are put back afterwards. Repeat a profile before acting on a difference of a few percent.

The module is ``kseq.profiling``, not ``kseq.profile``: Python binds an imported submodule to its
package's attribute of the same name, which would replace the function ``kseq.profile``.
"""

from __future__ import annotations

import importlib
import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import keras
import numpy as np

from kseq.datasets.base import Dataset
from kseq.datasets.view import ModelView
from kseq.errors import KseqError, StructureError
from kseq.sources.hdf5 import HDF5Source
from kseq.structure import as_fed
from kseq.validators import integer
from kseq.workers import batch_context
from kseq.workers.tree import flatten

__all__ = ["STAGES", "Profile", "load_target", "profile"]

# key -> label, in batch order. "getitem" stands for the whole batch of a dataset whose stages kseq cannot see.
STAGES: dict[str, str] = {
    "sampler": "sampler",
    "read": "source read",
    "build": "build_batch",
    "getitem": "__getitem__ (whole batch)",
    "transport": "transport from workers",
    "adapt": "adaptation to the model",
}
_WORKER_STAGES = ("sampler", "read", "build", "getitem")
_INPUT_BOUND = 0.15  # the step waits on data at least this share of the time: input-bound
_PAGE = resource.getpagesize()


@dataclass(frozen=True)
class Profile:
    """What :func:`profile` measured; ``print(p)`` shows the table, ``p.plot()`` the bars.

    Times are seconds per batch. ``stages`` holds the stages timed in this process, one batch at a
    time (the median over the batches timed); in a worker pool the sampler, the read and
    ``build_batch`` run in ``workers`` processes or threads at once, so they cost ``stage / workers``
    per delivered batch (:meth:`cost`).

    Example:
        >>> import numpy as np, kseq
        >>> ds = kseq.Dataset({"x": np.zeros((256, 8), "float32")}, batch_size=32, shuffle=False)
        >>> p = kseq.profile(ds, batches=4, epochs=1)
        >>> sorted(p.stages), p.batches, p.batch_bytes
        (['build', 'read', 'sampler'], 4, 1024)
        >>> p.bottleneck in p.stages, p.wait_fraction is None
        (True, True)
    """

    name: str
    mode: str  # "inline", "threads" or "processes"
    workers: int
    batches: int  # per pass
    passes: int
    batch_bytes: int
    first_batch_s: float
    delivered_s: tuple[float, ...] = field(repr=False)  # every batch of the delivery passes but the first
    stages: dict[str, float] = field(default_factory=dict)
    page_faults: float = 0.0  # minor page faults in this process per delivered batch
    step_s: float | None = None  # the model's step through fit on the batches held in memory
    fit_s: float | None = None  # a step through fit on the dataset
    # minor page faults per step that fit on the dataset takes beyond fit on the held batches: TensorFlow changes
    # glibc's thresholds inside a process's first fit, after the delivery passes (NOTE [ malloc thresholds ])
    fit_page_faults: float | None = None
    # minor page faults per step of fit on the held batches: what fit on any PyDataset takes on TensorFlow once
    # glibc's thresholds changed, in training and in validation alike (benchmarks/bench_validation.py)
    fit_held_page_faults: float | None = None
    advice: tuple[str, ...] = ()
    hints: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- what was measured, derived ------------------------------------------------

    @property
    def total_s(self) -> float:
        """Seconds per delivered batch, the first (a cold start) left out: inline the median, as for the
        stages (NOTE [ what profile measures ]); with workers the mean (a pool delivers unevenly)."""
        average = np.median if self.mode == "inline" else np.mean
        return float(average(self.delivered_s))

    @property
    def rate(self) -> float:
        """Batches per second delivered to ``fit``."""
        return 1.0 / self.total_s

    @property
    def mb_per_s(self) -> float:
        return self.rate * self.batch_bytes / 1e6

    def cost(self, stage: str) -> float:
        """What ``stage`` costs per delivered batch: worker stages are shared among the workers."""
        seconds = self.stages.get(stage, 0.0)
        return seconds / self.workers if self.mode != "inline" and stage in _WORKER_STAGES else seconds

    @property
    def other_s(self) -> float:
        """Inline: the delivered total less the stages (kseq's bookkeeping); with workers, not defined (0)."""
        return self.total_s - sum(self.stages.values()) if self.mode == "inline" else 0.0

    @property
    def wait_fraction(self) -> float | None:
        """The share of a training step spent waiting on data (``None`` without a model)."""
        if self.step_s is None or self.fit_s is None:
            return None
        waited = min(self.fit_s - self.step_s, self.total_s)  # NOTE [ what profile measures ]
        return min(1.0, max(0.0, waited / self.fit_s))

    @property
    def input_bound(self) -> bool | None:
        wait = self.wait_fraction
        return None if wait is None else wait >= _INPUT_BOUND

    @property
    def bottleneck(self) -> str:
        """The stage that sets the pace (a key of :data:`STAGES`), or ``"model step"`` when the input keeps up."""
        if self.input_bound is False:
            return "model step"
        return max(self.stages, key=self.cost)

    @property
    def verdict(self) -> str:
        slowest = STAGES.get(self.bottleneck, self.bottleneck)
        wait = self.wait_fraction
        if wait is None:
            share = self.cost(self.bottleneck) / self.total_s
            return (f"input alone: {self.rate:,.1f} batches/s; slowest stage {slowest} ({share:.0%} of a delivered "
                    "batch). Pass model= to learn whether training waits on it.")
        if self.input_bound:
            return f"input-bound: the step waits on data {wait:.0%} of the time; slowest stage: {slowest}"
        return f"model-bound: the step waits on data {wait:.0%} of the time; the input keeps up"

    # -- presentation ------------------------------------------------------------

    def table(self) -> str:
        pool = "inline" if self.mode == "inline" else f"{self.workers} {self.mode}"
        lines = [
            f"kseq.profile: {self.name}, {pool}, {self.batches} batches x {self.passes} passes, "
            f"{_size(self.batch_bytes)} per batch",
            f"  delivered: {self.rate:,.1f} batches/s, {self.mb_per_s:,.1f} MB/s; first batch "
            f"{1e3 * self.first_batch_s:,.1f} ms" + ("" if self.mode == "inline" else " (pool start included)"),
            f"  {'stage (median)':<30} {'where':<14} {'ms/batch':>9} {'share':>6}",
        ]
        for stage, seconds in self.stages.items():
            where = "main" if stage not in _WORKER_STAGES or self.mode == "inline" else f"{self.workers} workers"
            share = self.cost(stage) / self.total_s
            lines.append(f"  {STAGES[stage]:<30} {where:<14} {1e3 * seconds:>9.3f} {share:>6.0%}")
        if self.mode == "inline":
            lines.append(f"  {'other (kseq bookkeeping)':<30} {'main':<14} {1e3 * self.other_s:>9.3f} "
                         f"{self.other_s / self.total_s:>6.0%}")
        lines.append(f"  {'delivered (measured)':<30} {'main':<14} {1e3 * self.total_s:>9.3f} {1:>6.0%}")
        if self.step_s is not None and self.fit_s is not None:
            lines.append(f"  {'model step, held batches':<30} {'fit':<14} {1e3 * self.step_s:>9.3f}")
            lines.append(f"  {'step, fit on this dataset':<30} {'fit':<14} {1e3 * self.fit_s:>9.3f}")
        if self.fit_page_faults is not None:
            held = "" if self.fit_held_page_faults is None else f" ({self.fit_held_page_faults:,.0f} a step there)"
            lines.append(f"  page faults per batch: {self.page_faults:,.0f} delivered, {self.fit_page_faults:,.0f} "
                         f"more per step through fit than on held batches{held}")
        lines.append(f"verdict: {self.verdict}")
        lines += [f"  - {line}" for line in self.advice]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self) -> Any:
        """A figure: each stage's cost per delivered batch (and the model's step), and batches/s batch by batch.

        Needs matplotlib (``pip install matplotlib``); returns the figure.
        """
        try:
            import matplotlib.pyplot as plt  # optional: only plots need it
        except ImportError as e:
            msg = "Profile.plot() needs matplotlib. Install it: pip install matplotlib (print(p) needs nothing)."
            raise KseqError(msg) from e
        fig, (bars, over_time) = plt.subplots(1, 2, figsize=(10, 3.2))
        labels = [STAGES[s] for s in self.stages] + (["other"] if self.mode == "inline" else [])
        costs = [self.cost(s) for s in self.stages] + ([max(self.other_s, 0.0)] if self.mode == "inline" else [])
        if self.step_s is not None:
            labels, costs = [*labels, "model step"], [*costs, self.step_s]
        colours = ["C3" if label == STAGES.get(self.bottleneck, self.bottleneck) else "C0" for label in labels]
        bars.barh(labels[::-1], [1e3 * c for c in costs][::-1], color=colours[::-1])
        bars.set_xlabel("ms per delivered batch")
        bars.set_title(self.verdict.split(";")[0], fontsize=9)
        rates = 1.0 / np.asarray(self.delivered_s)
        over_time.plot(np.arange(2, len(rates) + 2), rates, marker=".", lw=1, label="delivered")
        if self.step_s is not None:
            over_time.axhline(1.0 / self.step_s, color="k", ls="--", lw=1, label="model step (held batches)")
        over_time.set(xlabel="batch (delivery passes)", ylabel="batches/s", yscale="log",
                      title=f"{self.workers if self.mode != 'inline' else 'no'} workers ({self.mode})")
        over_time.legend(fontsize=8)
        fig.tight_layout()
        return fig


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e3:,.1f} kB" if nbytes < 1e6 else f"{nbytes / 1e6:,.1f} MB"


def profile(ds: Any, model: Any = None, *, batches: int | None = None, epochs: int = 2) -> Profile:
    """Time ``ds``'s batches stage by stage and, with ``model``, say whether training waits on them.

    Args:
        ds: a kseq :class:`~kseq.Dataset`, a :class:`~kseq.ModelView` of one, or any
            ``keras.utils.PyDataset`` (timed as one stage, ``__getitem__``).
        model: a built, compiled Keras model. ``profile`` trains it on the batches to time its
            step (``fit`` on the batches held in memory and on ``ds``, in turns), and puts its weights
            and optimizer state back afterwards. A kseq dataset (or view) is read through
            ``ds.for_model(model)``; any other PyDataset must already give what the model takes, and
            is read inline by the stage and delivery passes (Keras's own pool, if it has one, runs
            in the ``fit`` turns only).
        batches: batches per pass (default: ``min(len(ds), 20)``): the first ones of each epoch.
        epochs: timed passes over them (with a model, ``fit`` runs one more of each, untimed, to compile).

    Returns:
        a :class:`Profile`: rates, first-batch latency, seconds per stage, the verdict and advice.
        See NOTE [ what profile measures ].

    Raises:
        StructureError: ``batches`` or ``epochs`` is not a positive integer, ``model`` is not
            compiled, or its inputs do not fit the batches (see :func:`kseq.check`).
    """
    if model is not None and getattr(model, "optimizer", None) is None:
        msg = (f"profile(model=...) trains the model to time its step. Received an uncompiled model "
               f"{model.name!r}. Call model.compile(...) first.")
        raise StructureError(msg)
    data = ds.dataset if isinstance(ds, ModelView) else ds
    feed = ds.for_model(model) if model is not None and isinstance(ds, (Dataset, ModelView)) else ds
    count = min(len(feed), 20) if batches is None else integer(batches, "batches", minimum=2)
    count = min(count, len(feed))
    passes = integer(epochs, "epochs", minimum=1)
    start_epoch = int(getattr(data, "epoch", 0))
    mode, workers = _pool(data)
    try:
        stages, batch_bytes = _time_stages(data, feed, count, passes, start_epoch)
        first, delivered, faults = _time_delivery(data, feed, count, passes, start_epoch)
        if mode != "inline":
            stages["transport"] = _time_transport(data, count, stages, workers, start_epoch + passes)
            stages = {k: stages[k] for k in STAGES if k in stages}  # batch order: transport before adapt
        step_s = fit_s = fit_faults = held_faults = None
        if model is not None:
            step_s, fit_s, fit_faults, held_faults = _time_steps(model, data, feed, count, passes, start_epoch)
    finally:
        _set_epoch(data, start_epoch)
    result = Profile(
        name=type(data).__name__, mode=mode, workers=workers, batches=count, passes=passes,
        batch_bytes=batch_bytes, first_batch_s=first, delivered_s=tuple(delivered), stages=stages,
        page_faults=faults, step_s=step_s, fit_s=fit_s, fit_page_faults=fit_faults,
        fit_held_page_faults=held_faults, hints=_hints(data),
    )
    return _with_advice(result)


# -- the passes ------------------------------------------------------------------------------------


def _pool(data: Any) -> tuple[str, int]:
    config = getattr(data, "worker_config", None)
    if config is None:  # not a kseq dataset: Keras's own pool (if any) runs in fit's adapter, not in ds[i]
        return "inline", 1
    return config.mode, (1 if config.mode == "inline" else config.workers)


def _staged(data: Any) -> bool:
    """Whether ``get_batch`` is kseq's composition, so its parts can be timed one by one."""
    return isinstance(data, Dataset) and type(data).get_batch is Dataset.get_batch


def _time_stages(data: Any, feed: Any, count: int, passes: int, epoch0: int) -> tuple[dict[str, float], int]:
    structure = getattr(feed, "model_structure", None)
    keys = ("sampler", "read", "build") if _staged(data) else ("getitem",)
    times: dict[str, list[float]] = {key: [] for key in ((*keys, "adapt") if structure else keys)}
    nbytes = 0
    for epoch in range(epoch0, epoch0 + passes):
        for index in range(count):
            if _staged(data):
                with batch_context(epoch, index):  # as Dataset.get_batch: batch_rng() and batch_position() work
                    t0 = time.perf_counter()
                    indices = data.sampler.indices(epoch, index)
                    t1 = time.perf_counter()
                    rows = data.read_rows(indices)
                    t2 = time.perf_counter()
                    batch = data.build_batch(rows)
                    t3 = time.perf_counter()
                times["sampler"].append(t1 - t0)
                times["read"].append(t2 - t1)
                times["build"].append(t3 - t2)
                batch = batch if isinstance(batch, tuple) else (batch,)
            else:
                t0 = time.perf_counter()
                batch = data.get_batch(index, epoch) if hasattr(data, "get_batch") else data[index]
                times["getitem"].append(time.perf_counter() - t0)
            nbytes = max(nbytes, sum(a.nbytes for a in flatten(batch)[1]))
            if structure is not None:
                t0 = time.perf_counter()
                as_fed(structure, batch)
                times["adapt"].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}, nbytes


def _time_delivery(data: Any, feed: Any, count: int, passes: int, epoch0: int) -> tuple[float, list[float], float]:
    """``feed[i]`` as fit reads it; the pool closed first so the first batch includes its start."""
    if isinstance(data, Dataset):
        data.close()
    times: list[float] = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for epoch in range(epoch0, epoch0 + passes):
        _set_epoch(data, epoch)
        for index in range(count):
            t0 = time.perf_counter()
            feed[index]
            times.append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return times[0], times[1:] or times, faults / len(times)


def _time_transport(data: Dataset, count: int, stages: dict[str, float], workers: int, epoch: int) -> float:
    """The main process's cost of a batch the workers have already computed (NOTE [ what profile measures ])."""
    ahead = max(1, min(data.worker_config.max_queue_size, count - 1, 8))
    compute = sum(stages[s] for s in _WORKER_STAGES if s in stages)
    _set_epoch(data, epoch)
    data[0]
    time.sleep(min(10.0, 0.05 + 2.0 * compute * ahead / workers))  # the workers fill the queue
    times = []
    for index in range(1, ahead + 1):
        t0 = time.perf_counter()
        data[index % len(data)]
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


class _Held(keras.utils.PyDataset):
    """Batches held in memory: the model's step with no input cost (the floor of fit's PyDataset path)."""

    def __init__(self, held: Sequence[Any]) -> None:
        super().__init__()
        self.held = held

    def __len__(self) -> int:
        return len(self.held)

    def __getitem__(self, index: int) -> Any:
        return self.held[index]


class _First(keras.utils.PyDataset):
    """The first ``count`` batches of ``feed``, a new epoch of ``data`` after each (no partial-epoch warning)."""

    def __init__(self, data: Any, feed: Any, count: int) -> None:
        super().__init__()
        self.data, self.feed, self.count = data, feed, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        return self.feed[index]

    def on_epoch_end(self) -> None:
        _set_epoch(self.data, int(getattr(self.data, "epoch", 0)) + 1)


class _StepTimer(keras.callbacks.Callback):
    """Seconds per step from the first batch's end to the last's: compiles and epoch starts left out."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[tuple[int, float]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:  # noqa: ARG002 - Keras's signature
        self.ends.append((batch, time.perf_counter()))

    def seconds_per_step(self) -> float:
        (first, start), (last, end) = self.ends[0], self.ends[-1]
        return (end - start) / (last - first) if last > first else math.nan


def _time_steps(
    model: Any, data: Any, feed: Any, count: int, passes: int, epoch0: int
) -> tuple[float, float, float, float]:
    """Best of ``passes`` one-epoch fits on the held batches and on the dataset, in turns, after one of each;
    the page faults per step the dataset's fits took beyond the held batches', and the held batches' own
    (fewest of the turns)."""
    saved = _snapshot(model)
    try:
        _set_epoch(data, epoch0)
        held = _Held([feed[i] for i in range(count)])
        best, faults = [math.inf, math.inf], [math.inf, math.inf]
        for turn in range(1 + passes):  # turn 0 compiles and starts the pool: untimed
            for which, source in enumerate((held, _First(data, feed, count))):
                _set_epoch(data, epoch0 + turn)
                timer = _StepTimer()
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                model.fit(source, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
                if turn:
                    best[which] = min(best[which], timer.seconds_per_step())
                    faults[which] = min(faults[which], (resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                                                        - before) / count)
    finally:
        _restore(saved)
    return best[0], best[1], max(0.0, faults[1] - faults[0]), faults[0]


def _snapshot(model: Any) -> list[tuple[Any, np.ndarray]]:
    """The model's weights and optimizer state (the optimizer built first, as fit would)."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = [*model.weights, *optimizer.variables]
    return [(v, keras.ops.convert_to_numpy(v)) for v in variables]


def _restore(saved: list[tuple[Any, np.ndarray]]) -> None:
    for variable, value in saved:
        variable.assign(value)


def _set_epoch(data: Any, epoch: int) -> None:
    setter: Callable[[int], None] | None = getattr(data, "set_epoch", None)
    if setter is not None:
        setter(epoch)


# -- advice ------------------------------------------------------------------------------------------


def _hints(data: Any) -> dict[str, Any]:
    source = getattr(data, "source", None)
    config = getattr(data, "worker_config", None)
    return {
        "hdf5": isinstance(source, HDF5Source),
        "blocks": isinstance(source, HDF5Source) and "blocks" in source.readers.values(),
        "shuffle": getattr(data, "shuffle", None),
        "queue": None if config is None else config.max_queue_size,
        "kseq": isinstance(data, Dataset),
    }


def _with_advice(p: Profile) -> Profile:
    advice: list[str] = []
    cores = os.cpu_count() or 1
    stage = p.bottleneck
    if stage == "model step":
        advice.append("the input keeps up: a faster input will not speed up training; look at the model "
                      "(batch size, jit_compile, mixed precision) instead")
    elif stage in _WORKER_STAGES:
        advice += _compute_advice(p, stage, cores)
    elif stage == "transport":
        advice.append(f"handing {p.batch_bytes / 1e6:,.1f} MB batches over from processes costs "
                      f"{1e3 * p.stages['transport']:.1f} ms each: send smaller batches (uint8 images, cast "
                      "in the model), or threads (workers=N without use_multiprocessing) when build_batch is "
                      "numpy work that releases the GIL")
    elif stage == "adapt":
        advice.append("putting batches into the model's structure is the slowest part: build the model "
                      "from a dict of named inputs, which takes kseq's named batches as they are")
    faults, where = max((p.page_faults, "per batch"), (p.fit_page_faults or 0.0, "per step of fit on it"),
                        (p.fit_held_page_faults or 0.0, "per step of fit, even on batches held in memory"))
    if faults * _PAGE > 2**20 and faults * _PAGE > 0.25 * p.batch_bytes:
        advice.append(f"this process took {faults:,.0f} page faults {where} ({faults * _PAGE / 1e6:,.1f} MB): "
                      "glibc returns batch-sized buffers to the kernel and faults them in again (TensorFlow "
                      "sets this up in a process's first fit); call kseq.tune_malloc() before fit (NOTE "
                      "[ malloc thresholds ])")
    if p.mode != "inline" and p.input_bound and p.total_s > 1.5 * max(p.cost(s) for s in p.stages):
        advice.append(f"the workers are idle part of the time: raise max_queue_size (now {p.hints['queue']}) "
                      "so more batches are computed ahead, and pass shuffle=False to fit (its default "
                      "shuffle=True asks for batches out of order, which stops kseq's prefetching)")
    return replace(p, advice=tuple(advice))


def _compute_advice(p: Profile, stage: str, cores: int) -> list[str]:
    advice = []
    label = STAGES[stage]
    compute = sum(p.stages.get(s, 0.0) for s in _WORKER_STAGES)
    need = cores if p.step_s is None else min(cores, max(2, math.ceil(compute / p.step_s)))
    if p.mode == "inline":
        advice.append(f"compute batches in parallel: workers={need}, use_multiprocessing=True (processes run "
                      "Python and numpy code that holds the GIL side by side; threads, without "
                      f"use_multiprocessing, suffice when {label} mostly waits on I/O or on numpy calls that "
                      "release the GIL)")
    elif p.mode == "threads":
        advice.append(f"threads share the GIL: try use_multiprocessing=True (workers={max(need, p.workers)})")
    elif p.workers < need:
        advice.append(f"more workers: workers={need} (this machine has {cores} cores)")
    else:
        advice.append(f"{p.workers} workers on {cores} cores: make {label} cheaper (vectorise per-sample "
                      "loops; store the data in the dtype and layout the model takes, e.g. uint8 images "
                      "cast in the model)")
    if stage == "read" and p.hints["hdf5"] and p.hints["blocks"] and p.hints["shuffle"] is True:
        advice.append('the HDF5 file is read in chunks: shuffle="block" reads each chunk about once per epoch '
                      "instead of once per row")
    elif stage == "read" and p.hints["hdf5"]:
        advice.append("python -m kseq inspect FILE shows how each field is read (memmap, pread or blocks); "
                      "`python -m kseq pack` writes a contiguous, uncompressed layout that reads fastest")
    return advice


# -- python -m kseq profile --------------------------------------------------------------------------


def load_target(target: str, *, model: str | None = None, batch_size: int = 64, shuffle: str = "true",
                workers: int = 1, processes: bool = False, seed: int = 0) -> tuple[Any, Any]:
    """What ``python -m kseq profile`` profiles: ``(dataset, model or None)``.

    ``target`` is an HDF5 file (a :class:`~kseq.Dataset` over every field, with these settings) or
    ``module:function`` returning a dataset, or ``(dataset, model)``; ``model`` is ``module:function``
    returning a compiled Keras model.
    """
    if target.endswith((".h5", ".hdf5", ".hdf")) or os.path.isfile(target):
        order: bool | str = {"true": True, "false": False}.get(shuffle, shuffle)
        ds: Any = Dataset(HDF5Source(target), batch_size=batch_size, shuffle=order,  # type: ignore[arg-type]
                          seed=seed, workers=workers, use_multiprocessing=processes)
        made = None
    else:
        made = _call(target, "a dataset, or (dataset, model)")
        ds, made = made if isinstance(made, tuple) else (made, None)
    return ds, (_call(model, "a compiled Keras model") if model else made)


def _call(spec: str, what: str) -> Any:
    module, _, function = spec.partition(":")
    if not module or not function:
        msg = f"Expected an HDF5 file or module:function returning {what}. Received {spec!r}."
        raise StructureError(msg)
    try:
        factory = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        msg = (f"Cannot import {module!r} and read {function!r} from it ({e}). Expected module:function "
               f"returning {what}, importable from the current directory or sys.path.")
        raise StructureError(msg) from e
    return factory()
