"""How a dataset computes its batches: inline, in threads, or in worker processes."""

from __future__ import annotations

import multiprocessing
import sys
import warnings
from dataclasses import dataclass
from typing import Literal

from kseq.validators import integer, one_of

__all__ = ["Mode", "WorkerConfig", "default_start_method"]

Mode = Literal["inline", "threads", "processes"]


def default_start_method() -> str:
    """``fork`` where the platform has it, else the platform default.

    Where JAX is loaded the default is ``forkserver``: JAX warns that ``os.fork()``
    after it has started its threads may deadlock, and the forkserver is forked
    from a clean process instead. JAX is loaded when the user imported it or when
    Keras runs on the JAX backend (Keras imports its backend on ``import keras``).
    Only ``sys.modules`` is asked: nothing is imported, so the core stays framework-free.
    """
    available = multiprocessing.get_all_start_methods()
    if "fork" not in available:
        return multiprocessing.get_context().get_start_method()
    if "jax" in sys.modules and "forkserver" in available:
        return "forkserver"
    return "fork"


@dataclass(frozen=True)
class WorkerConfig:
    """Where batches are computed, with ``keras.utils.PyDataset``'s arguments.

    ``workers > 1`` (threads) or ``use_multiprocessing=True`` with ``workers >= 1``
    (processes) start kseq's own persistent pool; anything else computes inline,
    exactly as Keras decides for a PyDataset.

    Args:
        workers: threads or processes computing batches.
        use_multiprocessing: processes instead of threads.
        max_queue_size: batches computed ahead of the one asked for (and in flight).
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"``; ``None`` picks
            :func:`default_start_method` when the pool starts.

    Example:
        >>> WorkerConfig(workers=2, use_multiprocessing=True).mode
        'processes'
        >>> WorkerConfig(workers=4).mode, WorkerConfig().mode
        ('threads', 'inline')
    """

    workers: int = 1
    use_multiprocessing: bool = False
    max_queue_size: int = 10
    start_method: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "workers", integer(self.workers, "workers", minimum=0))
        object.__setattr__(self, "max_queue_size", integer(self.max_queue_size, "max_queue_size", minimum=1))
        object.__setattr__(self, "use_multiprocessing", bool(self.use_multiprocessing))
        available = multiprocessing.get_all_start_methods()
        fix = "Those are this platform's start methods; None picks its default."
        one_of(self.start_method, "start_method", [*available, None], fix=fix)
        if self.start_method is not None and self.mode != "processes":
            warnings.warn(
                f"start_method={self.start_method!r} is ignored: batches are computed {self.mode}. "
                "Pass use_multiprocessing=True (and workers >= 1) to start worker processes.",
                stacklevel=4,
            )

    @property
    def mode(self) -> Mode:
        if self.use_multiprocessing and self.workers >= 1:
            return "processes"
        return "threads" if self.workers > 1 else "inline"

    @property
    def resolved_start_method(self) -> str:
        return self.start_method or default_start_method()

