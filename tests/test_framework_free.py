"""The framework-free core: worker processes and `python -m kseq inspect` load no deep-learning framework.

NOTE [ a Keras class only where Keras is fed ] in kseq/datasets/_pydataset.py says how.
"""

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from numpy_only_datasets import FRAMEWORKS, FrameworkProbe

from kseq.datasets import MultiInputDataset

METHODS = [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


@pytest.mark.portable
@pytest.mark.parametrize("method", METHODS)
def test_a_numpy_only_dataset_s_worker_processes_load_no_framework(method):
    """Keras and its backend are loaded here; a spawn/forkserver worker of a numpy-only subclass has none."""
    assert "keras" in sys.modules  # the main process: the real PyDataset
    x = np.arange(64.0)
    with FrameworkProbe({"x": x}, batch_size=16, shuffle=False, workers=2, use_multiprocessing=True,
                        start_method=method) as ds:
        batches = [ds[i][0] for i in range(len(ds))]
    loaded = np.concatenate([b["frameworks"] for b in batches])
    assert not loaded.any(), {m for m, hit in zip(FRAMEWORKS, loaded.any(axis=0), strict=True) if hit}
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x)  # and the batches are right
    peak = max(float(b["peak_mb"].max()) for b in batches)
    print(f"{method} worker peak RSS {peak:.0f} MB")
    # Far below a worker holding TensorFlow (760 MB). Not tighter: the file-backed part of RSS (numpy's, h5py's
    # shared libraries) depends on the page cache, as the kernel maps a whole large folio on a fault: the same
    # worker peaked at 115 MB in one virtual environment and 151 MB in a freshly installed one.
    assert peak < 250, f"worker peak RSS {peak:.0f} MB"


@pytest.mark.portable
def test_kseq_s_own_dataset_gives_the_same_batches_in_framework_free_workers():
    """A MultiInputDataset with class weights, in spawn workers on the stand-in base, equals get_batch."""
    rng = np.random.default_rng(0)
    data = {"a": rng.normal(size=(50, 3)), "label": rng.integers(0, 3, 50)}
    kwargs = {"inputs": "a", "targets": "label", "class_weight": {0: 1.0, 1: 2.0, 2: 0.5}, "batch_size": 8,
              "seed": 3}
    inline = MultiInputDataset(data, **kwargs)
    with MultiInputDataset(data, workers=2, use_multiprocessing=True, start_method="spawn", **kwargs) as ds:
        for i in range(len(ds)):
            for got, want in zip(ds[i], inline.get_batch(i), strict=True):
                got, want = (got["a"], want["a"]) if isinstance(got, dict) else (got, want)
                np.testing.assert_array_equal(got, want)


def test_inspect_imports_no_framework(tmp_path: Path):
    """`python -m kseq inspect` answers from h5py alone: no Keras, no backend, not even pandas in the process."""
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((10, 3), "float32")
    code = (
        "import runpy, sys; sys.argv = ['kseq', 'inspect', sys.argv[1]]\n"
        "try:\n    runpy.run_module('kseq', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        f"print('LOADED', sorted(m for m in {(*FRAMEWORKS, 'pandas')!r} if m in sys.modules))"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert "(10, 3)" in out, out
    assert out.strip().splitlines()[-1] == "LOADED []", out
