"""The batch being computed, ``(epoch, index)``, for code that runs inside ``get_batch``.

``Dataset.get_batch`` and every worker set it around the batch they compute, so
``ds.batch_rng()`` inside ``build_batch`` (or a ``get_batch`` override) sees the
epoch the batch belongs to, not the dataset's ``epoch`` attribute: that one is
frozen in worker processes and may already be past a batch that a thread prefetches.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

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


class batch_context:  # lower case: used like a function, ``with batch_context(epoch, index):``
    """Mark the code inside as computing batch ``index`` of ``epoch``.

    A class rather than a ``@contextmanager`` generator: it runs once per batch, on the hot path.
    """

    __slots__ = ("_token", "_value")

    def __init__(self, epoch: int, index: int) -> None:
        self._value = (int(epoch), int(index))
        self._token: Token | None = None

    def __enter__(self) -> None:
        self._token = _CURRENT.set(self._value)

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
