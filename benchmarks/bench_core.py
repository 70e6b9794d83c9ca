"""The framework-free core: what importing it costs, `python -m kseq inspect`, and kseq's pad_sequences.

* start-up, each command in a fresh process, 3 turns (the commands in turns): ``import keras`` (with its
  backend), ``import kseq.batching, kseq.sources.pack`` (numpy, h5py; no framework), and
  ``python -m kseq inspect`` on a small HDF5 file; wall seconds and peak RSS (MB) of the process;
* ``pad_sequences``: 256 sequences of 5-30 int32 tokens, post-padded, kseq's against
  ``keras.utils.pad_sequences(padding="post")``, from numpy arrays and from Python lists, in turns,
  best of 5 x 200 calls; µs per batch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from benchmarks.common import Result, best_in_turns, in_turns, spread
from kseq.batching import pad_sequences
from kseq.sources.pack import pack

SUITE = "core"
ROOT = Path(__file__).resolve().parent.parent
# The child prints its own peak RSS (VmHWM) when it exits.
PEAK = ("import atexit; atexit.register(lambda: print('VmHWM', "
        "open('/proc/self/status').read().split('VmHWM:')[1].split()[0]))")


def run(quick: bool) -> list[Result]:
    turns = 2 if quick else 3
    folder = Path(tempfile.mkdtemp(prefix="kseq-bench-core-"))
    try:
        path = folder / "small.h5"
        pack(path, {"x": np.zeros((100, 8), "float32"), "y": np.arange(100)}, progress=False)
        commands = {
            "import keras": "import keras",
            "import kseq.batching, kseq.sources.pack": "import kseq.batching, kseq.sources.pack",
            "python -m kseq inspect": f"import sys; sys.argv = ['kseq', 'inspect', {str(path)!r}]; "
                                      "import runpy; runpy.run_module('kseq', run_name='__main__')",
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        peaks: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(turns):
            for name, code in commands.items():
                wall, peak = _start(code)
                seconds[name].append(wall)
                peaks[name].append(peak)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results = [Result(SUITE, f"start-up: {name} {spread(seconds[name])}", min(seconds[name]), "s") for name in commands]
    results += [Result(SUITE, f"peak RSS: {name} {spread(peaks[name])}", max(peaks[name]), "MB") for name in commands]
    return results + _padding(turns if quick else 5, 50 if quick else 200)


def _start(code: str) -> tuple[float, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", f"{PEAK}\n{code}"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True)
    wall = time.perf_counter() - start
    return wall, int(out.stdout.split("VmHWM")[-1].split()[0]) / 1024


def _padding(turns: int, calls: int) -> list[Result]:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(1, 1000, size=rng.integers(5, 31)).astype(np.int32) for _ in range(256)]
    lists = [a.tolist() for a in arrays]
    if not np.array_equal(pad_sequences(arrays), keras.utils.pad_sequences(arrays, padding="post", dtype="int32")):
        raise RuntimeError("kseq and Keras pad differently")
    results = []
    for label, seqs in (("numpy arrays", arrays), ("Python lists", lists)):
        runs = {
            f"keras.utils.pad_sequences, {label}": lambda s=seqs: _per_call(
                lambda: keras.utils.pad_sequences(s, padding="post", dtype="int32"), calls),
            f"kseq pad_sequences, {label}": lambda s=seqs: _per_call(lambda: pad_sequences(s), calls),
        }
        values = in_turns(runs, turns)  # calls per second
        results += best_in_turns("pad", values, next(iter(runs)), unit="calls/s")
    return results


def _per_call(fn: Callable[[], object], calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return calls / (time.perf_counter() - start)
