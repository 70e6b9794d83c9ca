"""Rows -> batch: the ``(x, y, sample_weight)`` tuple, class weights, padding, one-line summaries.

Everything here is vectorised numpy over a whole batch; only :func:`pad_sequences`
touches each sample once in Python, to read a list of ragged sequences.

Renamed (the old names still work, with a ``DeprecationWarning`` when read):
``pack`` -> :func:`as_batch` (``kseq.pack`` writes HDF5 files) and ``describe`` ->
:func:`summarize` (``kseq.sources.hdf5`` had a ``describe`` returning layouts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kseq._renames import renamed
from kseq.errors import StructureError
from kseq.validators import integer, non_negative_number

__all__ = [
    "ClassWeights",
    "as_batch",
    "pad_sequences",
    "summarize",
]

Tree = Any  # an array, or a dict / list / tuple of arrays


def as_batch(x: Tree, y: Tree = None, sample_weight: Tree = None) -> tuple:
    """The tuple Keras expects: ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``.

    Example:
        >>> len(as_batch(np.zeros(2))), len(as_batch(np.zeros(2), np.ones(2), np.ones(2)))
        (1, 3)
    """
    if y is None:
        if sample_weight is not None:
            msg = "A batch with sample weights needs targets. Received sample_weight without y."
            raise StructureError(msg)
        return (x,)
    return (x, y) if sample_weight is None else (x, y, sample_weight)


def summarize(tree: Tree) -> str:
    """A one-line shape/dtype summary of an array or a nested dict/list/tuple of arrays, for error messages.

    Example:
        >>> summarize({"a": np.zeros((4, 3), "float32"), "b": [np.ones(4, "int64")]})
        "{'a': (4, 3) float32, 'b': [(4,) int64]}"
    """
    if isinstance(tree, Mapping):
        return "{" + ", ".join(f"'{k}': {summarize(v)}" for k, v in tree.items()) + "}"
    if isinstance(tree, (list, tuple)):
        inner = ", ".join(summarize(v) for v in tree)
        return f"[{inner}]" if isinstance(tree, list) else f"({inner})"
    shape = getattr(tree, "shape", None)
    dtype = getattr(tree, "dtype", None)
    if shape is None:
        return type(tree).__name__
    return f"{tuple(shape)} {dtype}"


class ClassWeights:
    """A vectorised ``{class_id: weight}`` lookup.

    Labels may be class ids of shape ``(B,)`` or ``(B, 1)``, or one-hot / probability
    rows of shape ``(B, C)`` (the class is the argmax), the same convention as Keras.
    Integer labels of shape ``(B, T)`` that are not one-hot (per-step class ids) are
    refused rather than read as one-hot.
    Labels absent from the mapping are refused at construction by :meth:`check_covers`.

    Example:
        >>> cw = ClassWeights({0: 1.0, 1: 3.0})
        >>> cw(np.array([1, 0, 1])).tolist()
        [3.0, 1.0, 3.0]
    """

    def __init__(self, mapping: Mapping[Any, float], *, name: str = "class_weight") -> None:
        if not isinstance(mapping, Mapping) or not mapping:
            msg = f"{name} must be a non-empty mapping {{class_id: weight}}. Received {mapping!r:.80}."
            raise StructureError(msg)
        fix = "A class weight multiplies the loss of that class's samples: a finite number >= 0 (1.0 leaves it as is)."
        try:
            keys = np.array([int(k) for k in mapping], dtype=np.int64)
        except (TypeError, ValueError) as e:
            msg = f"{name} must map integer class ids to numbers. Received {dict(mapping)!r:.120}."
            raise StructureError(msg) from e
        values = np.array([non_negative_number(v, f"{name}[{k!r}]", fix=fix) for k, v in mapping.items()], np.float32)
        order = np.argsort(keys)
        self.name = name
        self._keys = keys[order]
        self._values = values[order]

    def class_ids(self, labels: np.ndarray) -> np.ndarray:
        """One class id per sample: ``(B,)`` or ``(B, 1)`` ids as they are, ``(B, C)`` rows by argmax."""
        labels = np.asarray(labels)
        per_sample = labels.ndim >= 1 and math.prod(labels.shape[1:]) == 1
        numeric = labels.dtype.kind in "biuf"
        if not numeric or (not per_sample and not (labels.ndim == 2 and labels.shape[-1] > 1)):
            msg = (
                f"{self.name} needs one class per sample: class ids of shape (n,) or (n, 1), or one-hot / "
                f"probability rows of shape (n, classes). Received labels of shape {labels.shape} "
                f"({labels.dtype}). For per-step labels (n, steps, ...) pass sample_weight= with per-step "
                "weights instead."
            )
            raise StructureError(msg)
        if not per_sample:
            if labels.dtype.kind in "iu" and not _is_one_hot(labels):
                msg = (
                    f"{self.name} needs one class per sample: class ids of shape (n,) or (n, 1), or one-hot rows. "
                    f"Received integer labels of shape {labels.shape} that are not one-hot (per-step ids?). "
                    "Use sample_weight= with per-sample weights instead."
                )
                raise StructureError(msg)
            return labels.argmax(axis=-1).reshape(len(labels))
        return labels.reshape(len(labels)).astype(np.int64, copy=False)

    def missing(self, labels: np.ndarray) -> list[int]:
        """Class ids present in ``labels`` that the mapping does not cover."""
        ids = np.unique(self.class_ids(labels))
        return sorted(set(ids.tolist()) - set(self._keys.tolist()))

    def check_covers(self, labels: np.ndarray) -> None:
        missing = self.missing(labels)
        if missing:
            msg = (
                f"{self.name} has no weight for class(es) {missing[:20]} found in the targets. "
                f"Expected a weight for every class; received keys {self._keys.tolist()[:20]}. "
                "Add the missing classes to the mapping."
            )
            raise StructureError(msg)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """Each sample's weight; a class the mapping lacks is refused (never a neighbour's weight)."""
        ids = self.class_ids(labels)
        pos = np.clip(np.searchsorted(self._keys, ids), 0, len(self._keys) - 1)
        if ids.size and not np.array_equal(self._keys[pos], ids):
            self.check_covers(labels)  # raises, naming the missing classes
        return self._values[pos]


def _is_one_hot(labels: np.ndarray) -> bool:
    return labels.ndim == 2 and bool(((labels == 0) | (labels == 1)).all()) and bool((labels.sum(axis=1) == 1).all())


def pad_sequences(
    sequences: Sequence[Sequence[int] | np.ndarray],
    *,
    pad_value: int = 0,
    max_length: int | None = None,
    dtype: np.dtype | type = np.int32,
) -> np.ndarray:
    """Post-pad ragged sequences to the longest one (or ``max_length``, truncating at the end).

    ``keras.utils.pad_sequences(sequences, padding="post", truncating="post")`` gives the same
    array, but kseq's core stays framework-free (importing Keras imports its backend), and this
    one was measured faster on caption-sized batches: one scatter through a mask instead of a
    copy per row (numbers in benchmarks/README.md, "core").

    Example:
        >>> pad_sequences([[1, 2, 3], [4]], pad_value=0).tolist()
        [[1, 2, 3], [4, 0, 0]]
        >>> pad_sequences([[1, 2, 3], [4]], max_length=2).tolist()
        [[1, 2], [4, 0]]
    """
    max_length = integer(max_length, "max_length", minimum=0, optional=True)
    arrays = [np.asarray(s) for s in sequences]
    lengths = np.fromiter((a.size for a in arrays), np.int64, len(arrays))
    width = int(lengths.max(initial=0)) if max_length is None else max_length
    out = np.full((len(arrays), width), pad_value, dtype=dtype)
    kept = np.minimum(lengths, width)
    if kept.any():
        rows = [a[:k] for a, k in zip(arrays, kept.tolist(), strict=True)]
        out[np.arange(width) < kept[:, None]] = np.concatenate(rows)
    return out


# Old names, served with a DeprecationWarning when read (see the module docstring).
__getattr__ = renamed(__name__, {"pack": "as_batch", "describe": "summarize"}, globals())
