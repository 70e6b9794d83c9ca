"""Reliability: class-weight lookups, which error a missing field raises, and (below) the worker pool
under SIGKILL, a small /dev/shm, stuck workers and the global random generators."""

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import within

from kseq.batching import ClassWeights
from kseq.datasets.base import Dataset
from kseq.datasets.multi_input import MultiInputDataset
from kseq.errors import SourceError, StructureError, WorkerError
from kseq.sources import ArraySource, HDF5Source
from kseq.workers.context import runs_outside_code

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.portable
class TestClassWeights:
    def test_a_class_missing_from_the_mapping_is_refused_not_given_a_neighbours_weight(self):
        """Construction normally checks coverage; the lookup itself refuses too (class 1 sorts between 0 and 2)."""
        cw = ClassWeights({0: 1.0, 2: 3.0})
        assert cw(np.array([2, 0, 2])).tolist() == [3.0, 1.0, 3.0]
        with pytest.raises(StructureError, match=r"no weight for class\(es\) \[1\].*received keys \[0, 2\]"):
            cw(np.array([0, 1, 2]))
        with pytest.raises(StructureError, match=r"no weight for class\(es\) \[7\]"):
            cw(np.array([7]))

    @pytest.mark.parametrize("shape", [(4, 5, 3), (4, 5, 1), (4, 0)])
    def test_labels_without_one_class_per_sample_are_a_structure_error(self, shape):
        """Float per-step labels (B, T, C) used to fail inside a numpy reshape."""
        cw = ClassWeights({0: 1.0, 1: 2.0, 2: 3.0})
        with pytest.raises(StructureError, match=rf"one class per sample.*Received labels of shape \({shape[0]}, "):
            cw(np.zeros(shape, "float32"))

    def test_per_sample_ids_one_hot_and_probabilities(self):
        cw = ClassWeights({0: 1.0, 1: 2.0, 2: 3.0})
        assert cw(np.array([[2], [0]])).tolist() == [3.0, 1.0]
        assert cw(np.array([[[1]], [[2]]])).tolist() == [2.0, 3.0]
        assert cw(np.eye(3, dtype="int32")[[1, 2]]).tolist() == [2.0, 3.0]
        assert cw(np.array([[0.1, 0.7, 0.2]], "float32")).tolist() == [2.0]

    def test_non_numeric_labels_are_a_structure_error(self):
        with pytest.raises(StructureError, match=r"Received labels of shape \(2,\) \(<U1\)"):
            ClassWeights({0: 1.0})(np.array(["a", "b"]))


@pytest.mark.portable
class TestMissingField:
    """kseq/errors.py's rule: a field *name* the source lacks is a StructureError; a *file* without the
    dataset it was opened for is a SourceError."""

    def test_reading_a_field_the_source_does_not_have_is_a_structure_error(self, tmp_path):
        with h5py.File(tmp_path / "f.h5", "w") as f:
            f.create_dataset("x", data=np.arange(4.0))
        for src in (ArraySource({"x": np.arange(4.0)}), HDF5Source(tmp_path / "f.h5")):
            with pytest.raises(StructureError, match=r"fields names field\(s\) \['y'\].*Expected fields from \['x'\]"):
                src.read([0], fields=["y"])

    def test_opening_a_file_without_the_dataset_is_a_source_error(self, tmp_path):
        with h5py.File(tmp_path / "f.h5", "w") as f:
            f.create_dataset("x", data=np.arange(4.0))
        with pytest.raises(SourceError, match=r"Field 'y': '.*f\.h5' has no dataset '/y'"):
            HDF5Source(tmp_path / "f.h5", fields=["y"])


# -- datasets used by worker processes: module level, so spawned workers import them ----------------


class Big(Dataset):
    """1 MiB float32 batches whose every value says which rows they hold."""

    def build_batch(self, rows):
        return (np.repeat(rows["x"][:, None], 32768, axis=1).astype("float32"),)


class Stuck(Dataset):
    """Batch 1 (rows 8-15) takes `delay` seconds; the others are instant."""

    delay = 120.0

    def build_batch(self, rows):
        if rows["x"][0] == 8:
            _wait_here(self.delay)
        return (rows["x"],)


_RELEASE = threading.Event()  # lets a stuck worker *thread* go at the end of its test (threads cannot be killed)


