"""How a dataset computes its batches: inline, in threads, or in worker processes."""

from __future__ import annotations

import multiprocessing
import sys
import warnings
from dataclasses import dataclass
from typing import Literal

from kseq.validators import integer, one_of, positive_number

__all__ = ["Mode", "WorkerConfig", "default_start_method"]

Mode = Literal["inline", "threads", "processes"]


def default_start_method() -> str:
    """``fork`` where the platform has it, else the platform default.

    Where JAX runs the default is ``forkserver``: JAX warns that ``os.fork()`` after it
    has started its threads may deadlock, and the forkserver is forked from a clean
    process instead. JAX runs when Keras's backend is JAX, or when JAX has started an
    XLA backend in this process (the user ran JAX code). Keras on PyTorch imports JAX
    too, without starting it: that does not count. Only loaded modules are asked:
    nothing is imported, so the core stays framework-free. PyTorch keeps ``fork``:
    torch's own ``DataLoader`` forks its workers after torch has run, and kseq's
    workers, forked the same way, may call torch (tests/test_torch.py).
    """
    available = multiprocessing.get_all_start_methods()
    if "fork" not in available:
        return multiprocessing.get_context().get_start_method()
    if _jax_runs() and "forkserver" in available:
        return "forkserver"
    return "fork"


def _jax_runs() -> bool:
    keras = sys.modules.get("keras")
    config = getattr(keras, "config", None)
    if config is not None and config.backend() == "jax":
        return True
    bridge = sys.modules.get("jax._src.xla_bridge")  # where JAX keeps the XLA backends it has started
    return bool(getattr(bridge, "_backends", None))


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
        timeout: seconds a worker may spend on one batch (``None``: no limit). A batch that
            takes longer raises :class:`~kseq.errors.WorkerError` naming it, with the stuck
            worker's Python stack, and the pool is replaced. The clock starts when a worker
            is free to start the batch, so a worker process's start-up is not counted.

    Example:
        >>> WorkerConfig(workers=2, use_multiprocessing=True).mode
        'processes'
        >>> WorkerConfig(workers=4).mode, WorkerConfig().mode
        ('threads', 'inline')
        >>> WorkerConfig(workers=2, timeout=30).timeout
        30.0
    """

    workers: int = 1
    use_multiprocessing: bool = False
    max_queue_size: int = 10
    start_method: str | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "workers", integer(self.workers, "workers", minimum=0))
        object.__setattr__(self, "max_queue_size", integer(self.max_queue_size, "max_queue_size", minimum=1))
        flag = one_of(self.use_multiprocessing, "use_multiprocessing", (True, False))
        object.__setattr__(self, "use_multiprocessing", bool(flag))
        available = multiprocessing.get_all_start_methods()
        fix = "Those are this platform's start methods; None picks its default."
        one_of(self.start_method, "start_method", [*available, None], fix=fix)
        if self.timeout is not None:
            fix = "It is in seconds per batch; None waits for ever."
            object.__setattr__(self, "timeout", positive_number(self.timeout, "timeout", fix=fix))
        if self.start_method is not None and self.mode != "processes":
            warnings.warn(
                f"start_method={self.start_method!r} is ignored: batches are computed {self.mode}. "
                "Pass use_multiprocessing=True (and workers >= 1) to start worker processes.",
                stacklevel=4,
            )
        if self.timeout is not None and self.mode == "inline":
            warnings.warn(
                f"timeout={self.timeout} is ignored: batches are computed inline, in the caller's thread, which "
                "kseq cannot interrupt. Pass workers >= 2 (threads) or use_multiprocessing=True for a timeout.",
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

