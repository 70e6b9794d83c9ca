"""Datasets for tests/test_framework_free.py, in a module that imports numpy and kseq only.

A worker process that unpickles one of these imports this module: whatever it imports
is loaded there. Keep Keras and every backend out of it.
"""

import sys
from pathlib import Path

import numpy as np

from kseq.datasets import Dataset

FRAMEWORKS = ("keras", "tensorflow", "jax", "torch")


class FrameworkProbe(Dataset):
    """Each batch reports, per row, which frameworks its process holds and its peak RSS in MB."""

    def build_batch(self, rows):
        loaded = [m for m in FRAMEWORKS if m in sys.modules]
        n = len(rows["x"])
        peak_mb = _peak_rss_mb()
        flags = np.array([[m in loaded for m in FRAMEWORKS]] * n)
        return ({"x": rows["x"], "frameworks": flags, "peak_mb": np.full(n, peak_mb)},)


def _peak_rss_mb():
    """This process's peak resident set (VmHWM; unlike ru_maxrss, it starts afresh at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
