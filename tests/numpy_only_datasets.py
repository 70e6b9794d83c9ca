"""Datasets for worker-process tests (test_framework_free, test_reliability): a module of numpy and kseq only.

A worker process that unpickles one of these imports this module: whatever it imports
is loaded there. Keep Keras and every backend out of it.
"""

import os
import sys
import time
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


class BusyAfterThree(Dataset):
    """1 MiB float32 batches (every value its row); from batch 3 on, a worker announces itself and then works
    for 10 minutes: a worker caught there can only end by its watchdog (tests/test_reliability.py, SIGKILL)."""

    announce_dir = ""

    def build_batch(self, rows):
        if rows["x"][0] >= 3 * len(rows["x"]):
            (Path(self.announce_dir) / str(os.getpid())).touch()
            time.sleep(600)
        return (np.repeat(rows["x"][:, None], 32768, axis=1).astype("float32"),)