def _wait_here(seconds):
    """Where a stuck worker is found: its name must appear in the reported stack."""
    _RELEASE.wait(seconds)


class LegacyDraws(Dataset):
    """Augments with the global np.random and random, like ported torch / Keras 2 code."""

    def build_batch(self, rows):
        return (rows["x"] + np.random.random(len(rows["x"])) + 10 * random.random(),)


def _alive(pid):
    """Running (a zombie waiting for a reaper has already released everything)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _env(**extra):
    return {**os.environ, "KERAS_BACKEND": "numpy", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **extra}


def _private_tmpfs_works():
    """Whether this process may mount a tmpfs in a private mount namespace (root, unshare, mount)."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


PRIVATE_TMPFS = _private_tmpfs_works()
NO_PRIVATE_TMPFS = "needs `unshare -m` and `mount -t tmpfs` (root, or CAP_SYS_ADMIN); not permitted here"
START_METHODS = ["fork", "spawn", "forkserver"]


# -- 1. SIGKILL of the main process -----------------------------------------------------------------------

# NOTE [ the SIGKILL test ]: the runner's module imports the standard library only and its workers unpickle a
# dataset from numpy_only_datasets, so spawn and forkserver workers start without Keras. From batch 3 on a batch
# takes 10 minutes: both workers are inside one when the runner is killed, so neither a closed pipe nor an idle
# recv() can end them, only their watchdog (NOTE [ worker processes ] in kseq/workers/process.py).
_RUNNER = """
import os, sys, time
from pathlib import Path
if __name__ == "__main__":
    import numpy as np
    from numpy_only_datasets import BusyAfterThree
    announced = Path(sys.argv[2])
    ds = BusyAfterThree({"x": np.arange(80.0)}, batch_size=8, shuffle=False, workers=2, use_multiprocessing=True,
                        start_method=sys.argv[1], max_queue_size=4)
    ds.announce_dir = str(announced)
    held = [ds[0], ds[1], ds[2]]  # slots in use, and batches 3, 4, ... prefetched behind them
    deadline = time.monotonic() + 120
    while len(list(announced.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    print("ready", os.getpid(), *sorted(p.name for p in announced.iterdir()), flush=True)
    time.sleep(600)
"""

_SUPERVISOR = """
import json, os, signal, subprocess, sys, time
from pathlib import Path

def _alive(pid):  # as in test_reliability, which this script does not import (it would load Keras)
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False

shm, method, runner, announced = sys.argv[1:5]
def used():
    st = os.statvfs(shm)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
base = used()
child = subprocess.Popen([sys.executable, runner, method, announced], stdout=subprocess.PIPE, text=True)
ready = child.stdout.readline().split()
during = used()
workers = [int(pid) for pid in ready[2:]]
start = time.monotonic()
os.kill(child.pid, signal.SIGKILL)
child.wait()
while time.monotonic() - start < 30 and any(_alive(pid) for pid in workers):
    time.sleep(0.01)
seconds = time.monotonic() - start
while time.monotonic() - start < 30 and used() > base:
    time.sleep(0.01)
alive = [p for p in workers if _alive(p)]
for pid in alive:  # a worker that outlived its watchdog: the test fails; leave nothing running
    os.kill(pid, signal.SIGKILL)
named = [p.name for p in Path(shm).glob("kseq-*")]
print(json.dumps({"ready": ready[:1], "workers": len(workers), "alive": alive, "seconds": seconds,
                  "base": base, "during": during, "after": used(), "named": named}))
"""
WORKERS_GONE_S = 2.0  # README: "the workers exit within a second or so" (the watchdog looks every 0.25 s)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and tmpfs accounting")
@pytest.mark.parametrize("start_method", START_METHODS)
def test_sigkill_of_the_main_process_leaves_no_worker_and_no_shared_memory(tmp_path, start_method):
    """A real child process runs a kseq pool holding 1 MiB batches, with both workers inside a 10-minute batch,
    and is SIGKILLed: both workers are gone within the README's "second or so" (NOTE [ the SIGKILL test ]). In a
    private tmpfs on /dev/shm the bytes in use are measured too; where that cannot be mounted, the absence of
    named files is still checked (other processes share the real /dev/shm)."""
    runner = _script(tmp_path, "runner.py", _RUNNER)
    supervisor = _script(tmp_path, "supervisor.py", _SUPERVISOR)
    announced = tmp_path / "announced"
    announced.mkdir()
    command = [sys.executable, str(supervisor), "/dev/shm", start_method, str(runner), str(announced)]
    if PRIVATE_TMPFS:
        command = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=256m tmpfs /dev/shm && exec "$@"', "sh",
                   *command]
    out = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["ready"] == ["ready"], out.stderr[-3000:]
    assert report["workers"] == 2, "both workers inside a long batch when the main process is killed"
    assert report["alive"] == [], f"workers alive {report['seconds']:.1f} s after the SIGKILL"
    assert report["seconds"] <= WORKERS_GONE_S, f"workers took {report['seconds']:.2f} s to go"
    print(f"workers gone {report['seconds']:.2f} s after the SIGKILL")
    assert report["named"] == []
    if PRIVATE_TMPFS:
        assert report["during"] >= report["base"] + 3 * 2**20  # the pool really held batches there
        assert report["after"] == report["base"], "kseq bytes left in /dev/shm after the SIGKILL"


