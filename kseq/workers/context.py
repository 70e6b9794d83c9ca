"""The batch being computed, ``(epoch, index)``, for code that runs inside ``get_batch``.

``Dataset.get_batch`` and every worker set it around the batch they compute, so
``ds.batch_rng()`` inside ``build_batch`` (or a ``get_batch`` override) sees the
epoch the batch belongs to, not the dataset's ``epoch`` attribute: that one is
frozen in worker processes and may already be past a batch that a thread prefetches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["batch_context", "current_batch"]

_CURRENT: ContextVar[tuple[int, int] | None] = ContextVar("kseq_current_batch", default=None)


def current_batch() -> tuple[int, int] | None:
    """``(epoch, index)`` of the batch being computed in this thread, or ``None`` outside one.

    Example:
        >>> current_batch() is None
        True
        >>> with batch_context(2, 5):
        ...     current_batch()
        (2, 5)
    """
    return _CURRENT.get()


@contextmanager
def batch_context(epoch: int, index: int) -> Iterator[None]:
    """Mark the code inside as computing batch ``index`` of ``epoch``."""
    token = _CURRENT.set((int(epoch), int(index)))
    try:
        yield
    finally:
        _CURRENT.reset(token)
