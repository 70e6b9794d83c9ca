"""``tune_malloc()``: keep large freed temporaries in glibc's heap instead of unmapping them.

# NOTE [ malloc thresholds ]
A batch is built from fresh arrays of hundreds of KB. Once TensorFlow has run in a
process, glibc maps and unmaps every such temporary (its dynamic mmap threshold no
longer grows), and each batch pays page faults for memory it just gave back.
Measured: workers forked after a ``fit`` spent several times the CPU time per batch,
most of it in the kernel, and ``fit`` fed by a MultiInputDataset fell short of numpy
arrays passed to ``fit`` by default and matched them with these thresholds (numbers in
benchmarks/README.md, the assembly fit table and the workers malloc rows). kseq's worker
processes call this at start; the user's own process is changed only if the user
calls it (or sets ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``).

TensorFlow sets ``M_TRIM_THRESHOLD`` to 128 KB itself the first time a process runs a
generator dataset ("Memory patch applied", ``generator_dataset_op.cc``): inside the first
``fit`` on a PyDataset, after a ``tune_malloc()`` at the top of the user's script. So the
thresholds ``tune_malloc`` set are set again (:func:`keep_tuned`, two ``mallopt`` calls,
under a microsecond) before every batch a kseq dataset serves in that process. Without it,
an inline ``build_batch`` of 50 reused 1 MB temporaries took 12,850 page faults a batch
through ``fit`` whether or not the user had called ``tune_malloc()`` (0 now; tests/test_workers.py),
and the workers suite's uint8-heavy inline loader trained at 1.4 batches/s instead of 10.0
(benchmarks/README.md, workers). TensorFlow does this once per process, so a later ``fit`` keeps
whatever was set last.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

__all__ = ["keep_tuned", "tune_malloc"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters

# The thresholds tune_malloc() set in this process (a forked child inherits them with glibc's state).
_tuned: tuple[int, int] | None = None


def tune_malloc(*, mmap_threshold: int = 32 * 2**20, trim_threshold: int = 64 * 2**20) -> bool:
    """Set glibc's mmap and trim thresholds for this process (32 and 64 MiB: the most glibc's own
    dynamic threshold grows to), and keep them set: kseq datasets set them again before each batch,
    since TensorFlow's ``fit`` changes one (NOTE [ malloc thresholds ]). Returns whether they were
    set: ``False`` off Linux or without glibc.

    Example:
        >>> tune_malloc() in (True, False)
        True
    """
    global _tuned
    thresholds = (int(mmap_threshold), int(trim_threshold))
    ok = _set(*thresholds)
    _tuned = thresholds if ok else None
    return ok


def keep_tuned() -> None:
    """Set again the thresholds :func:`tune_malloc` set in this process; nothing if it was not called."""
    if _tuned is not None:
        _set(*_tuned)


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    return mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, looked up once (``find_library`` runs a process: 2.2 ms); ``None`` where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return None
