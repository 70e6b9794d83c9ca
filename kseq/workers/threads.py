"""A persistent pool of worker threads (``workers > 1``, ``use_multiprocessing=False``).

Threads share the dataset and return batches as they are, with no copy; they help
when ``get_batch`` releases the GIL (numpy on large arrays, file reads). They also
share the global ``np.random`` and ``random``, which are therefore not reseeded per
batch here (NOTE [ global random generators in a batch ] in ``context.py``).

A thread cannot be stopped from outside: a pool replaced after a ``timeout`` stops
giving its threads work, and a thread stuck in a batch runs on until that batch ends.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from concurrent import futures
from typing import Any

import numpy as np

from kseq.workers.backend import Done, Key, in_window
from kseq.workers.context import batch_context, leave_globals_alone, runs_outside_code

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
        >>> pool.overdue(60.0), pool.notices()
        (None, [])
        >>> pool.close(graceful=True)
    """

    def __init__(self, *, workers: int) -> None:
        self._idents: set[int] = set()
        self._executor = futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="kseq-worker", initializer=self._register
        )
        self._futures: dict[futures.Future, Key] = {}
        self._window = 0
        self._running: dict[Key, tuple[int, float]] = {}  # key -> (thread ident, start time)
        self._moved: Key | None = None  # a batch during which np.random moved
        self._moved_reported = False

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

    def overdue(self, timeout: float, wanted: Key | None = None) -> tuple[Key, str] | None:
        """The batch a thread has computed for more than ``timeout`` s, if any, with the thread's stack: ``wanted``
        if it is late, else the longest running (threads start their clocks in whatever order they get the CPU)."""
        now = time.monotonic()
        running = list(self._running.items())
        late = [(now - start, key, ident) for key, (ident, start) in running if now - start > timeout]
        if not late:
            return None
        seconds, key, ident = max(late, key=lambda entry: (entry[1] == wanted, entry[0]))
        frame = sys._current_frames().get(ident)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(the thread has just finished)"
        where = (
            f"kseq worker thread {ident} has been computing batch {key[1]} of epoch {key[0]} for {seconds:.1f} s. "
            f"Its Python stack (most recent call last):\n{stack.rstrip()}"
        )
        return key, where

    def notices(self) -> list[tuple[str, str]]:
        if self._moved is None or self._moved_reported:
            return []
        self._moved_reported = True
        epoch, index = self._moved
        text = (
            f"The global np.random generator moved while a kseq worker thread computed batch {index} of epoch "
            f"{epoch}: the batch draws from it. Threads share one global generator, so those draws differ from "
            "run to run and from what inline or worker processes compute (both reseed it per batch from "
            "(seed, epoch, index)). Draw from self.batch_rng() in build_batch, or pass use_multiprocessing=True."
        )
        return [("rng", text)]

    def close(self, *, graceful: bool) -> None:
        # A dataset dropped while batches are in flight is finalized in the worker thread that held it
        # last; that thread cannot join itself, so it asks the others to stop and returns.
        own = threading.get_ident() in self._idents
        self._executor.shutdown(wait=graceful and not own, cancel_futures=True)
        self._futures.clear()

    def _register(self) -> None:
        self._idents.add(threading.get_ident())
        leave_globals_alone()

    def _run(self, dataset: Any, key: Key) -> Done:
        epoch, index = key
        name = f"kseq worker thread {threading.current_thread().name}"
        if not in_window(epoch, self._window):
            return Done(key, "skipped", None, name)
        watch = self._moved is None and runs_outside_code(dataset)
        before = _fingerprint() if watch else None
        self._running[key] = (threading.get_ident(), time.monotonic())
        try:
            with batch_context(epoch, index):
                return Done(key, "ok", dataset.get_batch(index, epoch), name)
        except Exception as e:
            return Done(key, "error", (traceback.format_exc(), e), name)
        finally:
            self._running.pop(key, None)
            if watch and _fingerprint() != before:
                self._moved = key


def _fingerprint() -> tuple:
    """Where the global ``np.random`` stands: its position and two words of its key."""
    _, key, pos, has_gauss, _ = np.random.get_state()
    return pos, int(key[0]), int(key[-1]), has_gauss
