"""The stateful stream layout: sequences laid out as ``batch_size`` parallel, contiguous streams.

# NOTE [ stateful streams ]
A stateful RNN carries the state of row ``i`` of one batch into row ``i`` of the next.
So row ``i`` of batch ``k + 1`` must continue row ``i`` of batch ``k``: each row is a
*stream*, and each stream is a queue of *pieces*, a piece being a run of contiguous
windows of ``timesteps`` steps from one sequence.

* A sequence of ``n`` steps makes ``ceil(n / timesteps)`` windows; only its last window
  can be short, and it is post-padded (the real steps come first, so their outputs do
  not depend on the padding).
* With ``split=True`` a sequence may be cut, at window boundaries, into pieces of at
  most ``ceil(total_windows / batch_size)`` windows, so that one long series fills every
  stream. Each cut starts a fresh state: that is the price of using all rows.
* Pieces go to streams longest first, each to the least-filled stream (ties: the lowest
  row), which keeps padding small. A stream that runs out is padded with empty windows
  until the longest stream ends, so every batch has exactly ``batch_size`` rows.
* ``starts[k, i]`` is true where row ``i`` of batch ``k`` is the first window of a piece:
  there the state of that row must be reset before the batch (see
  :class:`kseq.callbacks.ResetStates`). No real step is lost or repeated.

The layout depends on the lengths alone, not on the epoch: it is a pure function, the
same for every epoch, worker and caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kseq.errors import StructureError
from kseq.samplers.base import check_batch_size
from kseq.validators import batch_index, integer

__all__ = ["StreamLayout", "StreamSampler", "stream_layout"]


@dataclass(frozen=True)
class StreamLayout:
    """Where every window sits: arrays of shape ``(num_batches, batch_size)``.

    Attributes:
        sequence: the sequence of each window, ``-1`` for an empty (padding) window.
        start: the window's first step within its sequence (0 for padding).
        length: the real steps in the window (``timesteps``, fewer for a sequence's
            last window, 0 for padding).
        starts: the window is the first of a piece: reset that row's state before it.
        timesteps: steps per window.

    Example:
        >>> layout = stream_layout([5, 2], batch_size=2, timesteps=2, split=False)
        >>> layout.num_batches, layout.sequence.tolist(), layout.length.tolist()
        (3, [[0, 1], [0, -1], [0, -1]], [[2, 2], [2, 0], [1, 0]])
        >>> sequence, step = layout.steps(2)
        >>> sequence.tolist(), step.tolist()
        ([[0, -1], [-1, -1]], [[4, -1], [-1, -1]])
    """

    sequence: np.ndarray
    start: np.ndarray
    length: np.ndarray
    starts: np.ndarray
    timesteps: int

    @property
    def num_batches(self) -> int:
        return int(self.sequence.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.sequence.shape[1])

    def steps(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(sequence, step)`` of every slot of ``batch``, each ``(batch_size, timesteps)``; ``-1`` is padding."""
        offsets = np.arange(self.timesteps)
        real = offsets[None, :] < self.length[batch][:, None]
        sequence = np.where(real, self.sequence[batch][:, None], -1)
        step = np.where(real, self.start[batch][:, None] + offsets[None, :], -1)
        return sequence, step


