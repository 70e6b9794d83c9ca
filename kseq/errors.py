"""The kseq exception family: each one refines the builtin a caller would already catch.

Which one a missing field raises depends on whose mistake it is, and is the same everywhere:

* a *name* the source does not have (``src.read(rows, fields=["nope"])``, ``inputs="nope"``,
  ``fields=`` of a dataset) is a :class:`StructureError`: the request does not fit the data;
* a *file* that lacks what it was opened for (``HDF5Source(path, fields="train/nope")``: no such
  dataset in the file), or that is missing, corrupt or changed, is a :class:`SourceError`.

Example:
    >>> import numpy as np
    >>> from kseq.sources import ArraySource
    >>> try:
    ...     ArraySource({"x": np.zeros(3)}).read([0], fields=["y"])
    ... except StructureError as e:
    ...     print(type(e).__name__, isinstance(e, ValueError))
    StructureError True
"""

from __future__ import annotations

__all__ = ["KseqError", "SourceError", "StructureError", "WorkerError"]


class KseqError(Exception):
    """Base class of every error kseq raises on purpose.

    Example:
        >>> issubclass(StructureError, KseqError) and issubclass(SourceError, KseqError)
        True
    """


class StructureError(KseqError, ValueError):
    """Data and model (or data and configuration) do not fit together.

    Includes asking a source for a field name it does not have. The message says what was
    expected, what was received, and how to fix it.

    Example:
        >>> from kseq import Dataset
        >>> try:
        ...     Dataset({"x": [0, 1]}, batch_size=0)
        ... except ValueError as e:  # a StructureError is a ValueError too
        ...     print(type(e).__name__)
        StructureError
    """


class SourceError(KseqError, OSError):
    """A source cannot be opened or read: a missing, corrupt or changed file, or a file without the
    dataset a field was opened from (a field *name* a source lacks is a :class:`StructureError`).

    Example:
        >>> from kseq.sources import HDF5Source
        >>> try:
        ...     HDF5Source("/no/such/file.h5")
        ... except OSError as e:  # a SourceError is an OSError too
        ...     print(type(e).__name__, "/no/such/file.h5" in str(e))
        SourceError True
    """


class WorkerError(KseqError, RuntimeError):
    """A worker failed: it raised, died, could not be started, or took longer than ``timeout``.

    Example:
        >>> from kseq import Dataset
        >>> class Broken(Dataset):
        ...     def build_batch(self, rows):
        ...         raise ArithmeticError("bad row")
        >>> with Broken({"x": [0, 1, 2, 3]}, batch_size=2, workers=2) as ds:  # two threads
        ...     try:
        ...         ds[0]
        ...     except RuntimeError as e:  # a WorkerError is a RuntimeError too
        ...         print(type(e).__name__, "ArithmeticError: bad row" in str(e))
        WorkerError True
    """
