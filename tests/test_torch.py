"""PyTorch next to kseq's workers: forked worker processes after torch has run (issue: no deadlock after fork)."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["KERAS_BACKEND"] = "torch"
    import keras, numpy as np, torch, kseq

    class TorchOps(kseq.MultiInputDataset):
        def build_batch(self, rows):
            x, y = super().build_batch(rows)
            scaled = keras.ops.convert_to_numpy(keras.ops.tanh(keras.ops.convert_to_tensor(x["x"])))  # torch
            return {"x": scaled}, y

    data = {"x": np.random.default_rng(0).normal(size=(256, 4)).astype("float32"), "y": np.ones(256, "float32")}
    kwargs = dict(inputs="x", targets="y", batch_size=32, seed=0)
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    torch.set_num_threads(2)
    model.fit(TorchOps(data, **kwargs), epochs=1, shuffle=False, verbose=0)  # torch has run its threads
    inline = TorchOps(data, **kwargs)
    with TorchOps(data, workers=2, use_multiprocessing=True, **kwargs) as pooled:
        assert pooled.worker_config.resolved_start_method == "fork"
        model.fit(pooled, epochs=2, shuffle=False, verbose=0)
        for i in range(len(pooled)):
            np.testing.assert_allclose(pooled[i][0]["x"], inline.get_batch(i, pooled.epoch)[0]["x"], rtol=1e-6)
    print("OK")
    """
)


def test_forked_workers_call_torch_after_the_parent_trained_on_torch():
    """A deadlock here would hang the script: the timeout reports it as a failure instead."""
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("OK")
