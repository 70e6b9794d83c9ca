"""Dataset: a ``keras.utils.PyDataset`` composed of a Source, a Sampler and batch assembly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from kseq.errors import StructureError
from kseq.samplers import Sampler, SequentialSampler, ShuffleSampler, batch_rng, check_batch_size, draw_seed
from kseq.sources import Source, as_source
from kseq.structure import ModelStructure
from kseq.validation import CheckReport, check

__all__ = ["Dataset"]


class Dataset(keras.utils.PyDataset):
    """A PyDataset that reads rows from a Source in the order a Sampler gives.

    Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: the same on
    any worker, in any order. The epoch counter advances in ``on_epoch_end``, which
    ``model.fit`` calls after every epoch.

    Subclasses override :meth:`build_batch`, which turns the rows of one batch
    (``{field: array}``) into ``(x, y)`` or ``(x, y, sample_weight)``. The default
    returns the rows as x alone (useful for ``predict``).

    Args:
        source: a :class:`~kseq.sources.Source`, a dict of arrays, or a DataFrame.
        batch_size: rows per batch.
        shuffle: draw a new sample order every epoch from ``(seed, epoch)``.
        seed: the seed; ``None`` draws one at construction, exposed as ``ds.seed``.
        drop_remainder: leave out the last partial batch of each epoch.
        workers, use_multiprocessing, max_queue_size: as for ``keras.utils.PyDataset``.

    Example:
        >>> import numpy as np
        >>> ds = Dataset({"x": np.arange(10.0)}, batch_size=4, seed=7)
        >>> len(ds), ds.seed
        (3, 7)
        >>> sorted(np.concatenate([ds[i][0]["x"] for i in range(len(ds))]).tolist()) == list(range(10))
        True
    """

    def __init__(
        self,
        source: Source | dict | Any,
        *,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        drop_remainder: bool = False,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.source = as_source(source)
        self.batch_size = check_batch_size(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = draw_seed() if seed is None else _check_seed(seed)
        self.drop_remainder = bool(drop_remainder)
        self.epoch = 0
        self._structure: ModelStructure | None = None
        self.sampler = self.make_sampler()
        if len(self.sampler) == 0:
            msg = (
                f"The dataset has no batches: {len(self.source)} rows, batch_size={self.batch_size}, "
                f"drop_remainder={self.drop_remainder}. Lower batch_size or set drop_remainder=False."
            )
            raise StructureError(msg)

    # -- the parts a subclass may override ---------------------------------------

    def make_sampler(self) -> Sampler:
        """The sampler of this dataset; called once, at construction."""
        n = len(self.source)
        if self.shuffle:
            return ShuffleSampler(n, batch_size=self.batch_size, seed=self.seed, drop_remainder=self.drop_remainder)
        return SequentialSampler(n, batch_size=self.batch_size, drop_remainder=self.drop_remainder)

    def read_rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Read the rows of one batch; by default every field, ``source.read(indices)``."""
        return self.source.read(indices, self.fields_read)

    @property
    def fields_read(self) -> Sequence[str] | None:
        """The fields :meth:`read_rows` reads (``None``: all)."""
        return None

    def build_batch(self, rows: dict[str, np.ndarray]) -> Any:
        """Turn one batch of rows into ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``."""
        return (rows,)

    # -- the PyDataset protocol ----------------------------------------------------

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, index: int) -> tuple:
        batch = self.get_batch(index)
        return batch if self._structure is None else self._structure.adapt(batch)

    def on_epoch_end(self) -> None:
        self.epoch += 1

    # -- kseq API --------------------------------------------------------------

    def get_batch(self, index: int, epoch: int | None = None) -> tuple:
        """Batch ``index`` of ``epoch`` (default: the current one), named, not adapted to a model."""
        epoch = self.epoch if epoch is None else int(epoch)
        index = _check_index(index, len(self))
        batch = self.build_batch(self.read_rows(self.sampler.indices(epoch, index)))
        return _as_batch_tuple(batch, type(self).__name__)

    def batch_rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """A generator for random per-sample transforms in batch ``index``, seeded by ``(seed, epoch, index)``."""
        return batch_rng(self.seed, self.epoch if epoch is None else epoch, index)

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch`` (to resume a run: the order of every later epoch is reproduced)."""
        self.epoch = int(epoch)

    def check(self, model: Any, *, verbose: bool = True) -> CheckReport:
        """``kseq.check(model, self)``: compare with ``model`` and adapt batches to its structure."""
        return check(model, self, verbose=verbose)

    def set_structure(self, structure: ModelStructure | None) -> None:
        """Emit batches in ``structure``'s form from now on (``None``: named, as built)."""
        self._structure = structure

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.source)} rows, batch_size={self.batch_size}, "
            f"{len(self)} batches, shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch})"
        )


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        msg = f"seed must be a non-negative integer or None. Received seed={seed!r}."
        raise StructureError(msg)
    return int(seed)


def _check_index(index: object, length: int) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        msg = f"Batch index must be an integer. Received {index!r}."
        raise TypeError(msg)
    if not 0 <= index < length:
        msg = f"Batch index {index} is out of range: this dataset has {length} batches."
        raise IndexError(msg)
    return int(index)


def _as_batch_tuple(batch: Any, owner: str) -> tuple:
    if isinstance(batch, tuple) and 1 <= len(batch) <= 3:
        return batch
    if isinstance(batch, list):
        msg = (
            f"{owner}.build_batch returned a list of {len(batch)}. Keras reads a list as (x, y), so "
            "[x1, x2] would train x2 as a target. Expected a tuple (x,), (x, y) or (x, y, sample_weight); "
            "return ({'in1': x1, 'in2': x2}, y) for several inputs."
        )
        raise StructureError(msg)
    if isinstance(batch, tuple):
        msg = f"{owner}.build_batch returned a tuple of {len(batch)}; expected 1 to 3 (x, y, sample_weight)."
        raise StructureError(msg)
    return (batch,)
