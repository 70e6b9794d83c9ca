"""Two real processes on loopback share one sharded kseq dataset (NOTE [ shards of a global batch ]).

JAX: jax.distributed on 127.0.0.1 with gloo collectives, keras.distribution.DataParallel with
auto_shard_dataset=False, shard="auto": both processes must end with identical weights, equal
to one process trained on the same global batches, with disjoint rows and equal step counts.
PyTorch: torch.distributed (gloo, 127.0.0.1), shard="auto": disjoint rows, every row once, and
equal step counts, each step a collective.
"""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")
TORCH_WORKER = Path(__file__).with_name("torch_distributed_worker.py")
NO_JAX = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
NO_TORCH = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
pytestmark = pytest.mark.distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(ids, port, tmp_path, *mode, timeout=240, worker=WORKER, backend="jax"):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, str(worker), str(i), str(port), str(tmp_path / f"p{i}.npz"), *mode],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in ids]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:  # a hang (a collective waiting for a process) ends here, reported below
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return [dict(np.load(tmp_path / f"p{i}.npz")) for i in ids]


@NO_JAX
def test_two_jax_processes_train_one_sharded_dataset_like_one_process(tmp_path):
    both = run_processes([0, 1], free_port(), tmp_path)
    (single,) = run_processes([-1], free_port(), tmp_path)
    assert [r["shard"].tolist() for r in both] == [[0, 2], [1, 2]]
    np.testing.assert_array_equal(both[0]["steps"], both[1]["steps"])  # 16 steps each: no process waits
    assert both[0]["steps"].tolist() == [16, 16]
    for epoch in range(2):
        rows = [set(r[f"served_{epoch}"].tolist()) for r in both]
        assert rows[0].isdisjoint(rows[1])
        assert rows[0] | rows[1] == set(single[f"served_{epoch}"].tolist()) == set(range(1001))
    for key in ("kernel", "bias"):
        np.testing.assert_array_equal(both[0][key], both[1][key])
        np.testing.assert_allclose(both[0][key], single[key], rtol=1e-5, atol=1e-6)


@NO_JAX
def test_keras_s_own_sharding_of_a_kseq_dataset_is_refused_before_the_first_step(tmp_path):
    """Keras 3.16 (PR #23044) shards a PyDataset itself under auto_shard_dataset=True, the default; kseq refuses
    that double sharding before any step, naming the setting and the fix. Keras 3.15 refuses a PyDataset there
    itself, with the same setting named. Either way no process trains on a fraction of its rows."""
    both = run_processes([0, 1], free_port(), tmp_path, "keras-shards")
    for r in both:
        error = str(r["error"])
        assert "auto_shard_dataset = False" in error, error
        assert r["steps"].tolist() == []  # refused before the first epoch ended
        if tuple(int(p) for p in str(r["version"]).split(".")[:2]) >= (3, 16):
            assert error.startswith("KseqError"), error
            assert "shard='auto'" in error, error


@NO_TORCH
def test_two_torch_processes_take_disjoint_shards_in_equal_steps(tmp_path):
    """shard="auto" under torch.distributed (README): rank and world size from the process group."""
    both = run_processes([0, 1], free_port(), tmp_path, timeout=180, worker=TORCH_WORKER, backend="torch")
    assert [r["shard"].tolist() for r in both] == [[0, 2], [1, 2]]
    for r in both:  # 16 steps of 32 rows per epoch on each: every step a collective both took
        assert r["steps"].tolist() == r["lengths"].tolist() == [16, 16]
    for epoch in range(2):
        rows = [r[f"served_{epoch}"].tolist() for r in both]
        assert set(rows[0]).isdisjoint(rows[1])
        assert sorted(rows[0] + rows[1]) == list(range(1001))
