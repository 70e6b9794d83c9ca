"""Sources: where rows come from. See :class:`Source` for the contract."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from kseq.errors import StructureError
from kseq.sources.array import ArraySource
from kseq.sources.base import Source, check_fields, check_indices
from kseq.sources.dataframe import DataFrameSource

__all__ = ["ArraySource", "DataFrameSource", "Source", "as_source", "check_fields", "check_indices"]


def as_source(data: object) -> Source:
    """Wrap ``data`` as a Source: a Source passes through, a dict of arrays becomes an
    :class:`ArraySource`, a DataFrame a :class:`DataFrameSource`."""
    if isinstance(data, pd.DataFrame):
        return DataFrameSource(data)
    if isinstance(data, Mapping):
        return ArraySource(data)
    if isinstance(data, Source):
        return data
    if isinstance(data, np.ndarray):
        msg = (
            "Expected a Source, a dict of arrays or a DataFrame. Received a bare array of shape "
            f"{data.shape}: name it, e.g. {{'x': array}}."
        )
        raise StructureError(msg)
    msg = f"Expected a Source, a dict of arrays or a DataFrame. Received {type(data).__name__}."
    raise StructureError(msg)
