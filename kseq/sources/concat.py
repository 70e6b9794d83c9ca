"""ConcatSource: several Sources with the same fields, read as one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kseq.sources.base import Source, cheap_row_reads, check_fields, check_indices

__all__ = ["ConcatSource"]


class ConcatSource:
    """Several sources with the same fields read as one, back to back: rows ``0..len(a)-1`` are ``a``'s.

    A Source (picklable, thread-safe, deterministic as its parts are). A field's dtype is the
    common type of the parts' dtypes. Each read makes one ``read`` call per part it touches,
    with that part's rows in the order asked.

    Example:
        >>> import numpy as np
        >>> from kseq.sources import ArraySource
        >>> both = ConcatSource([ArraySource({"x": np.arange(3)}), ArraySource({"x": np.arange(10, 12)})])
        >>> len(both), both.read([4, 0, 3])["x"].tolist()
        (5, [11, 0, 10])
    """

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = list(sources)
        self.cheap_row_reads = all(cheap_row_reads(s) for s in self.sources)
        self._bounds = np.cumsum([0] + [len(s) for s in self.sources])
        self._fields = {
            name: (shape, np.result_type(*[s.fields[name][1] for s in self.sources]))
            for name, (shape, _) in self.sources[0].fields.items()
        }

    def __len__(self) -> int:
        return int(self._bounds[-1])

    @property
    def fields(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return dict(self._fields)

    def read(self, indices: Sequence[int] | np.ndarray, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        idx = check_indices(indices, len(self))
        names = check_fields(fields, self._fields)
        out = {n: np.empty((len(idx), *self._fields[n][0]), dtype=self._fields[n][1]) for n in names}
        if not len(idx):
            return out
        owner = np.searchsorted(self._bounds, idx, side="right") - 1
        order = np.argsort(owner, kind="stable")
        groups = np.flatnonzero(np.diff(owner[order])) + 1
        for positions in np.split(order, groups):  # one read per source, rows in the order asked
            j = int(owner[positions[0]])
            part = self.sources[j].read(idx[positions] - self._bounds[j], names)
            for n in names:
                out[n][positions] = part[n]
        return out
