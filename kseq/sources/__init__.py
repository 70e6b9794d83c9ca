"""Sources: where rows come from. See :class:`Source` for the contract.

:class:`DataFrameSource` (pandas) is imported on first use, so ``import kseq`` loads no pandas.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from kseq.errors import StructureError
from kseq.sources.array import ArraySource
from kseq.sources.base import Source, cheap_row_reads, check_fields, check_indices, is_dataframe
from kseq.sources.concat import ConcatSource
from kseq.sources.files import BadFile, FileSource
from kseq.sources.hdf5 import HDF5Source

if TYPE_CHECKING:
    from kseq.sources.dataframe import DataFrameSource

__all__ = [
    "ArraySource",
    "BadFile",
    "ConcatSource",
    "DataFrameSource",
    "FileSource",
    "HDF5Source",
    "Source",
    "as_source",
    "cheap_row_reads",
    "check_fields",
    "check_indices",
]


def as_source(data: object) -> Source:
    """Wrap ``data`` as a Source: a Source passes through, a dict of arrays becomes an
    :class:`ArraySource`, a DataFrame a :class:`DataFrameSource`, a path (``str`` or
    ``os.PathLike``) an :class:`HDF5Source` over every dataset in that HDF5 file.

    Example:
        >>> import pandas as pd
        >>> src = as_source({"x": np.arange(4)})
        >>> type(src).__name__, as_source(src) is src, len(as_source(pd.DataFrame({"a": [1, 2]})))
        ('ArraySource', True, 2)
    """
    if isinstance(data, (str, os.PathLike)):
        return HDF5Source(data)
    if is_dataframe(data):
        from kseq.sources.dataframe import DataFrameSource  # pandas, only for a DataFrame

        return DataFrameSource(data)
    if isinstance(data, Mapping):
        return ArraySource(data)
    if isinstance(data, Source):
        return data
    if isinstance(data, np.ndarray):
        msg = (
            "Expected a Source, a dict of arrays, a DataFrame or an HDF5 path. Received a bare array of shape "
            f"{data.shape}: name it, e.g. {{'x': array}}."
        )
        raise StructureError(msg)
    msg = (
        "Expected a Source, a dict of arrays, a DataFrame or the path of an HDF5 file. "
        f"Received {type(data).__name__}."
    )
    raise StructureError(msg)


def __getattr__(name: str) -> Any:
    """``DataFrameSource`` on first use (it imports pandas)."""
    if name == "DataFrameSource":
        from kseq.sources.dataframe import DataFrameSource  # pandas, on first use

        return DataFrameSource
    msg = f"module 'kseq.sources' has no attribute {name!r}"
    raise AttributeError(msg)