# -- 2. Running short of shared memory --------------------------------------------------------------------

_SMALL = """
import json, sys, warnings
import numpy as np
from test_reliability import Big
if __name__ == "__main__":
    kwargs = {"workers": 2, "use_multiprocessing": True, "start_method": sys.argv[1], "max_queue_size": 4}
    inline = Big({"x": np.arange(80.0)}, batch_size=8, seed=3)
    same, messages = True, []
    with Big({"x": np.arange(80.0)}, batch_size=8, seed=3, **kwargs) as ds, \\
            warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for epoch in range(3):
            held = []
            for i in range(len(ds)):
                held.append(ds[i])  # kept: more slots, more memory
                same = same and np.array_equal(held[-1][0], inline.get_batch(i, epoch)[0])
            ds.on_epoch_end()
        messages = [str(w.message) for w in record if "shared memory" in str(w.message)]
    print(json.dumps({"same": same, "messages": messages}))
"""


@pytest.mark.skipif(not PRIVATE_TMPFS, reason=NO_PRIVATE_TMPFS)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_full_shared_memory_directory_slows_down_but_never_fails(tmp_path, start_method):
    """KSEQ_SHM_DIR names a 3 MiB tmpfs (mounted in a private namespace): 1 MiB batches, 4 in flight and all
    of them held, run out of room for real (ENOSPC from posix_fallocate). Every batch is still right, and
    one warning says what happened and how to restore speed."""
    script = _script(tmp_path, "small.py", _SMALL)
    small = tmp_path / "shm"
    small.mkdir()
    command = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=3m tmpfs {small} && exec "$@"', "sh",
               sys.executable, str(script), start_method]
    out = subprocess.run(command, env=_env(KSEQ_SHM_DIR=str(small)), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["same"] is True
    (message,) = report["messages"]
    assert f"Cannot grow a shared-memory slot from 0.0 to 1.0 MiB in {small}" in message
    assert "No space left on device" in message
    assert "travel pickled through the worker pipes" in message
    assert "--shm-size=2g" in message
    assert "lower max_queue_size (now 4)" in message
    assert "KSEQ_SHM_DIR" in message


_FILE_SIZE_LIMIT = """
import json, resource, sys, warnings
# Every file this process and its workers write may grow to 512 KiB at most: an unprivileged limit that fork,
# spawn and forkserver workers inherit. A 1 MiB slot then cannot grow (EFBIG; Python ignores SIGXFSZ), as when
# the directory is full. numpy and kseq only, so that the workers start fast.
resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
import numpy as np
from kseq.datasets import Dataset

class Big(Dataset):
    def build_batch(self, rows):
        return (np.repeat(rows["x"][:, None], 32768, axis=1).astype("float32"),)

if __name__ == "__main__":
    kwargs = {"workers": 2, "use_multiprocessing": True, "start_method": sys.argv[1], "max_queue_size": 4}
    inline = Big({"x": np.arange(80.0)}, batch_size=8, seed=3)
    with Big({"x": np.arange(80.0)}, batch_size=8, seed=3, **kwargs) as ds, \\
            warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        held = [ds[i] for i in range(len(ds))]
        same = all(np.array_equal(b[0], inline.get_batch(i)[0]) for i, b in enumerate(held))
        messages = [str(w.message) for w in record if "shared memory" in str(w.message)]
    print(json.dumps({"same": same, "batches": len(held), "messages": messages}))
"""


def test_a_slot_that_cannot_grow_sends_its_batch_through_the_pipe(tmp_path):
    """No privilege needed: a file-size limit (RLIMIT_FSIZE) below the 1 MiB batches makes every slot's growth
    fail for real in the worker (EFBIG, one of the errors of a full directory). Every batch of the epoch still
    arrives right, through the pipe, with the one warning that says so and how to restore speed. One start
    method: the fallback is the worker's own code under each, and a spawn run costs three Keras imports."""
    script = _script(tmp_path, "limited.py", _FILE_SIZE_LIMIT)
    small = tmp_path / "shm"
    small.mkdir()
    out = subprocess.run([sys.executable, str(script), "fork"], env=_env(KSEQ_SHM_DIR=str(small)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["same"] is True
    assert report["batches"] == 10
    (message,) = report["messages"]
    assert f"Cannot grow a shared-memory slot from 0.0 to 1.0 MiB in {small}" in message
    assert "File too large" in message
    assert "travel pickled through the worker pipes" in message
    assert "KSEQ_SHM_DIR" in message


class TestShmDirectory:
    def test_kseq_shm_dir_holds_the_slots(self, tmp_path, monkeypatch):
        monkeypatch.setenv("KSEQ_SHM_DIR", str(tmp_path))
        with Big({"x": np.arange(32.0)}, batch_size=8, shuffle=False, workers=1, use_multiprocessing=True,
                 start_method="fork") as ds:
            batch = ds[0]
            where = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                     if os.path.exists(f"/proc/self/fd/{fd}")}
            assert any(w.startswith(f"{tmp_path}/") and w.endswith("(deleted)") for w in where)
            assert list(tmp_path.iterdir()) == []  # no names, ever
            assert batch[0][:, 0].tolist() == list(range(8))

    def test_a_bad_kseq_shm_dir_is_refused_with_the_fix(self, tmp_path, monkeypatch):
        monkeypatch.setenv("KSEQ_SHM_DIR", str(tmp_path / "missing"))
        ds = Big({"x": np.arange(32.0)}, batch_size=8, workers=1, use_multiprocessing=True, start_method="fork")
        with pytest.raises(StructureError, match=r"KSEQ_SHM_DIR must name an existing, writable directory.*"
                                                 r"Received KSEQ_SHM_DIR='.*missing'"):
            ds[0]


# -- 3. timeout ---------------------------------------------------------------------------------------------


class TestTimeout:
    @pytest.mark.parametrize("start_method", ["fork", "spawn"])
    def test_a_stuck_worker_process_raises_with_its_stack_and_the_pool_is_replaced(self, start_method):
        _RELEASE.clear()
        with Stuck({"x": np.arange(32)}, batch_size=8, shuffle=False, workers=2, use_multiprocessing=True,
                   start_method=start_method, timeout=2) as ds:
            assert ds[0][0].tolist() == list(range(8))
            old = ds._loader.pids()
            result = within(120, lambda: ds[1])  # 120 s bounds a hang; the timeout is 2 s
            error = result.get("error")
            assert isinstance(error, WorkerError), result
            message = str(error)
            assert message.startswith("Batch 1 of epoch 0 took longer than timeout=2 s.")
            assert "has been computing batch 1 of epoch 0 for" in message
            assert "Its Python stack (faulthandler" in message
            assert "in _wait_here" in message
            assert "in build_batch" in message
            assert "The pool is closed; the next batch starts a new one." in message
            assert not any(_alive(pid) for pid in old)
            assert ds[0][0].tolist() == list(range(8))  # a new pool (index 0: a new pass, not disorder)
            assert set(ds._loader.pids()).isdisjoint(old)

    def test_a_stuck_worker_thread_raises_with_its_stack(self):
        _RELEASE.clear()
        ds = Stuck({"x": np.arange(32)}, batch_size=8, shuffle=False, workers=2, timeout=1.5)
        try:
            ds[0]
            result = within(120, lambda: ds[1])
            message = str(result.get("error"))
            assert message.startswith("Batch 1 of epoch 0 took longer than timeout=1.5 s.")
            assert "kseq worker thread" in message
            assert "in _wait_here" in message
            assert "in build_batch" in message
            assert ds[0][0].tolist() == list(range(8))  # a new pool (index 0: a new pass, not disorder)
        finally:
            _RELEASE.set()
            ds.close()

    def test_batches_within_the_timeout_are_served(self):
        with Stuck({"x": np.arange(32)}, batch_size=8, shuffle=False, workers=1, use_multiprocessing=True,
                   start_method="fork", timeout=60) as ds:
            Stuck.delay = 0.1
            try:
                assert [ds[i][0][0] for i in range(4)] == [0, 8, 16, 24]
            finally:
                Stuck.delay = 120.0

    @pytest.mark.parametrize("timeout", [0, -1, "5", float("inf"), True])
    def test_bad_timeouts_are_refused_at_construction(self, timeout):
        with pytest.raises(StructureError, match=r"timeout must be a number > 0. Received timeout="):
            Stuck({"x": np.arange(32)}, batch_size=8, workers=2, timeout=timeout)

    def test_a_timeout_without_workers_warns(self):
        with pytest.warns(UserWarning, match="timeout=5.0 is ignored: batches are computed inline"):
            Stuck({"x": np.arange(32)}, batch_size=8, timeout=5)


# -- 5. the global random generators ---------------------------------------------------------------------


class TestGlobalGenerators:
    def test_inline_batches_are_reseeded_and_the_callers_state_is_given_back(self):
        ds = LegacyDraws({"x": np.zeros(40)}, batch_size=8, seed=5)
        np.random.seed(123)
        random.seed(123)
        first = [ds.get_batch(i, 0)[0] for i in range(5)]
        after = (np.random.random(), random.random())
        np.random.seed(999)
        again = [ds.get_batch(i, 0)[0] for i in range(5)]
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)  # whatever the caller's state was
        assert after == (np.random.RandomState(123).random(), random.Random(123).random())
        assert len({tuple(batch) for batch in first}) == 5
        assert not np.array_equal(ds.get_batch(0, 0)[0], ds.get_batch(0, 1)[0])

    def test_only_batches_running_code_from_outside_kseq_are_reseeded(self):
        """kseq's own datasets never draw from the global generators, so they skip the save/seed/restore."""
        data = {"x": np.zeros(8), "y": np.zeros(8)}
        assert not runs_outside_code(MultiInputDataset(data, inputs="x", targets="y"))
        assert not runs_outside_code(Dataset(data))
        assert runs_outside_code(LegacyDraws(data))

        class OwnSource(ArraySource):
            def read(self, indices, fields=None):
                return super().read(indices, fields)

        assert runs_outside_code(Dataset(OwnSource(data)))

    def test_threads_leave_the_globals_alone_and_warn_once(self):
        with LegacyDraws({"x": np.zeros(40)}, batch_size=8, seed=5, workers=2) as ds, \
                warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for _ in range(2):
                [ds[i] for i in range(len(ds))]
                ds.on_epoch_end()
        messages = [str(w.message) for w in record if "global np.random generator moved" in str(w.message)]
        assert len(messages) == 1
        assert "self.batch_rng()" in messages[0]
        assert "use_multiprocessing=True" in messages[0]

    def test_threads_drawing_from_batch_rng_do_not_warn(self):
        """An epoch in threads drawing from batch_rng(): no warning, the global generator untouched, the inline
        batches; the check is armed all along (the same dataset, once it draws from np.random, warns)."""
        class Augmented(Dataset):
            legacy = False

            def build_batch(self, rows):
                extra = np.random.random(len(rows["x"])) if self.legacy else 0.0
                return (rows["x"] + self.batch_rng().random(len(rows["x"])) + extra,)

        inline = Augmented({"x": np.zeros(40)}, batch_size=8, seed=2)
        with Augmented({"x": np.zeros(40)}, batch_size=8, seed=2, workers=2) as ds, \
                warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            before = np.random.get_state()[1].copy()
            batches = [ds[i] for i in range(len(ds))]
            assert [str(w.message) for w in record] == []
            np.testing.assert_array_equal(np.random.get_state()[1], before)
            for i, batch in enumerate(batches):
                np.testing.assert_array_equal(batch[0], inline.get_batch(i)[0])
            ds.on_epoch_end()
            Augmented.legacy = True
            for _ in range(2):  # the first of them may have been prefetched before
                [ds[i] for i in range(len(ds))]
                ds.on_epoch_end()
        assert len([w for w in record if "global np.random generator moved" in str(w.message)]) == 1
