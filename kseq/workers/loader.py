"""BatchLoader: serve a dataset's batches from a persistent pool, prefetching in consumption order.

# NOTE [ prefetching and fit(shuffle=True) ]
Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``, so a request is
the key ``(e, i)`` and any worker can compute it at any time. After serving
``(e, i)`` the loader keeps up to ``max_queue_size`` keys in flight or ready,
in the order they will be asked for: ``(e, i+1) ... (e, n-1), (e+1, 0) ...``,
which covers the start of the next epoch too, so no epoch starts cold.
``on_epoch_end`` moves a window: workers skip requests outside epochs
``e`` and ``e + 1`` and stale results are dropped.

``model.fit(shuffle=True)``, the Keras default, asks for a random permutation of
the indices. The loader then stays correct by serving whatever is asked on
demand, keeping the workers busy with indices of the epoch not yet served, and
warns once: kseq already shuffles samples from ``(seed, epoch)``, so
``fit(..., shuffle=False)`` loses nothing and restores prefetching. A request
for batch 0 within the same epoch is a new pass, not disorder (TF's ``predict``
reads batches 0 and 1 for its signature, then starts again at 0; a user peeks
at ``ds[0]``): it starts in order again, without a warning.

# NOTE [ running short of shared memory ]
A slot that cannot be created or grown (a full ``/dev/shm``: Docker gives 64 MB) does not
fail the batch: the worker sends that batch pickled through its pipe, as Keras's own
workers send every batch, and later batches keep using the slots that fit. The loader
warns once, with the directory and the fix (more shared memory, a smaller
``max_queue_size``, or ``KSEQ_SHM_DIR`` naming a larger directory). Data is never wrong:
a slot is only ever written whole, and a batch in the pipe is the batch itself.

# NOTE [ the pool ends with its owner ]
A dataset gives its workers a plan (``Dataset.plan``), which holds the dataset weakly,
and names itself the pool's owner: the pool closes when the dataset is collected.
It must not close when the plan is collected: the threads' queued work items hold
the plan, and a work item that finds the dataset gone ends in an error result whose
traceback holds the plan again, kept by the pool that the finalizer would close.
With the plan as owner a thread dataset dropped mid-flight kept its threads for the
life of the process whenever its last running batch ended before the next queued one
started (9 to 30 drops of 50 here, with instant batches). The owner is never queued,
so its collection is the moment nobody can use the pool; the finalizer runs in the
thread that dropped it, a worker thread included (``ThreadPool.close``).

# NOTE [ timeout ]
With ``timeout=`` the loader, while it waits for a batch, asks the pool whether any
worker has spent longer than that on its current batch (the clock starts when the
worker is free to start it). If so it raises ``WorkerError`` naming that batch, with the
worker's Python stack (processes: ``faulthandler`` on SIGUSR1; threads:
``sys._current_frames``), and closes the pool; the next batch starts a new one.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Iterator
from itertools import chain, islice
from typing import Any

from kseq.errors import WorkerError
from kseq.position import Position
from kseq.workers.backend import Backend, Done, Key
from kseq.workers.config import WorkerConfig
from kseq.workers.process import ProcessPool
from kseq.workers.shm import SlotPool, sweep_stale
from kseq.workers.threads import ThreadPool

__all__ = ["BatchLoader"]

_POLL_S = 1.0
_WARN_STACKLEVEL = 6  # warn() <- _begin <- _fetch <- get <- Dataset.__getitem__ <- its caller


class BatchLoader:
    """A dataset's own persistent pool of threads or processes, and its prefetch queue.

    ``get(dataset, epoch, index, length)`` returns ``dataset.get_batch(index, epoch)``
    computed by a worker. The pool starts on the first request and is kept across
    epochs and ``fit`` calls, until :meth:`close`, the dataset's garbage collection,
    or interpreter exit. A pickled loader arrives idle, with its configuration.

    Example:
        >>> import numpy as np
        >>> class Squares:
        ...     def get_batch(self, index, epoch):
        ...         return (np.arange(3) + 10 * epoch + index) ** 2,
        >>> loader = BatchLoader(WorkerConfig(workers=2, use_multiprocessing=True, start_method="fork"))
        >>> ds = Squares()
        >>> [loader.get(ds, 1, i, 4)[0].tolist() for i in range(2)]
        [[100, 121, 144], [121, 144, 169]]
        >>> len(loader.pids())
        2
        >>> loader.close(); loader.pids()
        []
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._owner = os.getpid()
        self._pool: Backend | None = None
        self._slots: SlotPool | None = None
        self._finalizer: weakref.finalize | None = None
        self._warned = False
        self._noticed: set[str] = set()  # kinds of pool notices already warned about
        self._reset()

    def __reduce__(self) -> tuple:
        return (BatchLoader, (self.config,))

    @property
    def running(self) -> bool:
        return self._pool is not None

    def pids(self) -> list[int]:
        """The worker processes' ids (empty for threads or when no pool runs)."""
        pool = self._pool
        return [] if pool is None else pool.pids()

    def get(
        self, dataset: Any, epoch: int, index: int, length: int, position: Position | None = None, *, owner: Any = None
    ) -> Any:
        """Batch ``index`` of ``epoch``, computed by a worker; raises :class:`WorkerError` when it failed.

        ``position``: the dataset's own tracker, which has recorded this request already; the loader
        reads the pass from it to prefetch (without one it keeps its own). ``owner``: the object whose
        collection closes the pool (default ``dataset``; NOTE [ the pool ends with its owner ]).
        """
        with self._lock:
            if position is not None:
                self._position, self._follows = position, True
            try:
                done = self._fetch(dataset, epoch, index, length, dataset if owner is None else owner)
            except BaseException:  # a broken pool, Ctrl-C, or a start that failed: stop every worker
                self.close(graceful=False)
                raise
            if done.status == "error":
                text, cause = done.value
                raise WorkerError(_batch_error_message(done, text)) from cause
            return self._pool.materialize(done)  # type: ignore[union-attr]

    def set_epoch(self, epoch: int) -> None:
        """The dataset moved to ``epoch``: workers skip requests of other epochs (lock-free, any thread)."""
        pool = self._pool
        if pool is not None:
            pool.set_window(epoch)

    def close(self, *, graceful: bool = True) -> None:
        """Stop the workers and remove the shared memory; the next request starts a new pool."""
        if os.getpid() != self._owner:
            return  # a forked child never touches its parent's pool
        with self._lock:
            pool, slots = self._pool, self._slots
            self._pool = self._slots = None
            self._reset()
            try:
                if pool is not None:
                    pool.close(graceful=graceful)
            finally:
                if slots is not None:
                    slots.close()

    # -- one request ---------------------------------------------------------------

    def _reset(self) -> None:
        self._pending: set[Key] = set()
        self._ready: dict[Key, Done] = {}
        self._epoch: int | None = None
        self._position = Position(0)  # the pass being served: the dataset's tracker once get() names it
        self._follows = False

    def resume_at(self, epoch: int, index: int) -> None:
        """The dataset was put at batch ``index`` of ``epoch`` (``set_state``): expect that batch next, in order."""
        with self._lock:
            self._epoch = epoch
            if not self._follows:
                self._position.set(epoch, index)
            if self._pool is not None:
                self._pool.set_window(epoch)
                for key in [k for k in self._ready if not self._useful(k)]:
                    self._pool.discard(self._ready.pop(key))

    def _fetch(self, dataset: Any, epoch: int, index: int, length: int, owner: Any) -> Done:
        pool = self._ensure_started(dataset, owner)
        self._begin(epoch, index, length)
        key = (epoch, index)
        if key not in self._ready and key not in self._pending:
            self._submit(dataset, key)
        self._top_up(dataset, key, length)
        timeout = self.config.timeout
        while key not in self._ready:
            wait = _POLL_S if timeout is None else min(_POLL_S, timeout / 4)
            for done in pool.poll(wait):
                self._collect(dataset, done, key)
            if timeout is not None and key not in self._ready:
                self._check_overdue(pool, timeout, key)
        self._warn_notices(pool)
        done = self._ready.pop(key)
        self._top_up(dataset, key, length)
        return done

    def _check_overdue(self, pool: Backend, timeout: float, wanted: Key) -> None:
        late = pool.overdue(timeout, wanted)
        if late is None:
            return
        (epoch, index), where = late
        waiting = "" if late[0] == wanted else f" (batch {wanted[1]} of epoch {wanted[0]} was asked for)"
        msg = (
            f"Batch {index} of epoch {epoch} took longer than timeout={timeout:g} s{waiting}. {where}\n"
            "The pool is closed; the next batch starts a new one. If batches are legitimately this slow, "
            "raise timeout= (or pass timeout=None); to debug, compute the batch in the main process: "
            f"ds.get_batch({index}, epoch={epoch})."
        )
        raise WorkerError(msg)

    def _warn_notices(self, pool: Backend) -> None:
        for kind, text in pool.notices():
            if kind in self._noticed:
                continue
            self._noticed.add(kind)
            if kind == "shm":
                text = _short_of_memory_message(text, self.config)
            warnings.warn(text, stacklevel=_WARN_STACKLEVEL - 1)

    def _ensure_started(self, dataset: Any, owner: Any) -> Backend:
        if self._pool is not None:
            return self._pool
        if self.config.mode == "processes":
            slots = SlotPool()
            sweep_stale(slots.directory)
            try:
                self._pool = ProcessPool(
                    dataset, workers=self.config.workers, start_method=self.config.resolved_start_method, slots=slots
                )
            except BaseException:
                slots.close()
                raise
            self._slots = slots
        else:
            self._pool = ThreadPool(workers=self.config.workers)
        if self._finalizer is None or not self._finalizer.alive:
            self._finalizer = weakref.finalize(owner, self.close)
        return self._pool

    def _begin(self, epoch: int, index: int, length: int) -> None:
        position = self._position
        if not self._follows:  # used on its own (no dataset tracker): record the request here
            if position.length != length or position.epoch != epoch:
                position = self._position = Position(length, epoch)
            position.request(index)
        if epoch != self._epoch:
            self._epoch = epoch
            self._pool.set_window(epoch)  # type: ignore[union-attr]
            stale = [k for k in self._ready if k != (epoch, index) and not self._useful(k)]  # the request is kept
            for key in stale:
                self._pool.discard(self._ready.pop(key))  # type: ignore[union-attr]
        if not position.in_order:
            self._warn_out_of_order(index)

    def _submit(self, dataset: Any, key: Key) -> None:
        self._pool.submit(dataset, key)  # type: ignore[union-attr]
        self._pending.add(key)

    def _collect(self, dataset: Any, done: Done, wanted: Key) -> None:
        self._pending.discard(done.key)
        if done.status == "skipped":
            if done.key == wanted:  # on_epoch_end moved the window while this batch was asked for: a request wins
                self._pool.set_window(wanted[0])  # type: ignore[union-attr]
                self._submit(dataset, wanted)
        elif done.key == wanted or self._useful(done.key):
            self._ready[done.key] = done
        else:
            self._pool.discard(done)  # type: ignore[union-attr]

    def _useful(self, key: Key) -> bool:
        epoch, index = key
        current = self._epoch if self._epoch is not None else epoch
        return (epoch == current and index not in self._position.served) or epoch == current + 1

    def _top_up(self, dataset: Any, key: Key, length: int) -> None:
        room = self.config.max_queue_size - len(self._pending) - len(self._ready)
        if room > 0:
            for ahead in list(islice(self._ahead(key, length), room)):
                self._submit(dataset, ahead)

    def _ahead(self, key: Key, length: int) -> Iterator[Key]:
        """The keys most likely to be asked for next, best first, neither in flight nor ready."""
        epoch, index = key
        if self._position.in_order:
            keys: Iterator[Key] = chain(
                ((epoch, i) for i in range(index + 1, length)), ((epoch + 1, i) for i in range(length))
            )
        else:  # shuffled requests: any index of this epoch not served yet will be asked for
            scan = islice(chain(range(index + 1, length), range(index)), 8 * self.config.max_queue_size + 64)
            keys = ((epoch, i) for i in scan if i not in self._position.served)
        return (k for k in keys if k not in self._pending and k not in self._ready)

    def _warn_out_of_order(self, index: int) -> None:
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"Batch {index} was requested out of order, so kseq's "
            "workers serve them on demand instead of prefetching ahead. model.fit(shuffle=True), the Keras "
            "default, does this. kseq datasets already shuffle samples every epoch from (seed, epoch), so "
            "pass shuffle=False to fit (or evaluate/predict) to restore prefetching; the training data "
            "stays shuffled.",
            stacklevel=_WARN_STACKLEVEL,
        )


def _short_of_memory_message(why: str, config: WorkerConfig) -> str:
    return (
        f"kseq's worker processes ran short of shared memory ({why}). Batches that do not fit now travel "
        "pickled through the worker pipes, as Keras's own workers send them: the same batches, but a copy "
        "and a pickle each, so slower. To restore full speed: give the machine more shared memory (Docker: "
        f"--shm-size=2g), lower max_queue_size (now {config.max_queue_size}) or workers (now {config.workers}), "
        "or set KSEQ_SHM_DIR to a larger memory-backed directory."
    )


def _batch_error_message(done: Done, text: str) -> str:
    epoch, index = done.key
    return (
        f"{done.worker} raised while computing batch {index} of epoch {epoch}. "
        f"To debug it in the main process: ds.get_batch({index}, epoch={epoch}), or workers=0.\n"
        f"Worker traceback:\n{text}"
    )
