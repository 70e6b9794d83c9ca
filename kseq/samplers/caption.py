"""CaptionSampler: which captions make each batch of a CaptionDataset, a pure function of (seed, epoch, batch)."""

from __future__ import annotations

import numpy as np

from kseq.samplers.base import EpochCache, check_batch_size, epoch_rng, num_batches
from kseq.validators import batch_index, integer

__all__ = ["CaptionSampler"]


class CaptionSampler:
    """Which captions make batch ``i`` of epoch ``e``: a pure function of ``(seed, e, i)``.

    Captions are numbered ``0..n-1`` and grouped by image (``image_of`` is sorted).
    ``one_per_image``: each epoch draws one caption per image from
    ``epoch_rng(seed, e)``; otherwise every caption appears once per epoch.
    ``shuffle=False`` fixes everything at epoch 0's draw: the same captions, in
    image order, every epoch (a validation set that does not move).
    ``bucket_window``: sort each window of that many batches by length, then shuffle
    the order of the full batches, so batches hold captions of similar length.

    Example:
        >>> s = CaptionSampler(np.array([0, 0, 1, 1, 1]), np.array([3, 4, 3, 5, 6]), one_per_image=True,
        ...                    batch_size=2, seed=0)
        >>> len(s), sorted(np.array([0, 0, 1, 1, 1])[s.indices(0, 0)].tolist())
        (1, [0, 1])
    """

    def __init__(
        self,
        image_of: np.ndarray,
        lengths: np.ndarray,
        *,
        one_per_image: bool,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_remainder: bool = False,
        bucket_window: int | None = None,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.one_per_image = bool(one_per_image)
        _, self._starts, self._counts = np.unique(np.asarray(image_of), return_index=True, return_counts=True)
        self.n = len(self._starts) if self.one_per_image else len(self.lengths)
        self.batch_size = check_batch_size(batch_size)
        self.seed, self.shuffle, self.bucket_window = integer(seed, "seed", minimum=0), bool(shuffle), bucket_window
        self._len = num_batches(self.n, self.batch_size, drop_remainder=bool(drop_remainder))
        self._cache = EpochCache()

    def __len__(self) -> int:
        return self._len

    def order(self, epoch: int) -> np.ndarray:
        """The caption ids of one epoch, batch after batch (read-only)."""
        return self._cache.get(epoch, self._make)

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        start = batch_index(batch, self._len) * self.batch_size
        return self.order(epoch)[start : start + self.batch_size]

    def _make(self, epoch: int) -> np.ndarray:
        rng = epoch_rng(self.seed, epoch if self.shuffle else 0)  # shuffle=False: the same captions every epoch
        if self.one_per_image:
            ids = self._starts + (rng.random(len(self._starts)) * self._counts).astype(np.int64)
        else:
            ids = np.arange(self.n, dtype=np.int64)
        if self.shuffle:
            ids = ids[rng.permutation(len(ids))]
        return ids if self.bucket_window is None else self._bucket(ids, rng)

    def _bucket(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        window = np.arange(len(ids)) // (self.bucket_window * self.batch_size)  # type: ignore[operator]
        ids = ids[np.lexsort((self.lengths[ids], window))]  # stable: ties keep the shuffled order
        full = len(ids) // self.batch_size * self.batch_size
        if not self.shuffle or full == 0:
            return ids
        batches = ids[:full].reshape(-1, self.batch_size)[rng.permutation(full // self.batch_size)]
        return np.concatenate([batches.reshape(-1), ids[full:]])  # a partial batch stays last