def stream_layout(lengths: Sequence[int], *, batch_size: int, timesteps: int, split: bool) -> StreamLayout:
    """Lay out sequences of ``lengths`` steps as ``batch_size`` contiguous streams.

    See NOTE [ stateful streams ] in this module for the rules.

    Example:
        >>> layout = stream_layout([10], batch_size=2, timesteps=3, split=True)
        >>> layout.start.tolist()  # one series cut in two pieces: steps 0-5 and 6-9
        [[0, 6], [3, 9]]
        >>> layout.length.tolist(), layout.starts.tolist()
        ([[3, 3], [3, 1]], [[True, True], [False, False]])
    """
    batch_size = check_batch_size(batch_size)
    timesteps = integer(timesteps, "timesteps", minimum=1)
    lengths = [integer(n, f"lengths[{j}]", minimum=1) for j, n in enumerate(lengths)]
    if not lengths:
        msg = "Expected at least one sequence. Received lengths=[]."
        raise StructureError(msg)
    windows = [math.ceil(n / timesteps) for n in lengths]
    cap = math.ceil(sum(windows) / batch_size) if split else max(windows)
    # A piece: (sequence, first window, number of windows).
    pieces = [(j, first, min(cap, w - first)) for j, w in enumerate(windows) for first in range(0, w, cap)]
    streams = _assign(pieces, batch_size)
    num_batches = max(sum(p[2] for p in stream) for stream in streams)
    shape = (num_batches, batch_size)
    sequence = np.full(shape, -1, dtype=np.int64)
    first_window = np.zeros(shape, dtype=np.int64)
    starts = np.zeros(shape, dtype=bool)
    for row, stream in enumerate(streams):
        k = 0
        for j, first, count in stream:
            sequence[k : k + count, row] = j
            first_window[k : k + count, row] = np.arange(first, first + count)
            starts[k, row] = True
            k += count
    start = first_window * timesteps
    ends = np.asarray(lengths, dtype=np.int64)[np.maximum(sequence, 0)]
    length = np.where(sequence >= 0, np.minimum(timesteps, ends - start), 0)
    start = np.where(sequence >= 0, start, 0)
    for a in (sequence, start, length, starts):
        a.flags.writeable = False
    return StreamLayout(sequence=sequence, start=start, length=length, starts=starts, timesteps=timesteps)


class StreamSampler:
    """A Sampler over concatenated sequences, in the stream layout of :func:`stream_layout`.

    ``indices(epoch, batch)`` is an array of shape ``(batch_size, timesteps)`` of row
    indices into the concatenated rows, ``-1`` where the slot is padding. It is the same
    every epoch: the order of a stateful stream is its meaning.

    Args:
        lengths: the steps of each sequence that are used as inputs.
        batch_size: rows (streams) per batch.
        timesteps: steps per window.
        split: cut sequences at window boundaries so that every stream is used.
        bases: the first row of each sequence in the concatenated rows (default: the
            sequences back to back, ``cumsum`` of ``lengths``).

    Example:
        >>> s = StreamSampler([5, 2], batch_size=2, timesteps=2, split=False)
        >>> s.indices(0, 0).tolist(), s.indices(0, 2).tolist()
        ([[0, 1], [5, 6]], [[4, -1], [-1, -1]])
        >>> s.starts(1).tolist()
        [False, False]
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        batch_size: int,
        timesteps: int,
        split: bool,
        bases: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.layout = stream_layout(lengths, batch_size=batch_size, timesteps=timesteps, split=split)
        self.lengths = tuple(int(n) for n in lengths)
        back_to_back = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.bases = np.asarray(back_to_back if bases is None else bases, dtype=np.int64)
        if self.bases.shape != (len(self.lengths),):
            msg = f"Expected one base row per sequence ({len(self.lengths)}). Received {self.bases.shape[0]}."
            raise StructureError(msg)
        self.batch_size = self.layout.batch_size
        self.timesteps = self.layout.timesteps

    def __len__(self) -> int:
        return self.layout.num_batches

    def indices(self, epoch: int, batch: int) -> np.ndarray:  # noqa: ARG002 - the same every epoch
        sequence, step = self.layout.steps(batch_index(batch, len(self)))
        return np.where(sequence >= 0, self.bases[np.maximum(sequence, 0)] + step, -1)

    def starts(self, batch: int) -> np.ndarray:
        """Rows of ``batch`` that begin a new piece (their state must be reset first)."""
        return self.layout.starts[batch_index(batch, len(self))]


def _assign(pieces: list[tuple[int, int, int]], batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Longest piece first, each to the least-filled stream (ties: the lowest row)."""
    streams: list[list[tuple[int, int, int]]] = [[] for _ in range(batch_size)]
    load = np.zeros(batch_size, dtype=np.int64)
    for piece in sorted(pieces, key=lambda p: -p[2]):  # stable: equal pieces keep their order
        row = int(np.argmin(load))
        streams[row].append(piece)
        load[row] += piece[2]
    return streams

