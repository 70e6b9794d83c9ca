"""Shard: one process's slice of every global batch.

# NOTE [ shards of a global batch ]
``batch_size`` stays the global batch size ``B``. Process ``p`` of ``n`` takes rows
``[p * B/n, (p + 1) * B/n)`` of every global batch (the first axis of the sampler's
indices: rows, pairs, or streams), so the union of the processes' batch ``k`` is exactly
batch ``k`` of the unsharded dataset, and ``n`` processes train on the global batches of
one. Each process reads only its own rows.

Every process has ``len(ds)`` batches of ``B/n`` rows in every epoch: a collective
waits for the slowest process forever, so no process may have one batch less or one row
fewer. A last global batch of ``B' < B`` rows (``drop_remainder=False``) therefore gives
some processes fewer real rows than ``B/n``, or none. Their batch is padded to ``B/n``
rows with sample weight 0, never with a duplicated sample that counts. With Keras's
default ``sum_over_batch_size`` loss, a padded global batch would weigh ``B'/B`` of the
unsharded one (the padding rows still count in the denominator), so the real rows of a
short global batch are weighted ``B/B'`` on every process: the mean over processes of
their losses is then the loss of the unsharded last batch. A process with no real row in
that batch reads one row of the global batch (another process's) to give its padding a
shape; it weighs 0. So that every batch has one structure (TensorFlow fixes it from the
first two), a sharded dataset's batches with targets always carry sample weights: ones
where the dataset gives none. Batches without targets (``predict``) are padded alike and
have no weights: drop the padding rows of the last batch from the predictions.
``drop_remainder=True`` leaves the last global batch out instead, on every process alike.
``B`` must be a multiple of ``n``: refused at construction otherwise.

All of this lives here, in the sampler layer: a dataset reads its batches from
``ShardedSampler(sampler, shard, B)`` (``ds.local_sampler``), whose :class:`Part` of each
global batch says which rows to read and pads and weighs the batch built from them. A
dataset whose rows depend on the whole global batch (``CaptionDataset``: the batch's width
and the "mean" token weight) reads ``part.whole``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from kseq.errors import StructureError
from kseq.validators import integer

__all__ = ["Part", "Shard", "ShardedSampler", "pad_batch", "resolve_shard"]


@dataclass(frozen=True)
class Shard:
    """Process ``index`` of ``count``: a slice of every global batch (NOTE [ shards of a global batch ]).

    Example:
        >>> shard = Shard(1, 2)
        >>> global_batch = np.arange(10, 18)
        >>> shard.rows_per_batch(8), shard.take(global_batch, 8).tolist()
        (4, [14, 15, 16, 17])
        >>> shard.take(np.arange(10, 15), 8).tolist()  # a short last batch: rows 4.. of 5
        [14]
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        count = integer(self.count, "shard count", minimum=1)
        index = integer(self.index, "shard index", minimum=0, maximum=count - 1)
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "index", index)

    @property
    def single(self) -> bool:
        return self.count == 1

    def rows_per_batch(self, batch_size: int) -> int:
        """``B / n``: every process's batch size."""
        return batch_size // self.count

    def take(self, indices: np.ndarray, batch_size: int) -> np.ndarray:
        """This process's rows of one global batch (fewer than ``B/n``, or none, in a short last batch)."""
        if self.single:
            return indices
        b = self.rows_per_batch(batch_size)
        return indices[self.index * b : (self.index + 1) * b]

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.count:
            lower, upper = batch_size // self.count * self.count, -(-batch_size // self.count) * self.count
            msg = (
                f"batch_size is the global batch size and must be a multiple of the process count: each of the "
                f"{self.count} processes takes batch_size/{self.count} rows of every global batch. Received "
                f"batch_size={batch_size}. Pass batch_size={upper} (or {max(lower, self.count)})."
            )
            raise StructureError(msg)


class Part:
    """This process's part of global batch ``index`` of ``epoch`` (NOTE [ shards of a global batch ]).

    ``whole``: the global batch's rows; ``rows``: this process's (fewer than ``B/n``, or none,
    in a short last batch); :attr:`read`: what to read (one borrowed row when there is none).

    Example:
        >>> part = Part(0, 2, whole=np.array([8, 9]), rows=np.array([], int), shard=Shard(1, 2), batch_size=4)
        >>> part.read.tolist()  # process 1 has no row of the short last batch: it borrows one to shape its padding
        [8]
        >>> x, y, w = part.finish(({"x": np.array([8.0])}, np.array([1.0])))
        >>> x["x"].tolist(), w.tolist()
        ([0.0, 0.0], [0.0, 0.0])
    """

    __slots__ = ("batch_size", "epoch", "index", "rows", "shard", "whole")  # one per batch: a plain class is cheap

    def __init__(self, epoch: int, index: int, whole: np.ndarray, rows: np.ndarray, shard: Shard,
                 batch_size: int) -> None:
        self.epoch, self.index, self.whole, self.rows = epoch, index, whole, rows
        self.shard, self.batch_size = shard, batch_size  # batch_size: B, the global batch size

    @property
    def read(self) -> np.ndarray:
        return self.rows if len(self.rows) else self.whole[:1]

    def finish(self, batch: tuple) -> tuple:
        """The batch built from :attr:`read`: as is unsharded, else padded to ``B/n`` rows and weighted."""
        if self.shard.single:
            return batch
        size = self.shard.rows_per_batch(self.batch_size)
        return pad_batch(batch, size, len(self.rows), self.batch_size / len(self.whole))


