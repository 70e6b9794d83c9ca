"""The Source protocol: a picklable, thread-safe, deterministic table of rows."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from kseq.errors import StructureError
from kseq.validators import known_fields

__all__ = ["Source", "cheap_row_reads", "check_fields", "check_indices", "is_dataframe"]


@runtime_checkable
class Source(Protocol):
    """Rows of named fields, read in batches.

    Contract:
      * ``len(src)`` is the number of rows; every field has that many.
      * ``src.fields`` maps each field name to ``(trailing_shape, dtype)``.
      * ``src.read(indices, fields=None)`` returns ``{field: array}`` for the fields
        asked (all by default) with the rows in the order asked (repeats allowed), each
        array of shape ``(len(indices), *trailing_shape)``.
      * A source is picklable (it holds paths, never open handles), thread-safe and
        deterministic: the same indices always give the same rows.

    Optional capability: a class attribute ``cheap_row_reads = True`` says that reading a
    row twice, or rows out of storage order, costs a copy and not a second fetch (numpy
    arrays, memory maps, a chunk cache). Datasets then read unsorted rows with repeats
    directly; without it they read each row once, in sorted order. See :func:`cheap_row_reads`.

    Example:
        >>> import numpy as np
        >>> from kseq.sources import ArraySource
        >>> src = ArraySource({"x": np.arange(6).reshape(3, 2), "y": np.array([0, 1, 0])})
        >>> len(src), sorted(src.fields)
        (3, ['x', 'y'])
        >>> src.read([2, 0])["x"].tolist()
        [[4, 5], [0, 1]]
    """

    def __len__(self) -> int: ...

    @property
    def fields(self) -> Mapping[str, tuple[tuple[int, ...], np.dtype]]: ...

    def read(
        self, indices: Sequence[int] | np.ndarray, fields: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]: ...


def check_indices(indices: Sequence[int] | np.ndarray, length: int) -> np.ndarray:
    """Return ``indices`` as an int64 array, refusing any outside ``[0, length)``."""
    if isinstance(indices, np.ndarray) and indices.dtype == np.int64:
        idx = indices
    else:
        raw = np.asarray(indices)
        if raw.size and raw.dtype.kind not in "iu":
            hint = " Use np.flatnonzero(mask) for a boolean mask." if raw.dtype.kind == "b" else ""
            msg = f"Expected integer row indices. Received dtype {raw.dtype}.{hint}"
            raise StructureError(msg)
        idx = raw.astype(np.int64, copy=False)
    if idx.ndim != 1:
        msg = f"Expected a 1-D sequence of row indices. Received shape {idx.shape}."
        raise StructureError(msg)
    # One reduction: a negative int64 seen as uint64 is larger than any valid index.
    if idx.size and idx.view(np.uint64).max() >= length:
        msg = (
            f"Row index out of range: the source has {length} rows (valid indices 0..{length - 1}). "
            f"Received indices from {idx.min()} to {idx.max()}."
        )
        raise IndexError(msg)
    return idx


def check_fields(fields: Sequence[str] | None, available: Mapping[str, object]) -> list[str]:
    """The field names to read: all for ``None``, else :func:`kseq.validators.known_fields` of ``fields``."""
    return list(available) if fields is None else known_fields(fields, available, "fields")


def cheap_row_reads(source: object) -> bool:
    """Whether ``source`` declares ``cheap_row_reads = True`` (see :class:`Source`); ``False`` if it says nothing."""
    return getattr(source, "cheap_row_reads", False) is True


def is_dataframe(value: object) -> bool:
    """Whether ``value`` is a ``pandas.DataFrame``, without importing pandas.

    A DataFrame exists only where pandas was imported, so only then is pandas asked; kseq's
    core (``import kseq``, ``python -m kseq inspect``) then loads no pandas it does not use.
    """
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)
