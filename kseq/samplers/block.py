"""Block shuffle: a random order that reads chunked storage about one chunk at a time."""

from __future__ import annotations

import math

import numpy as np

from kseq.errors import StructureError
from kseq.samplers.base import EpochCache, check_batch_size, epoch_rng, num_batches
from kseq.validators import batch_index, integer

__all__ = ["BlockShuffleSampler", "block_permutation"]


def block_permutation(n: int, *, block_size: int, window: int, seed: int, epoch: int) -> np.ndarray:
    """One epoch's order: blocks of ``block_size`` rows shuffled, then rows shuffled within each
    run of ``window`` consecutive blocks of that shuffled order. A permutation of ``range(n)``
    drawn from ``epoch_rng(seed, epoch)``.

    Example:
        >>> order = block_permutation(10, block_size=2, window=2, seed=0, epoch=0)
        >>> sorted(order.tolist()) == list(range(10))
        True
        >>> len({int(i) // 2 for i in order[:4]})  # the first window: two whole blocks, mixed
        2
    """
    rng = epoch_rng(seed, epoch)
    blocks = rng.permutation(math.ceil(n / block_size))
    rows = (blocks[:, None] * block_size + np.arange(block_size)).ravel()
    group = np.repeat(np.arange(blocks.size) // window, block_size)
    keep = rows < n
    rows, group = rows[keep], group[keep]
    return rows[np.lexsort((rng.random(rows.size), group))]


class BlockShuffleSampler:
    """Every row exactly once per epoch, in a block-shuffled order drawn from ``(seed, epoch)``.

    Rows are grouped into blocks of ``block_size`` consecutive rows (for an
    :class:`~kseq.sources.HDF5Source`, ``src.block_size``: whole chunks of every field it
    reads in blocks, i.e. compressed ones; uncompressed fields are read directly in any order).
    Each epoch shuffles the blocks, then the rows within every window of ``window`` blocks,
    and cuts that order into batches. When ``batch_size <= window * block_size`` (and ``n`` is
    a multiple of ``block_size``; otherwise the window holding the short last block is smaller,
    and ``batch_size <= (window - 1) * block_size`` is enough) a batch draws from at most two
    windows, so a chunk cache of ``2 * window`` blocks reads each chunk once per epoch when
    batches are taken in order (pass ``shuffle=False`` to ``fit``: Keras's own batch
    shuffling would scatter the windows). Larger windows mix better and need more cache.

    A dataset uses it with ``shuffle="block"`` (a window of 16 blocks)::

        ds = kseq.Dataset(source, batch_size=64, shuffle="block")

    For another window, override ``make_sampler``::

        class Chunked(kseq.MultiInputDataset):
            def make_sampler(self):
                return BlockShuffleSampler.for_source(
                    self.source, batch_size=self.batch_size, seed=self.seed, window=4,
                    drop_remainder=self.drop_remainder)

    Args:
        n: number of rows.
        batch_size: rows per batch.
        block_size: rows per block (the unit read from storage).
        seed: the seed; epoch ``e`` uses ``np.random.default_rng([seed, e])``.
        window: blocks whose rows are mixed together.
        drop_remainder: leave out the last ``n % batch_size`` rows of each epoch's order.

    Example:
        >>> s = BlockShuffleSampler(100, batch_size=16, block_size=10, window=2, seed=0)
        >>> rows = np.concatenate([s.indices(0, b) for b in range(len(s))])
        >>> sorted(rows.tolist()) == list(range(100))
        True
        >>> len({int(r) // 10 for r in s.indices(0, 0)}) <= 2 * 2
        True
    """

    def __init__(
        self,
        n: int,
        *,
        batch_size: int,
        block_size: int,
        seed: int,
        window: int = 16,
        drop_remainder: bool = False,
    ) -> None:
        self.n = integer(n, "n", minimum=0)
        self.batch_size = check_batch_size(batch_size)
        self.block_size = integer(block_size, "block_size", minimum=1)
        self.window = integer(window, "window", minimum=1)
        self.seed = integer(seed, "seed", minimum=0)
        self.drop_remainder = bool(drop_remainder)
        self._len = num_batches(self.n, self.batch_size, drop_remainder=self.drop_remainder)
        self._cache = EpochCache()

    @classmethod
    def for_source(
        cls, source: object, *, batch_size: int, seed: int, window: int = 16, drop_remainder: bool = False
    ) -> BlockShuffleSampler:
        """A sampler whose blocks are ``source.block_size`` rows, checked against its chunk cache.

        Raises:
            StructureError: the source has no chunk-read field (nothing to gain: use a plain
                shuffle), or ``2 * window`` blocks do not fit in its chunk cache.
        """
        block_size = getattr(source, "block_size", None)
        if not block_size:
            msg = (
                f"Block shuffling needs a source read in blocks (a compressed HDF5 field). "
                f"Received {type(source).__name__} with block_size={block_size!r}. Use shuffle=True "
                "(an exact sample-level shuffle), or pass block_size= to BlockShuffleSampler."
            )
            raise StructureError(msg)
        need = 2 * window * int(getattr(source, "block_nbytes", 0))
        have = getattr(source, "cache_bytes", None)
        if have is not None and need > have:
            msg = (
                f"A window of {window} blocks needs a chunk cache of {need / 2**20:.1f} MiB "
                f"(2 windows x {window} blocks x {source.block_nbytes / 2**20:.2f} MiB); the source has "  # type: ignore[attr-defined]
                f"{have / 2**20:.1f} MiB. Raise cache_mb= on the HDF5Source to at least {need / 2**20:.1f}, or "
                "use a smaller window: Dataset(shuffle='block') uses window=16; for another, override "
                "make_sampler to return BlockShuffleSampler.for_source(..., window=...)."
            )
            raise StructureError(msg)
        return cls(
            len(source),  # type: ignore[arg-type]
            batch_size=batch_size,
            block_size=block_size,
            seed=seed,
            window=window,
            drop_remainder=drop_remainder,
        )

    def __len__(self) -> int:
        return self._len

    def order(self, epoch: int) -> np.ndarray:
        """The whole epoch's order (read-only)."""
        return self._cache.get(epoch, self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        return block_permutation(self.n, block_size=self.block_size, window=self.window, seed=self.seed, epoch=epoch)

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        start = batch_index(batch, self._len) * self.batch_size
        return self.order(epoch)[start : start + self.batch_size]