class ShardedSampler:
    """A sampler of global batches cut to one process's shard: the sampler a dataset's batches come from.

    ``len`` is the global sampler's (every process has as many batches); :meth:`indices` gives this
    process's rows of a global batch and :meth:`part` what a dataset needs to build and pad it.

    Example:
        >>> from kseq.samplers import SequentialSampler
        >>> s = ShardedSampler(SequentialSampler(10, batch_size=4, drop_remainder=False), Shard(1, 2), 4)
        >>> len(s), s.indices(0, 0).tolist(), s.indices(0, 2).tolist()  # the last global batch is [8, 9]
        (3, [2, 3], [])
        >>> part = s.part(0, 2)
        >>> part.read.tolist(), part.finish(({"x": np.array([8.0])}, np.array([1.0])))[2].tolist()
        ([8], [0.0, 0.0])
    """

    def __init__(self, sampler: Any, shard: Shard, batch_size: int) -> None:
        self.sampler, self.shard, self.batch_size = sampler, shard, batch_size

    def __len__(self) -> int:
        return len(self.sampler)

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        return self.shard.take(self.sampler.indices(epoch, batch), self.batch_size)

    def part(self, epoch: int, batch: int) -> Part:
        whole = self.sampler.indices(epoch, batch)
        return Part(epoch, batch, whole, self.shard.take(whole, self.batch_size), self.shard, self.batch_size)


def resolve_shard(shard: Any) -> Shard:
    """``None`` -> one process; ``(index, count)`` or a :class:`Shard` as given; ``"auto"`` from the running engine.

    ``"auto"`` asks, without importing anything: JAX (``jax.process_index()`` and
    ``jax.process_count()``, after ``jax.distributed.initialize``), PyTorch
    (``torch.distributed`` when initialised); one process otherwise. Call it after the
    engine is initialised. A ``TF_CONFIG`` with several workers is refused with the reason:
    Keras 3.15 cannot train a PyDataset under ``MultiWorkerMirroredStrategy``.
    """
    if shard is None:
        return Shard(0, 1)
    if isinstance(shard, Shard):
        return shard
    if isinstance(shard, str) and shard == "auto":
        return _from_engine()
    if isinstance(shard, (tuple, list)) and len(shard) == 2:
        return Shard(*shard)
    msg = (
        'shard must be None (one process), "auto" (from jax.distributed, torch.distributed or TF_CONFIG), or '
        f"(process index, process count). Received shard={shard!r}."
    )
    raise StructureError(msg)


def _from_engine() -> Shard:
    jax = sys.modules.get("jax")
    if jax is not None and jax.process_count() > 1:
        return Shard(jax.process_index(), jax.process_count())
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Shard(dist.get_rank(), dist.get_world_size())
    return _from_tf_config(os.environ.get("TF_CONFIG"))


def _from_tf_config(config: str | None) -> Shard:
    if not config:
        return Shard(0, 1)
    try:
        parsed = json.loads(config)
        workers = len(parsed.get("cluster", {}).get("worker", [])) + len(parsed.get("cluster", {}).get("chief", []))
        task = parsed.get("task", {})
        index = int(task.get("index", 0)) + (
            len(parsed["cluster"].get("chief", [])) if task.get("type") == "worker" else 0
        )
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        msg = f"TF_CONFIG is not the JSON that tf.distribute reads ({e}). Received TF_CONFIG={config[:200]!r}."
        raise StructureError(msg) from e
    if workers > 1:
        msg = (
            f"shard='auto' found TF_CONFIG with {workers} workers (this is worker {index}), but Keras 3.15's "
            "TensorFlow trainer cannot train a PyDataset under tf.distribute.MultiWorkerMirroredStrategy: measured "
            "with two local workers, fit fails with \"ValueError: Attempt to convert a value ({'x': PerReplica:"
            "{...}})\". Expected: the JAX backend with keras.distribution.DataParallel and shard='auto' (README: "
            "Training on several processes or hosts). If you feed each TensorFlow worker yourself, pass "
            f"shard=({index}, {workers})."
        )
        raise StructureError(msg)
    return Shard(0, 1)


def pad_batch(batch: tuple, rows: int, real: int, scale: float) -> tuple:
    """One process's batch with weights, padded to ``rows`` if short (NOTE [ shards of a global batch ]).

    ``batch`` is ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)`` built from ``real`` rows
    (or from one borrowed row when ``real`` is 0). Every array keeps its first ``real`` rows
    and gets zero rows up to ``rows``. The sample weights of the real rows are multiplied by
    ``scale`` (``B / B'``) and the padding weighs 0; a batch without weights gets them, shaped
    like its targets (one weight per sample, or per output).

    Example:
        >>> x, y, w = pad_batch(({"a": np.ones((1, 2))}, np.ones(1)), rows=3, real=1, scale=1.5)
        >>> x["a"].shape, y.tolist(), w.tolist()
        ((3, 2), [1.0, 0.0, 0.0], [1.5, 0.0, 0.0])
    """
    x, *rest = batch
    out: list[Any] = [_map(x, lambda a: _pad(a, rows, real))]
    if not rest:
        return tuple(out)
    y = rest[0]
    out.append(_map(y, lambda a: _pad(a, rows, real)))
    if len(rest) > 1:
        weights = _map(rest[1], lambda w: _pad(np.asarray(w, np.float32) * np.float32(scale), rows, real))
    else:
        weights = _map(y, lambda _: _pad(np.full(real or 1, scale, np.float32), rows, real))
    out.append(weights)
    return tuple(out)


def _map(part: Any, fn: Any) -> Any:
    if isinstance(part, dict):
        return {k: fn(v) for k, v in part.items()}
    if isinstance(part, tuple):
        return tuple(fn(v) for v in part)
    return fn(part)


def _pad(array: Any, rows: int, real: int) -> np.ndarray:
    array = np.asarray(array)
    if real == rows == len(array):
        return array
    out = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    out[:real] = array[:real]
    return out
