import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def two_inputs(rng):
    """Two inputs of different widths and a target that depends on both."""
    n = 96
    a = rng.normal(size=(n, 3)).astype("float32")
    b = rng.normal(size=(n, 5)).astype("float32")
    y = (a.sum(axis=1) - 2 * b.sum(axis=1)).astype("float32")
    label = (y > 0).astype("int64")
    return {"a": a, "b": b, "y": y, "label": label, "w": np.linspace(0.5, 1.5, n).astype("float32")}


def concat_model(structure="list"):
    """A model whose output is its inputs side by side: predictions show exactly which array went where."""
    a = keras.Input((3,), name="a")
    b = keras.Input((5,), name="b")
    out = keras.layers.Concatenate(name="both")([a, b])
    inputs = {"a": a, "b": b} if structure == "dict" else [a, b]
    return keras.Model(inputs, out)


def within(seconds, fn):
    """fn() in a thread; fails (instead of hanging the suite) if it is still running after `seconds`.

    Returns {"value": ..., "seconds": ...} or {"error": ..., "seconds": ...}.
    """
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # handed to the test
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s: a hang"
    result["seconds"] = time.monotonic() - start
    return result


def pytest_report_header(config):
    return f"keras {keras.__version__}, KERAS_BACKEND={keras.backend.backend()}"


def malloc_runs(script, **env):
    """``script`` in a fresh TensorFlow process (``env``: more environment variables), once as is (argv[1]
    "default") and once told to call kseq.tune_malloc() first ("tuned"): {mode: the words it printed}."""
    runs = {}
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", **env})
        assert out.returncode == 0, out.stderr[-2000:]
        runs[mode] = out.stdout.split()
    return runs
