"""Samplers say which rows make batch ``i`` of epoch ``e``.

A sampler is a pure function of ``(seed, epoch, batch)``: any worker, thread or
process, can compute any batch, and the result does not depend on who asks or in
what order. The only mutable state in kseq is the Dataset's epoch counter.

Seeds follow one rule everywhere: the generator for epoch ``e`` is
``np.random.default_rng([seed, e])`` and the one for batch ``i`` of it is
``np.random.default_rng([seed, e, i])``. No global RNG is used.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from kseq.validators import batch_index, integer

__all__ = ["Sampler", "batch_rng", "check_batch_size", "draw_seed", "epoch_rng", "num_batches"]


@runtime_checkable
class Sampler(Protocol):
    """Maps ``(epoch, batch)`` to the row indices of that batch.

    ``len(sampler)`` is the number of batches per epoch (the same every epoch).
    ``sampler.indices(epoch, batch)`` returns an integer array; its first dimension
    is the batch's sample dimension.

    Example:
        >>> from kseq.samplers import ShuffleSampler
        >>> s = ShuffleSampler(10, batch_size=4, seed=0)
        >>> isinstance(s, Sampler), len(s), len(s.indices(0, 2))
        (True, 3, 2)
    """

    def __len__(self) -> int: ...

    def indices(self, epoch: int, batch: int) -> np.ndarray: ...


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator for one epoch: ``default_rng([seed, epoch])``.

    Example:
        >>> epoch_rng(0, 1).permutation(5).tolist() == np.random.default_rng([0, 1]).permutation(5).tolist()
        True
    """
    return np.random.default_rng([seed, epoch])


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator for one batch, for per-sample random transforms in user code.

    Example:
        >>> batch_rng(0, 1, 2).random() == batch_rng(0, 1, 2).random() != batch_rng(0, 2, 1).random()
        True
    """
    return np.random.default_rng([seed, epoch, batch])


def draw_seed() -> int:
    """A fresh seed from the OS, to be stored and exposed so a run can be repeated.

    Example:
        >>> 0 <= draw_seed() < 2**32
        True
    """
    return int(np.random.SeedSequence().generate_state(1, np.uint32)[0])


def check_batch_size(batch_size: object) -> int:
    """``batch_size`` as an ``int`` >= 1: ``kseq.validators.integer(batch_size, "batch_size", minimum=1)``.

    Example:
        >>> check_batch_size(np.int64(32))
        32
        >>> check_batch_size(0)
        Traceback (most recent call last):
        ...
        kseq.errors.StructureError: batch_size must be ...
    """
    return integer(batch_size, "batch_size", minimum=1)


def num_batches(n: int, batch_size: int, *, drop_remainder: bool) -> int:
    """Batches in an epoch of ``n`` samples.

    Example:
        >>> num_batches(10, 4, drop_remainder=False), num_batches(10, 4, drop_remainder=True)
        (3, 2)
    """
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


# kseq/datasets/caption.py imports the batch-index rule under this name; kseq.validators.batch_index is its home.
check_batch_index = batch_index


class EpochCache:
    """Holds the orders of the two most recent epochs, so a batch costs a slice, not a permutation.

    Two, because prefetching runs into the start of the next epoch while the current
    one is still being served. Thread-safe (reads take no lock: the entries are an
    immutable tuple swapped whole); dropped when pickled and recomputed on demand.

    Example:
        >>> cache, made = EpochCache(), []
        >>> def make(epoch):
        ...     made.append(epoch)
        ...     return np.arange(3) + epoch
        >>> [cache.get(e, make).tolist() for e in (0, 1, 0, 2, 0)]
        [[0, 1, 2], [1, 2, 3], [0, 1, 2], [2, 3, 4], [0, 1, 2]]
        >>> made  # epoch 0 was dropped when epoch 2 came: two entries are kept
        [0, 1, 2, 0]
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: tuple[tuple[int, np.ndarray], ...] = ()

    def get(self, epoch: int, make: Callable[[int], np.ndarray]) -> np.ndarray:
        for cached, value in self._entries:
            if cached == epoch:
                return value
        with self._lock:
            for cached, value in self._entries:
                if cached == epoch:
                    return value
            value = make(epoch)
            value.flags.writeable = False
            self._entries = ((epoch, value), *self._entries[:1])
            return value

    def __getstate__(self) -> dict[str, object]:
        return {}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]
