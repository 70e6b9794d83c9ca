"""A persistent pool of worker threads (``workers > 1``, ``use_multiprocessing=False``).

Threads share the dataset and return batches as they are, with no copy; they help
when ``get_batch`` releases the GIL (numpy on large arrays, file reads).
"""

from __future__ import annotations

import threading
import traceback
from concurrent import futures
from typing import Any

from kseq.workers.backend import Done, Key, in_window
from kseq.workers.context import batch_context

__all__ = ["ThreadPool"]


class ThreadPool:
    """``workers`` threads computing ``dataset.get_batch(index, epoch)``.

    Example:
        >>> import numpy as np
        >>> class Squares:
        ...     def get_batch(self, index, epoch):
        ...         return (np.arange(4) + index) ** 2,
        >>> pool = ThreadPool(workers=2)
        >>> pool.submit(Squares(), (0, 1))
        >>> (done,) = pool.poll(10.0)
        >>> pool.materialize(done)[0].tolist()
        [1, 4, 9, 16]
        >>> pool.close(graceful=True)
    """

    def __init__(self, *, workers: int) -> None:
        self._idents: set[int] = set()
        self._executor = futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="kseq-worker", initializer=self._register
        )
        self._futures: dict[futures.Future, Key] = {}
        self._window = 0

    def submit(self, dataset: Any, key: Key) -> None:
        self._futures[self._executor.submit(self._run, dataset, key)] = key

    def poll(self, timeout: float) -> list[Done]:
        finished, _ = futures.wait(list(self._futures), timeout, return_when=futures.FIRST_COMPLETED)
        for future in finished:
            del self._futures[future]
        return [future.result() for future in finished]

    def set_window(self, epoch: int) -> None:
        self._window = epoch

    def pids(self) -> list[int]:
        return []

    def materialize(self, done: Done) -> Any:
        return done.value

    def discard(self, done: Done) -> None:
        pass

    def close(self, *, graceful: bool) -> None:
        # A dataset dropped while batches are in flight is finalized in the worker thread that held it
        # last; that thread cannot join itself, so it asks the others to stop and returns.
        own = threading.get_ident() in self._idents
        self._executor.shutdown(wait=graceful and not own, cancel_futures=True)
        self._futures.clear()

    def _register(self) -> None:
        self._idents.add(threading.get_ident())

    def _run(self, dataset: Any, key: Key) -> Done:
        epoch, index = key
        name = f"kseq worker thread {threading.current_thread().name}"
        if not in_window(epoch, self._window):
            return Done(key, "skipped", None, name)
        try:
            with batch_context(epoch, index):
                return Done(key, "ok", dataset.get_batch(index, epoch), name)
        except Exception as e:
            return Done(key, "error", (traceback.format_exc(), e), name)
