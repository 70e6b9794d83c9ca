"""DataFrameSource: a pandas DataFrame, converted once to column arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kseq.errors import StructureError
from kseq.sources.array import ArraySource

__all__ = ["DataFrameSource"]


class DataFrameSource(ArraySource):
    """A Source over the columns of a ``pandas.DataFrame``.

    Each column becomes one numpy array at construction, so batches are read with
    numpy gathers (as :class:`ArraySource`), not pandas row access. A column whose cells are arrays of
    one shape (an embedding per row, say) is stacked into a single ``(n, *shape)``
    array; a column of strings becomes a numpy string array.

    Args:
        df: the DataFrame; its row order is the sample order (the index is ignored).
        columns: the columns to expose, by default all of them.

    Raises:
        StructureError: unknown column, empty frame, or cells that cannot be stacked.

    Example:
        >>> import numpy as np, pandas as pd
        >>> df = pd.DataFrame({"emb": [np.ones(3), np.zeros(3)], "label": [1, 0]})
        >>> src = DataFrameSource(df)
        >>> src.fields["emb"]
        ((3,), dtype('float64'))
    """

    def __init__(self, df: pd.DataFrame, columns: Sequence[str] | None = None) -> None:
        if not isinstance(df, pd.DataFrame):
            msg = f"DataFrameSource expects a pandas.DataFrame. Received {type(df).__name__}."
            raise StructureError(msg)
        if df.columns.duplicated().any():
            dupes = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
            msg = f"The DataFrame has duplicate column names {dupes}. Expected unique names: rename them first."
            raise StructureError(msg)
        if columns is not None and not isinstance(columns, (str, Sequence)):
            msg = f"columns must be a column name or a list of names. Received columns={columns!r:.80}."
            raise StructureError(msg)
        names = list(df.columns) if columns is None else [columns] if isinstance(columns, str) else list(columns)
        as_text = [str(c) for c in names]
        if len(set(as_text)) != len(as_text):
            msg = (
                f"Columns {names} collide once turned into field names {as_text}. "
                "Expected distinct names: rename the columns first."
            )
            raise StructureError(msg)
        missing = [c for c in names if c not in df.columns]
        if missing:
            msg = (
                f"Columns {missing} are not in the DataFrame. Expected a subset of {list(df.columns)}. "
                "Pass columns=[...] with existing names."
            )
            raise StructureError(msg)
        if len(df) == 0:
            msg = f"The DataFrame is empty (0 rows, columns {names}). Expected at least 1 row."
            raise StructureError(msg)
        super().__init__({str(c): _column_array(df[c]) for c in names})


def _column_array(column: pd.Series) -> np.ndarray:
    if column.dtype != object and not isinstance(column.dtype, pd.StringDtype):
        return column.to_numpy()
    if column.isna().any():
        row = int(np.flatnonzero(column.isna().to_numpy())[0])
        msg = (
            f"Column {column.name!r} has missing values (first at row {row}); expected a value in every row. "
            "Fill them first, e.g. df[col].fillna('') for text."
        )
        raise StructureError(msg)
    cells = column.tolist()
    if all(isinstance(c, str) for c in cells):
        return np.asarray(cells, dtype=str)
    try:
        arrays = [np.asarray(c) for c in cells]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"cell shapes differ: {sorted(shapes)[:4]}")  # noqa: TRY301 - reported below
        stacked = np.stack(arrays)
    except (ValueError, TypeError) as e:
        msg = (
            f"Column {column.name!r} holds objects that cannot be stacked into one array ({e}). "
            "Expected every cell to be an array of the same shape. "
            "Pad variable-length cells to one length first, or leave the column out with columns=[...]."
        )
        raise StructureError(msg) from e
    if stacked.dtype == object:
        msg = (
            f"Column {column.name!r} stacks to dtype object; expected numeric cells. "
            f"First cell: {cells[0]!r:.60}."
        )
        raise StructureError(msg)
    return stacked
