"""Position: which epoch each batch request belongs to; the one tracker of a dataset's place.

# NOTE [ epochs are passes ]
Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``, so the only thing a
dataset has to get right is ``e`` for each request. Keras never says it: a PyDataset's
``on_epoch_begin()`` and ``on_epoch_end()`` take no epoch, and Keras ends passes that
trained nothing (its peeks, below). So kseq counts epochs as *passes over the batches*:

* a pass is complete once every batch index was served; the epoch advances when a complete
  pass is ended (``on_epoch_end``) or when a batch it already served is asked for again
  (the next epoch's first request, even if it comes before ``on_epoch_end``: tf.data reads
  ahead, across Keras's epochs under ``steps_per_epoch``, so a Keras epoch may end having
  asked for nothing; such an end changes nothing). Until a first batch is asked for, every
  ``on_epoch_end`` moves to the next epoch, as a loop over ``get_batch`` expects;
* ``on_epoch_end`` after an incomplete pass of more than :data:`PEEK_BATCHES` batches
  (``fit(steps_per_epoch=k)`` with ``k < len``) leaves the pass open: Keras continues the
  same index stream in its next epoch, so every batch is still served once per epoch. If
  instead a batch of the pass is asked for again (a loop that reads part of an epoch and
  calls ``on_epoch_end``), that end was an epoch's end: the request starts the next epoch;
* ``on_epoch_end`` after at most :data:`PEEK_BATCHES` batches of an incomplete pass may be
  Keras's peek (see :mod:`kseq.keras_compat`, NOTE [ Keras's peeks ]). Those batches are
  kept as *peeked*: if one of them is asked for again, the peek did not count and its
  batches leave the pass; if not (``steps_per_epoch=1``, or a reader that ran ahead), they
  were real and stay in it.

So ``model.fit(ds, epochs=n)`` trains epochs ``0 .. n-1`` on every backend and leaves
``ds.epoch == n``, whatever the peeks, and a hand-written loop ``for i in range(len(ds)):
ds[i]`` followed by ``ds.on_epoch_end()`` moves to the next epoch as before. What cannot be
told apart: a dataset of at most :data:`PEEK_BATCHES` batches (its peek is a whole pass).
``set(epoch, batch)`` puts the position anywhere (``set_state``, ``set_epoch``).
"""

from __future__ import annotations

__all__ = ["PEEK_BATCHES", "Position"]

PEEK_BATCHES = 2  # the most batches a Keras peek reads (TensorFlow's signature: batches 0 and 1)


class Position:
    """The epoch of each batch request, and the pass in progress (NOTE [ epochs are passes ]).

    Example:
        >>> p = Position(3)
        >>> [p.request(i) for i in (0, 1)]; p.end_epoch()   # a peek: 2 of 3 batches, then an epoch end
        [0, 0]
        >>> [p.request(i) for i in (0, 1, 2)]; p.end_epoch(); p.epoch   # the real epoch 0
        [0, 0, 0]
        1
        >>> [p.request(i) for i in (0, 1, 2, 0)]   # a reader that runs ahead into epoch 2
        [1, 1, 1, 2]
    """

    __slots__ = ("_ended", "_peeked", "_requested", "_since_end", "epoch", "in_order", "last", "length", "served")

    def __init__(self, length: int, epoch: int = 0) -> None:
        self.length = int(length)
        self.epoch = int(epoch)
        self._requested = False  # no batch asked for yet: every end is an epoch's (a loop over get_batch)
        self._new_pass()

    def _new_pass(self) -> None:
        self.served: set[int] = set()
        self._peeked: set[int] = set()
        self._since_end: set[int] = set()
        self._ended = False  # on_epoch_end was called inside this (incomplete) pass
        self.last: int | None = None
        self.in_order = True  # every request of this pass followed the one before it (or restarted at 0)

    @property
    def complete(self) -> bool:
        return len(self.served) >= self.length

    @property
    def next(self) -> int:
        """One past the last batch served in this pass (0 before the first): where an in-order reader goes on."""
        return 0 if self.last is None else self.last + 1

    def request(self, index: int) -> int:
        """Record a request for batch ``index`` and return the epoch it belongs to."""
        if index in self.served:
            if index in self._peeked:  # a peek's batch asked for again: the peek did not count
                self.served -= self._peeked
                self._peeked = set()
                self.last = max(self.served) if self.served else None
            elif self.complete or self._ended:
                self._advance()
            else:  # a batch read again inside a pass (a user's ds[0], predict's signature): start the pass again
                self._new_pass()
        if self.last is not None and index != self.last + 1:
            self.in_order = False
        self._requested = True
        self.served.add(index)
        self._since_end.add(index)
        self.last = index
        return self.epoch

    def end_epoch(self) -> None:
        """``on_epoch_end``: advance after a complete pass, otherwise keep it open (see the NOTE)."""
        if self.complete or not self._requested:
            self._advance()
            return
        if len(self._since_end) <= PEEK_BATCHES:
            self._peeked = set(self._since_end)
        else:
            self._peeked, self._ended = set(), True
        self._since_end = set()

    def set(self, epoch: int, batch: int = 0) -> None:
        """Put the position at ``batch`` of ``epoch``: batches before it count as served, in order."""
        self.epoch = int(epoch)
        self._new_pass()
        self.served = set(range(int(batch)))
        self._since_end = set(self.served)  # restored, not peeked: an end after them ends an epoch's part
        self.last = int(batch) - 1 if batch else None

    def _advance(self) -> None:
        self.epoch += 1
        self._new_pass()
