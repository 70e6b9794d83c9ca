"""Sequential and seeded-shuffle samplers over ``n`` samples."""

from __future__ import annotations

import numpy as np

from kseq.samplers.base import EpochCache, check_batch_size, epoch_rng, num_batches
from kseq.validators import batch_index, integer

__all__ = ["SequentialSampler", "ShuffleSampler", "epoch_permutation"]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a permutation of ``range(n)`` from ``(seed, epoch)``."""
    return epoch_rng(seed, epoch).permutation(n)


class SequentialSampler:
    """Rows in order, ``batch_size`` at a time; the same every epoch.

    Example:
        >>> s = SequentialSampler(5, batch_size=2)
        >>> len(s), s.indices(0, 2).tolist()
        (3, [4])
    """

    def __init__(self, n: int, *, batch_size: int, drop_remainder: bool = False) -> None:
        self.n = integer(n, "n", minimum=0)
        self.batch_size = check_batch_size(batch_size)
        self.drop_remainder = bool(drop_remainder)
        self._len = num_batches(self.n, self.batch_size, drop_remainder=self.drop_remainder)

    def __len__(self) -> int:
        return self._len

    def indices(self, epoch: int, batch: int) -> np.ndarray:  # noqa: ARG002 - same every epoch
        start = batch_index(batch, self._len) * self.batch_size
        return np.arange(start, min(start + self.batch_size, self.n), dtype=np.int64)


class ShuffleSampler:
    """Every row exactly once per epoch, in an order drawn from ``(seed, epoch)``.

    With ``drop_remainder=True`` the last ``n % batch_size`` rows of each epoch's order
    are left out of that epoch (a different set every epoch).

    Example:
        >>> s = ShuffleSampler(6, batch_size=4, seed=0)
        >>> sorted(np.concatenate([s.indices(0, b) for b in range(len(s))]).tolist())
        [0, 1, 2, 3, 4, 5]
    """

    def __init__(self, n: int, *, batch_size: int, seed: int, drop_remainder: bool = False) -> None:
        self.n = integer(n, "n", minimum=0)
        self.batch_size = check_batch_size(batch_size)
        self.seed = integer(seed, "seed", minimum=0)
        self.drop_remainder = bool(drop_remainder)
        self._len = num_batches(self.n, self.batch_size, drop_remainder=self.drop_remainder)
        self._cache = EpochCache()

    def __len__(self) -> int:
        return self._len

    def order(self, epoch: int) -> np.ndarray:
        """The whole epoch's order (read-only)."""
        return self._cache.get(epoch, lambda e: epoch_permutation(self.n, self.seed, e))

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        start = batch_index(batch, self._len) * self.batch_size
        return self.order(epoch)[start : start + self.batch_size]
