"""What the loader asks of a pool of workers, threads or processes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["Backend", "Done", "Key", "in_window"]

Key = tuple[int, int]  # (epoch, batch index)
Status = Literal["ok", "error", "skipped"]


@dataclass
class Done:
    """One finished request.

    ``value`` is backend-specific for ``"ok"`` (see :meth:`Backend.materialize`),
    ``(traceback_text, exception_or_None)`` for ``"error"``, and ``None`` for
    ``"skipped"`` (the request's epoch went stale before a worker started it).

    Example:
        >>> Done((0, 3), "skipped", None, "worker 1").key
        (0, 3)
    """

    key: Key
    status: Status
    value: Any
    worker: str


class Backend(Protocol):
    """A pool computing ``dataset.get_batch(index, epoch)`` for ``(epoch, index)`` keys.

    ``set_window(e)`` tells workers to skip requests outside epochs ``e`` and ``e + 1``.
    ``poll`` raises :class:`~kseq.errors.WorkerError` when the pool itself broke
    (a worker died); a batch that raised comes back as an ``"error"`` :class:`Done`.
    ``overdue(t, wanted)`` names a batch a worker has computed for more than ``t`` seconds
    (``wanted`` first, if it is late), with where the worker is (its stack); ``notices()``
    returns ``(kind, text)`` pairs the loader warns about once (a pool that ran short of
    shared memory, a global generator moved by a worker thread).

    Example:
        >>> import time
        >>> from kseq.workers.threads import ThreadPool
        >>> class Squares:
        ...     def get_batch(self, index, epoch):
        ...         return index * index
        >>> pool: Backend = ThreadPool(workers=1)
        >>> pool.submit(Squares(), (0, 3))
        >>> done = []
        >>> while not done:
        ...     done = pool.poll(timeout=1.0)
        >>> done[0].key, done[0].status, pool.materialize(done[0])
        ((0, 3), 'ok', 9)
        >>> pool.close(graceful=True)
    """

    def submit(self, dataset: Any, key: Key) -> None: ...

    def poll(self, timeout: float) -> list[Done]: ...

    def set_window(self, epoch: int) -> None: ...

    def pids(self) -> list[int]: ...

    def materialize(self, done: Done) -> Any: ...

    def discard(self, done: Done) -> None: ...

    def overdue(self, timeout: float, wanted: Key | None = None) -> tuple[Key, str] | None: ...

    def notices(self) -> list[tuple[str, str]]: ...

    def close(self, *, graceful: bool) -> None: ...


def in_window(epoch: int, low: int) -> bool:
    """Whether a request for ``epoch`` is still wanted once the loader serves epoch ``low``: ``low`` or ``low + 1``.

    Example:
        >>> [in_window(e, 3) for e in (2, 3, 4, 5)]
        [False, True, True, False]
    """
    return low <= epoch <= low + 1
