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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def tune_malloc(*, mmap_threshold: int = 32 * 2**20, trim_threshold: int = 64 * 2**20) -> bool:
    """Set glibc's mmap and trim thresholds for this process (32 and 64 MiB: the most glibc's own
    dynamic threshold grows to). Returns whether they were set: ``False`` off Linux or without glibc.

    Example:
        >>> tune_malloc() in (True, False)
        True
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
        return libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
