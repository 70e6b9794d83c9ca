"""SequenceAdapter: a Keras 2 ``Sequence`` (or anything with ``__getitem__``/``__len__``) as a checked PyDataset."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from kseq.errors import StructureError
from kseq.legacy.batches import NormalisedBatches
from kseq.structure import as_fed
from kseq.validators import integer
from kseq.workers.malloc import keep_tuned

__all__ = ["SequenceAdapter"]


class SequenceAdapter(NormalisedBatches, keras.utils.PyDataset):
    """Wrap an indexable batch source so Keras 3 reads its batches as Keras 2 did.

    ``sequence[i]`` is read like a generator's yield (NOTE [ legacy yields ] in
    :mod:`kseq.legacy.batches`): list inputs in model order, targets by output
    layer name. ``workers``, ``use_multiprocessing`` and ``max_queue_size`` are the
    adapter's, so a legacy ``Sequence`` that never called ``super().__init__`` can run
    in worker processes. ``sequence.on_epoch_end()`` is called after each epoch, and
    not for the extra ``on_epoch_end`` Keras 3 sends before the first one (on JAX an
    unbuilt model's build pass still counts as one).

    Args:
        sequence: a ``keras.utils.Sequence`` / ``PyDataset``, or any object with
            ``__getitem__(i)`` and ``__len__()`` (and optionally ``on_epoch_end``).
        model: the Keras model; checks batch 0 now and adapts every batch.
        class_weight: as for :class:`~kseq.legacy.GeneratorDataset`.
        x_only: read batches as ``predict_generator`` did (targets dropped).
        workers, use_multiprocessing, max_queue_size: as for ``keras.utils.PyDataset``.
        read_first: with ``model``, read and check batch 0 now (the default); ``False``
            reads nothing until Keras asks, and checks each batch as it is read
            (``fit_generator`` does this, so that the first read comes after the
            callbacks' ``on_train_begin``, as in Keras 2).

    Example:
        >>> import numpy as np
        >>> class Pairs:  # a Keras 2 style Sequence, duck-typed
        ...     def __len__(self):
        ...         return 3
        ...     def __getitem__(self, i):
        ...         return [np.full((2, 1), i), np.zeros((2, 4))], np.ones(2)
        >>> ds = SequenceAdapter(Pairs())
        >>> x, y = ds[2]
        >>> x[0].ravel().tolist(), len(ds)
        ([2, 2], 3)
    """

    def __init__(
        self,
        sequence: Any,
        *,
        model: Any = None,
        class_weight: Mapping[Any, Any] | None = None,
        x_only: bool = False,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        read_first: bool = True,
    ) -> None:
        if not (hasattr(sequence, "__getitem__") and hasattr(sequence, "__len__")):
            msg = (
                f"Expected a keras.utils.Sequence, or an object with __getitem__ and __len__. Received "
                f"{type(sequence).__name__}. For a generator use kseq.legacy.GeneratorDataset."
            )
            raise StructureError(msg)
        if len(sequence) < 1:
            msg = f"The sequence {type(sequence).__name__} has no batches (len() == 0)."
            raise StructureError(msg)
        super().__init__(workers=integer(workers, "workers", minimum=0), use_multiprocessing=use_multiprocessing,
                         max_queue_size=integer(max_queue_size, "max_queue_size", minimum=1))
        self.sequence = sequence
        self._in_epoch = False
        self._set_up(model, class_weight, x_only, read_first)

    def __len__(self) -> int:
        return len(self.sequence)

    def __getitem__(self, index: int) -> tuple:
        keep_tuned()  # NOTE [ malloc thresholds ]
        try:
            return as_fed(self.model_structure, self.get_batch(index))
        except Exception as e:
            self.last_error = e
            raise

    def on_epoch_begin(self) -> None:
        self._in_epoch = True
        if callable(getattr(self.sequence, "on_epoch_begin", None)):
            self.sequence.on_epoch_begin()

    def on_epoch_end(self) -> None:
        if not self._in_epoch:
            return  # Keras 3's reset before the first epoch: Keras 2 sent no such call
        self._in_epoch = False
        if callable(getattr(self.sequence, "on_epoch_end", None)):
            self.sequence.on_epoch_end()

    def get_batch(self, index: int, epoch: int | None = None) -> tuple:
        """``sequence[index]`` named by model input/output, not adapted (``epoch`` must be ``None``)."""
        if epoch is not None:
            msg = f"A Sequence gives the batches of its current state only. Received epoch={epoch}; pass None."
            raise StructureError(msg)
        try:
            where, raw = self._raw_batch(index)
            return self._normaliser.name(raw, where=where)
        except Exception as e:
            self.last_error = e
            raise

    def _raw_batch(self, index: int) -> tuple[str, Any]:
        return f"batch {index} of {type(self.sequence).__name__}", self.sequence[index]

    def __repr__(self) -> str:
        return f"SequenceAdapter({type(self.sequence).__name__}, {len(self)} batches, workers={self.workers})"
