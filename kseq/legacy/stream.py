"""A Python generator handed out one batch at a time, under one lock, to Keras 3's index requests.

# NOTE [ generator windows ]
A PyDataset is asked for batch *indices*; a generator can only give its next
yield. Keras 3.15 asks in ways that would drop or repeat yields if every request
simply took ``next(generator)``:

  * On TensorFlow, ``fit``/``evaluate``/``predict`` call ``ds[0]`` and ``ds[1]``
    to infer the tf.data signature before ``on_epoch_begin`` (outside any
    epoch), then ask for the same indices again during the epoch.
  * With ``workers > 1`` the thread pool starts in the adapter's
    ``on_epoch_begin`` *before* the dataset's own ``on_epoch_begin`` runs
    (keras#23283), so its first requests may also arrive outside the epoch.
  * On JAX, an unbuilt model opens a window (``on_epoch_begin``), takes one batch
    to build itself symbolically, and closes it (``on_epoch_end``) before epoch 1.
  * ``fit`` calls ``on_epoch_end`` once before the first epoch.
  * ``fit(shuffle=True)`` asks for the indices of an epoch in a random order.

So a :class:`Stream` hands out yields like this:

  * Outside a window, a request for index ``i`` *reserves* the next yield for
    ``i`` (or returns the one already reserved): nothing is consumed.
  * Inside a window, a request for ``i`` takes its reservation if there is one.
    Otherwise index ``i`` gets the ``i``-th unreserved yield of the epoch, as
    long as requests come in order: Keras's thread pool (``workers > 1``) asks
    for ``0, 1, 2, ...`` but its threads reach the lock up to ``workers - 1``
    places out of turn, so a yield pulled early is parked for its own index.
    Batches are then trained in exactly the generator's order, as Keras 2's
    threads (which read and queued under one lock) trained them. A request
    further ahead than that means Keras is shuffling (``fit(shuffle=True)``): the
    window stops parking, and each request takes the next yield, so memory
    stays at a few batches whatever the order.
  * A window that is an epoch advances the epoch counter, drops leftover
    reservations, and has a factory start a new generator. A window that is
    not (JAX's build pass, or a run interrupted at once) gives the batches it
    took back to the front of the stream, so no yield is lost. With
    ``workers > 1`` ``replay`` is 0: Keras's enqueuer keeps the batches it
    prefetched and serves them in the next window itself. Parked yields always
    go back.
  * Which windows are epochs: when ``marks`` is on, exactly those opened after
    a :meth:`Stream.mark`. ``fit_generator`` and friends turn it on for their
    call and mark from a callback's ``on_epoch_begin`` / ``on_test_begin`` /
    ``on_predict_begin``, which Keras sends just before a real pass and never
    before its build or signature passes. Without marks (a GeneratorDataset
    passed to ``model.fit`` directly), a window is told by its size: one that
    ends with all ``steps`` delivered (served in it, or reserved before it by
    thread pool requests that came early and were not asked again) is an
    epoch; one that served at most ``replay`` batches with fewer delivered is
    not. That guess fails for ``steps == 1`` on JAX, where the build pass takes
    a whole epoch's worth: it then counts as epoch 1 and costs one yield.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, cast

from kseq.errors import StructureError

__all__ = ["Stream"]

Item = tuple[str, Any]  # (where it came from, e.g. "epoch 1, step 3 of 10"; the raw yield)


class Stream:
    """The yields of a generator, or of a new generator per epoch from a factory; see NOTE [ generator windows ].

    Args:
        source: a generator (any iterator), read across epochs without restarting;
            or a function returning one, called again at the start of every epoch.
        steps: batches per epoch.
        replay: how many batches a window may take and still give them back when it
            ends before ``steps``; 0 gives nothing back.
        slack: how far out of turn requests may come (threads) and still get the
            yield of their own index.

    Example:
        >>> s = Stream(iter(range(100)), steps=3)
        >>> s.take(0)[1], s.take(1)[1], s.take(0)[1]  # outside an epoch: reserved, not consumed
        (0, 1, 0)
        >>> s.begin(); [s.take(i)[1] for i in (2, 0, 1)]; s.end()
        [2, 0, 1]
        >>> s.epoch, s.take(0)
        (1, ('epoch 2, step 1 of 3', 3))
    """

    def __init__(
        self,
        source: Iterator[Any] | Callable[[], Iterator[Any]],
        *,
        steps: int,
        replay: int = 2,
        slack: int = 0,
    ) -> None:
        self.factory: Callable[[], Iterator[Any]] | None = None
        self._generator: Iterator[Any] | None = None
        if _is_iterator(source):
            self._generator = cast("Iterator[Any]", source)
        else:
            self.factory = cast("Callable[[], Iterator[Any]]", source)
        self.steps = steps
        self.replay = replay
        self.slack = slack
        self.epoch = 0
        self.total = 0
        self._lock = threading.Lock()
        self._ahead: deque[Item] = deque()
        self._reserved: dict[int, Item] = {}
        self._in_window = False
        self._served = 0
        self._kept: list[Item] = []
        self._holes: list[int] = []  # indices reserved when the window opened, sorted
        self._parked: dict[int, Item] = {}
        self._position = 0  # the next unreserved position of this window
        self._ordered = True
        self._pulled = 0  # yields pulled for the current epoch
        self._ended: str | None = None
        self.marks = False  # whether windows are told apart by mark() instead of by size
        self._mark = False  # a mark() since the last window opened
        self._real = False  # the open window was marked

    def take(self, index: int) -> Item:
        """The batch for ``index``: reserved outside a window, consumed inside one."""
        with self._lock:
            if not self._in_window:
                if index not in self._reserved:
                    self._reserved[index] = self._next()
                return self._reserved[index]
            if index in self._reserved:
                item = self._reserved.pop(index)
            elif index in self._parked:
                item = self._parked.pop(index)
            else:
                item = self._claim(index)
            self._served += 1
            if self._served <= self.replay:
                self._kept.append(item)
            else:
                self._kept.clear()
            return item

    def mark(self) -> None:
        """Keras is about to start a real epoch: the next window counts as one (when ``marks`` is on)."""
        with self._lock:
            self._mark = True

    def begin(self) -> None:
        with self._lock:
            self._real, self._mark = self._mark, False
            self._in_window = True
            self._served = 0
            self._kept = []
            self._holes = sorted(self._reserved)
            self._position = 0
            self._ordered = True

    def end(self) -> None:
        with self._lock:
            if not self._in_window:
                return  # Keras's reset before the first epoch
            self._in_window = False
            if self.marks:
                build_pass = not self._real
            else:
                # Reservations still held were delivered before the window opened (a thread pool's head start).
                delivered = self._served + len(self._reserved)
                build_pass = delivered < self.steps and self._served <= self.replay
            back = ([*self._kept] if build_pass else []) + [self._parked[i] for i in sorted(self._parked)]
            self._ahead.extendleft(reversed(back))
            self._kept, self._parked = [], {}
            if build_pass:
                return
            self._reserved.clear()
            self.epoch += 1
            if self.factory is not None:
                self._close()
            self._pulled = len(self._ahead)

    def set_epoch(self, epoch: int) -> None:
        with self._lock:
            self.epoch = int(epoch)

    def _claim(self, index: int) -> Item:
        """Index ``index``'s own yield while requests come in order; the next yield once they do not."""
        if self._ordered:
            position = index - bisect.bisect_left(self._holes, index)
            if self._position <= position <= self._position + self.slack:
                for p in range(self._position, position):
                    self._parked[self._index_at(p)] = self._next()
                self._position = position + 1
                return self._next()
            self._ordered = False  # Keras is shuffling: any yield will do, and none is parked from now on
        return self._next()

    def _index_at(self, position: int) -> int:
        index = position
        for hole in self._holes:
            if hole <= index:
                index += 1
        return index

    def _next(self) -> Item:
        if self._ahead:
            return self._ahead.popleft()
        if self._ended is not None:
            raise StructureError(self._ended)
        generator = self._generator if self._generator is not None else self._start()
        where = f"epoch {self.epoch + 1}, step {self._pulled + 1} of {self.steps}"
        try:
            raw = next(generator)
        except StopIteration:
            self._ended = self._exhausted(where)
            raise StructureError(self._ended) from None
        except Exception as e:
            if hasattr(e, "add_note"):  # Python 3.11+
                e.add_note(f"kseq: raised by the generator at {where}.")
            raise
        self._pulled += 1
        self.total += 1
        return where, raw

    def _start(self) -> Iterator[Any]:
        factory = cast("Callable[[], Iterator[Any]]", self.factory)  # _generator is None only for a factory
        generator = factory()
        if not _is_iterator(generator):
            msg = (
                f"The function {_name(self.factory)} passed as the generator returned {type(generator).__name__}. "
                "Expected it to return a generator (a function with `yield`), called once per epoch. "
                "Pass the generator itself, or a function that returns a new one."
            )
            raise StructureError(msg)
        self._generator = generator
        return generator

    def _close(self) -> None:
        close = getattr(self._generator, "close", None)
        self._generator = None
        self._ahead.clear()
        self._ended = None
        if close is not None:
            close()

    def _exhausted(self, where: str) -> str:
        head = f"The generator ended at {where}"
        if self.factory is not None:
            given = "nothing" if self._pulled == 0 else f"only {self._pulled} batches"
            return (
                f"{head}: this epoch's generator (a new one from {_name(self.factory)}) yielded {given}. "
                f"Expected at least steps_per_epoch={self.steps} batches per epoch. Lower steps_per_epoch "
                f"to {max(self._pulled, 1)}, or make the generator yield more."
            )
        return (
            f"{head}, after {self.total} batches in all. A generator is not restarted between epochs, so it must "
            f"yield steps_per_epoch x epochs batches (steps_per_epoch={self.steps}). Expected a generator that never "
            "ends (a `while True:` loop, as Keras 2 generators were written); or pass a function that returns a "
            "new generator, GeneratorDataset(make_generator, ...), to restart it every epoch; or lower steps_per_epoch."
        )


def _is_iterator(obj: object) -> bool:
    return hasattr(obj, "__next__") and hasattr(obj, "__iter__")


def _name(fn: object) -> str:
    return f"{getattr(fn, '__qualname__', type(fn).__name__)}()"
