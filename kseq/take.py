"""``kseq.take(ds, n)``: the first ``n`` batches of an epoch (or all of them) joined into arrays.

For what is not ``fit``: plotting pairs, a scikit-learn baseline, a look at the targets. It reads
batches with ``dataset.get_batch(index, epoch)`` (pure: the dataset's position, epoch and worker
pool are left as they are) and concatenates each part along the first axis, keeping the batch's
structure: ``(x, y)`` with the same dict keys. Numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kseq.errors import StructureError
from kseq.validators import integer

__all__ = ["take"]


def take(dataset: Any, n: int | None = None, *, epoch: int | None = None) -> Any:
    """Batches ``0 .. n-1`` of ``epoch`` as one batch of arrays: ``(x, y[, sample_weight])`` as a batch is.

    Args:
        dataset: a kseq dataset or view (read with ``get_batch(index, epoch)``, named), or any
            ``keras.utils.PyDataset`` (read with ``dataset[index]``; then ``epoch`` must be ``None``).
        n: how many batches; ``None``: the whole epoch (``len(dataset)`` batches).
        epoch: which epoch's batches (default: the dataset's current one).

    Returns:
        The parts of one batch, each array the batches' rows one after the other (dicts keep their
        keys, tuples their order): ``x, y = kseq.take(ds)`` for a dataset of ``(x, y)`` batches.

    Raises:
        StructureError: ``n`` out of ``1 .. len(dataset)``; batches whose shapes differ beyond the
            first axis (variable-length batches: take them one by one with ``get_batch``).

    Example:
        >>> import numpy as np, kseq
        >>> ds = kseq.MultiInputDataset({"a": np.arange(10.0), "t": np.arange(10) % 2}, inputs="a",
        ...                             targets="t", batch_size=4, shuffle=False)
        >>> x, y = kseq.take(ds)  # the whole epoch
        >>> x["a"].tolist(), y.shape
        ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], (10,))
        >>> kseq.take(ds, 2)[0]["a"].shape, ds.position  # two batches; the dataset has not moved
        ((8,), 0)
    """
    count = len(dataset)
    n = count if n is None else integer(n, "n", minimum=1, maximum=count,
                                       fix=f"Pass n between 1 and len(dataset) = {count}, or None for all.")
    read = getattr(dataset, "get_batch", None)
    if callable(read):
        batches = [read(i, epoch) for i in range(n)]
    elif epoch is not None:
        msg = f"{type(dataset).__name__} has no get_batch(index, epoch). Received epoch={epoch}; pass None."
        raise StructureError(msg)
    else:
        batches = [dataset[i] for i in range(n)]
    return _join(batches, "batch")


def _join(parts: list[Any], where: str) -> Any:
    first = parts[0]
    if isinstance(first, Mapping):
        return {key: _join([p[key] for p in parts], f"{where}[{key!r}]") for key in first}
    if isinstance(first, tuple):
        return tuple(_join([p[i] for p in parts], f"{where}[{i}]") for i in range(len(first)))
    if first is None:
        return None
    arrays = [np.asarray(p) for p in parts]
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        msg = (
            f"{where} has different shapes from batch to batch beyond the first axis: {sorted(shapes)}, so the "
            "batches cannot be joined into one array. Expected batches of one shape (for a CaptionDataset, "
            "fixed_length=True); or take them one at a time with ds.get_batch(i)."
        )
        raise StructureError(msg)
    return np.concatenate(arrays) if arrays[0].ndim else np.stack(arrays)
