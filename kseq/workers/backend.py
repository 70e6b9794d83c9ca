"""What the loader asks of a pool of workers, threads or processes."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from kseq.validators import is_integer

__all__ = ["Backend", "Done", "Key", "in_window", "reseed_globals"]

Key = tuple[int, int]  # (epoch, batch index)
Status = Literal["ok", "error", "skipped"]


@dataclass
class Done:
    """One finished request.

    ``value`` is backend-specific for ``"ok"`` (see :meth:`Backend.materialize`),
    ``(traceback_text, exception_or_None)`` for ``"error"``, and ``None`` for
    ``"skipped"`` (the request's epoch went stale before a worker started it).
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
    """

    def submit(self, dataset: Any, key: Key) -> None: ...

    def poll(self, timeout: float) -> list[Done]: ...

    def set_window(self, epoch: int) -> None: ...

    def pids(self) -> list[int]: ...

    def materialize(self, done: Done) -> Any: ...

    def discard(self, done: Done) -> None: ...

    def close(self, *, graceful: bool) -> None: ...


def in_window(epoch: int, low: int) -> bool:
    return low <= epoch <= low + 1


def reseed_globals(seed: object, epoch: int, index: int) -> None:
    """Seed ``np.random`` and ``random`` from ``(seed, epoch, index)`` (worker processes only).

    Legacy transforms that draw from the global generators then never repeat each
    other's draws across forked workers, and draw the same values whatever the
    worker count. kseq's own code never uses the global generators.
    """
    root = int(seed) if is_integer(seed) else 0  # type: ignore[call-overload]
    state = np.random.SeedSequence([root, int(epoch), int(index)]).generate_state(4)
    np.random.seed(state)
    random.seed(int.from_bytes(state.tobytes(), "little"))
