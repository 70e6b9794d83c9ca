"""kseq's own workers, with real threads, real processes, real shared memory and real `fit`."""

import gc
import importlib.util
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import malloc_runs, within

from kseq.datasets.base import Dataset
from kseq.datasets.multi_input import MultiInputDataset
from kseq.errors import StructureError, WorkerError
from kseq.workers import WorkerConfig
from kseq.workers.shm import shm_directory, sweep_stale

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = {"workers": 2, "use_multiprocessing": True, "start_method": "fork"}
MODES = {
    "inline": {},
    "threads": {"workers": 2},
    "1 process": {"workers": 1, "use_multiprocessing": True, "start_method": "fork"},
    "2 processes": PROCESSES,
}


# -- datasets used by the workers: module level, so spawned workers can import them ---------------


class Jittered(Dataset):
    """x plus noise from batch_rng(index, epoch), and a label: a random per-sample transform."""

    def get_batch(self, index, epoch=None):
        epoch = self.epoch if epoch is None else epoch
        (rows,) = super().get_batch(index, epoch)
        noise = self.batch_rng(index, epoch).normal(size=(len(rows["x"]), 3)).astype("float32")
        return {"x": rows["x"][:, None] + noise, "id": rows["x"].astype("int64")}, rows["x"] % 3


class Augmented(Dataset):
    """x plus noise from self.batch_rng() in build_batch, the README's way: no index, no epoch."""

    def build_batch(self, rows):
        return (rows["x"] + self.batch_rng().random(len(rows["x"])),)


class AugmentedAfter(Dataset):
    """A get_batch override that draws self.batch_rng(index) after super().get_batch returns."""

    def get_batch(self, index, epoch=None):
        (x,) = super().get_batch(index, epoch)
        return (x["x"] + self.batch_rng(index).random(len(x["x"])),)


class LegacyRandom(Dataset):
    """Draws from the global np.random and random, like much pre-kseq augmentation code."""

    def build_batch(self, rows):
        shift = np.array([random.random() for _ in rows["x"]])
        return (rows["x"] + np.random.random(len(rows["x"])) + 10 * shift,)


class Failing(Dataset):
    """Raises in build_batch for the batch holding row 13."""

    def build_batch(self, rows):
        if 13 in rows["x"]:
            raise ValueError("row 13 is corrupt")
        return (rows,)


class Exiting(Dataset):
    """The worker computing batch 1 of epoch 0 exits without a word."""

    def get_batch(self, index, epoch=None):
        if (index, epoch) == (1, 0) and multiprocessing.parent_process() is not None:
            os._exit(3)
        return super().get_batch(index, epoch)


class Slow(Dataset):
    """Each batch takes `delay` seconds (a module-level float, so spawn sees it too). With `marks` set to a
    directory, a worker first creates `<marks>/<pid>-<first row>`: the test's event that the batch has started."""

    delay = 30.0
    marks = None

    def build_batch(self, rows):
        if self.marks is not None:
            Path(self.marks, f"{os.getpid()}-{rows['x'][0]}").touch()
        time.sleep(self.delay)
        return (rows,)


class Brief(Slow):
    delay = 0.2


class Instant(Slow):
    delay = 0.0


class Recording(Dataset):
    """Records every (epoch, index) it computes (threads share the list)."""

    def get_batch(self, index, epoch=None):
        self.computed.append((self.epoch if epoch is None else epoch, index))
        return super().get_batch(index, epoch)


class WithLock(Dataset):
    def __init__(self, source, **kwargs):
        super().__init__(source, **kwargs)
        self.lock = threading.Lock()


class WithLambda(Dataset):
    def __init__(self, source, **kwargs):
        super().__init__(source, **kwargs)
        self.transform = lambda x: x * 2


def jittered(**kwargs):
    return Jittered({"x": np.arange(50.0)}, batch_size=8, seed=11, **kwargs)


def epochs_of(ds, epochs=2):
    """Every batch of `epochs` epochs, as __getitem__ serves them, epoch by epoch."""
    out = []
    for _ in range(epochs):
        out.append([ds[i] for i in range(len(ds))])
        ds.on_epoch_end()
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for epoch_a, epoch_b in zip(a, b, strict=True):
        for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b, strict=True):
            assert xa.keys() == xb.keys()
            for key in xa:
                np.testing.assert_array_equal(xa[key], xb[key])
            np.testing.assert_array_equal(ya, yb)


def segments():
    """This process's shared-memory slots: open descriptors of nameless files in the slot directory
    (NOTE [ shared-memory slots ]: ``/dev/shm/#<inode> (deleted)``, or ``kseq-...`` where O_TMPFILE is missing)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        directory, name = os.path.split(target.removesuffix(" (deleted)"))
        if directory == shm_directory() and target.endswith(" (deleted)") and name.startswith(("#", "kseq-")):
            found.append(int(fd))
    return sorted(found)


def gone(pid):
    """The process has exited and been reaped (or was never ours)."""
    return not Path(f"/proc/{pid}").exists()


def children():
    return {p.pid for p in multiprocessing.active_children()}


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test leaves no shared-memory file and no worker process behind."""
    before = children()
    yield
    if segments() or children() - before:
        gc.collect()  # only when needed: a full collection costs ~0.5 s with a framework loaded
    assert segments() == []
    assert children() - before == set()


# -- configuration -------------------------------------------------------------------------------


class TestConfig:
    def test_keras_sees_an_inline_dataset(self):
        """Keras reads workers=1 and use_multiprocessing=False, so it never starts its own pool."""
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

        ds = jittered(**PROCESSES)
        assert (ds.workers, ds.use_multiprocessing) == (1, False)
        assert ds.worker_config == WorkerConfig(workers=2, use_multiprocessing=True, start_method="fork")
        assert PyDatasetAdapter(ds).enqueuer is None

    def test_setting_workers_later_is_refused(self):
        ds = jittered()
        with pytest.raises(StructureError, match="Pass workers= to the constructor"):
            ds.workers = 4

    @pytest.mark.parametrize(("kwargs", "match"), [
        ({"workers": -1}, "workers must be an integer >= 0"),
        ({"workers": 1.5}, "workers must be an integer >= 0"),
        ({"max_queue_size": 0}, "max_queue_size must be an integer >= 1"),
        ({"use_multiprocessing": True, "start_method": "teleport"}, "start_method must be one of"),
    ])
    def test_bad_configuration_fails_at_construction(self, kwargs, match):
        with pytest.raises(StructureError, match=match):
            jittered(**kwargs)

    def test_numpy_integers_are_accepted_as_ints(self):
        config = WorkerConfig(workers=np.int64(2), max_queue_size=np.int32(4))
        assert (type(config.workers), type(config.max_queue_size), config.mode) == (int, int, "threads")

    @pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver")
    @pytest.mark.parametrize(
        ("backend", "code", "expected"),
        [
            # Per backend, with real workers: tests/test_datasets.py (worker processes start by forkserver...).
            ("tensorflow", "import jax; jax.numpy.ones(1)", "forkserver"),  # the user ran JAX beside TF
        ],
    )
    def test_default_start_method_is_forkserver_where_jax_runs(self, backend, code, expected):
        """In a fresh process: JAX code the user ran decides too, not only the Keras backend."""
        if importlib.util.find_spec(backend) is None:
            pytest.skip(f"{backend} is not installed")
        script = f"import keras\n{code}\nfrom kseq.workers import default_start_method\nprint(default_start_method())"
        env = {**os.environ, "KERAS_BACKEND": backend}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                             check=True).stdout
        assert out.split()[-1] == expected

    def test_start_method_without_processes_warns(self):
        with pytest.warns(UserWarning, match="start_method='spawn' is ignored"):
            jittered(workers=2, start_method="spawn")

    def test_pickled_dataset_arrives_without_a_pool(self):
        ds = jittered(**PROCESSES)
        ds[0]
        clone = pickle.loads(pickle.dumps(ds))
        assert clone.worker_config == ds.worker_config
        assert not clone._loader.running
        ds.close()


# -- determinism ---------------------------------------------------------------------------------


@pytest.mark.portable
class TestDeterminism:
    @pytest.mark.parametrize("mode", list(MODES))
    def test_batches_match_inline_computation(self, mode):
        """Contents and order of every batch, random transform included, whatever computes them."""
        with jittered(**MODES[mode]) as ds:
            served = epochs_of(ds)
        assert_same_batches(served, epochs_of(jittered()))

    @pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
    def test_batches_match_under_other_start_methods(self, start_method):
        """One worker each: spawned workers import the framework, which is slow; counts are covered above."""
        with jittered(workers=1, use_multiprocessing=True, start_method=start_method) as ds:
            served = epochs_of(ds)
        assert_same_batches(served, epochs_of(jittered()))

    @pytest.mark.parametrize("cls", [Augmented, AugmentedAfter])
    @pytest.mark.parametrize("mode", ["threads", "2 processes"])
    def test_batch_rng_without_epoch_follows_the_batch_not_the_stale_epoch(self, cls, mode):
        """Workers hold a frozen or a moving ds.epoch; batch_rng() uses the epoch of the batch it builds."""

        def served(**kwargs):
            with cls({"x": np.arange(40.0)}, batch_size=8, seed=3, shuffle=False, **kwargs) as ds:
                out = []
                for _ in range(3):
                    out.append(np.stack([ds[i][0] for i in range(len(ds))]))
                    ds.on_epoch_end()
                return out

        inline, workers = served(), served(**MODES[mode])
        for a, b in zip(inline, workers, strict=True):
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(inline[0], inline[1])

    def test_batch_rng_without_arguments_outside_a_batch_is_refused(self):
        ds = Augmented({"x": np.arange(8.0)}, batch_size=4, seed=0)
        with pytest.raises(StructureError, match=r"batch_rng\(index, epoch\)"):
            ds.batch_rng()
        np.testing.assert_array_equal(ds.batch_rng(1, 2).random(3), ds.batch_rng(1, 2).random(3))

    @pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
    def test_global_generators_are_reseeded_per_batch_in_processes(self, start_method):
        """Legacy np.random and random draws: no two batches repeat, one or two workers draw the same, and
        inline draws those values too (NOTE [ global random generators in a batch ])."""

        def draws(**kwargs):
            with LegacyRandom({"x": np.zeros(40)}, batch_size=8, seed=5, **kwargs) as ds:
                return np.stack([ds[i][0] for i in range(5)])

        workers = [2] if start_method == "fork" else [1]  # spawned workers start slowly; counts are checked on fork
        if start_method == "fork":
            workers.insert(0, 1)
        served = [draws(workers=n, use_multiprocessing=True, start_method=start_method) for n in workers]
        inline = draws()
        for batches in served:
            np.testing.assert_array_equal(batches, inline)
        assert len({tuple(row) for row in inline}) == 5
        assert len({tuple(np.floor(row / 10)) for row in inline}) == 5  # the `random` part differs per batch too


# -- the pool's life -----------------------------------------------------------------------------


class TestPool:
    def test_pool_is_kept_across_epochs(self):
        before = children()
        with jittered(**PROCESSES) as ds:
            epochs_of(ds, epochs=1)
            started = children() - before
            epochs_of(ds, epochs=2)
            assert len(started) == 2
            assert children() - before == started

    def test_close_stops_workers_and_removes_shared_memory(self):
        """Checked right after close(), before any garbage collection: workers exited and reaped, slots closed."""
        before = children()
        ds = jittered(**PROCESSES)
        batch = ds[0]
        pids = ds._loader.pids()
        assert len(pids) == 2
        assert set(pids) <= children() - before
        assert segments() != []
        assert all(os.fstat(fd).st_mode & 0o777 == 0o600 for fd in segments())
        ds.close()
        assert [pid for pid in pids if not gone(pid)] == []
        assert children() - before == set()
        assert len(segments()) == 1  # only the mapping under the batch still held (mmap keeps its own descriptor)
        assert batch[0]["x"].tolist() == ds.get_batch(0)[0]["x"].tolist()  # and it stays readable
        del batch
        assert segments() == []

    @pytest.mark.portable
    def test_the_pool_is_kept_across_fit_calls(self):
        """The README's promise: two fit calls on one dataset are served by the same worker processes."""
        with MultiInputDataset(regression(64), inputs="x", targets="y", batch_size=16, seed=0, **PROCESSES) as ds:
            model = linear_model()
            model.fit(ds, epochs=1, shuffle=False, verbose=0)
            first = ds._loader.pids()
            model.fit(ds, epochs=2, shuffle=False, verbose=0)
            assert len(first) == 2
            assert ds._loader.pids() == first
            assert all(not gone(pid) for pid in first)

    def test_garbage_collection_closes_the_pool(self):
        before = children()
        ds = jittered(**PROCESSES)
        ds[0]
        assert children() - before
        del ds
        gc.collect()
        assert children() - before == set()
        assert segments() == []

    def test_dropping_a_thread_dataset_mid_flight_raises_nothing(self, monkeypatch):
        """The last reference may go in a worker thread, which finalizes the pool there: no join of itself."""
        errors = []
        monkeypatch.setattr(sys, "unraisablehook", errors.append)
        monkeypatch.setattr(threading, "excepthook", errors.append)
        before = kseq_threads()
        ds = Brief({"x": np.arange(80)}, batch_size=8, shuffle=False, workers=2, max_queue_size=4)
        ds[0]
        assert kseq_threads() - before
        del ds
        assert wait_for(lambda: kseq_threads() <= before, 30.0), f"still running: {kseq_threads() - before}"
        gc.collect()
        assert errors == []

    def test_every_dropped_thread_dataset_ends_its_threads(self):
        """A batch queued behind the last running one finds the dataset gone; its threads end all the same.

        Instant batches make that common: with the plan as the pool's owner 9 to 30 drops of 50 kept their threads
        for the life of the process (NOTE [ the pool ends with its owner ]).
        """
        before = kseq_threads()
        for drop in range(25):
            ds = Instant({"x": np.arange(800)}, batch_size=8, shuffle=False, workers=2, max_queue_size=64)
            ds[0]
            del ds
            assert wait_for(lambda: kseq_threads() <= before, 10.0), f"drop {drop}: {kseq_threads() - before} run on"

    def test_a_closed_dataset_starts_a_new_pool_on_demand(self):
        ds = jittered(**PROCESSES)
        first = ds[0]
        ds.close()
        np.testing.assert_array_equal(ds[0][0]["x"], first[0]["x"])
        ds.close()

    def test_batches_held_by_the_caller_are_never_overwritten(self):
        """Shared-memory slots are reused only when no view of them is left."""
        with jittered(**PROCESSES) as ds:
            (held,) = epochs_of(ds, epochs=1)
            copies = [b[0]["x"].copy() for b in held]
            epochs_of(ds, epochs=3)
            for batch, copy in zip(held, copies, strict=True):
                np.testing.assert_array_equal(batch[0]["x"], copy)

    def test_stale_segments_of_dead_processes_are_swept(self, tmp_path):
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        stale = tmp_path / f"kseq-{dead.stdout.strip()}-abcd-0"
        mine = tmp_path / f"kseq-{os.getpid()}-abcd-0"
        stale.write_bytes(b"x")
        mine.write_bytes(b"x")
        assert sweep_stale(str(tmp_path)) == [str(stale)]
        assert mine.exists()


def run_script(body, tmp_path, *args, env=None):
    """Run a script using kseq in a fresh interpreter (numpy backend: the workers, not a framework, are tested)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "KERAS_BACKEND": "numpy", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **(env or {})}
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=300)


class TestInterrupts:
    def test_ctrl_c_stops_the_pool(self, tmp_path):
        marks = tmp_path / "marks"
        marks.mkdir()
        out = run_script(
            """
            import os, signal, sys, threading, time
            from pathlib import Path
            import numpy as np
            from test_workers import Slow
            from kseq.workers.shm import shm_directory

            def clean(pids, pattern):
                alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
                return not alive and not list(Path(shm_directory()).glob(pattern))

            if __name__ == "__main__":
                marks = sys.argv[1]
                Slow.marks = marks
                ds = Slow({"x": np.arange(8)}, batch_size=4, shuffle=False, workers=2, use_multiprocessing=True)
                seen = []
                def interrupt():  # once both workers are inside a batch (their marks), never on a clock
                    deadline = time.monotonic() + 60
                    while len(os.listdir(marks)) < 2 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    seen.extend(ds._loader.pids())
                    os.kill(os.getpid(), signal.SIGINT)
                threading.Thread(target=interrupt, daemon=True).start()
                try:
                    ds[0]
                except KeyboardInterrupt:
                    print("interrupted", len(os.listdir(marks)), len(seen), clean(seen, f"kseq-{os.getpid()}-*"))
            """,
            tmp_path,
            str(marks),
        )
        assert out.stdout.split() == ["interrupted", "2", "2", "True"], out.stderr[-2000:]

    def test_exit_without_close_leaves_nothing(self, tmp_path):
        out = run_script(
            """
            import multiprocessing, os
            import numpy as np
            from test_workers import Jittered
            if __name__ == "__main__":
                ds = Jittered({"x": np.arange(50.0)}, batch_size=8, workers=2, use_multiprocessing=True)
                ds[0]
                print(os.getpid(), *[p.pid for p in multiprocessing.active_children()])
            """,
            tmp_path,
        )
        main, *workers = [int(p) for p in out.stdout.split()]
        assert len(workers) == 2, out.stderr[-2000:]
        assert wait_for(lambda: all(gone(pid) for pid in workers), 30.0), "workers still alive 30 s after exit: a hang"
        assert list(Path(shm_directory()).glob(f"kseq-{main}-*")) == []


# -- faults --------------------------------------------------------------------------------------


class TestFaults:
    @pytest.mark.parametrize("mode", ["threads", "2 processes"])
    def test_exception_reaches_the_caller_with_traceback_and_batch(self, mode):
        with Failing({"x": np.arange(40)}, batch_size=8, shuffle=False, **MODES[mode]) as ds:
            with pytest.raises(WorkerError, match="batch 1 of epoch 0") as info:
                [ds[i] for i in range(len(ds))]
            message = str(info.value)
            assert "ValueError: row 13 is corrupt" in message
            assert "in build_batch" in message  # the worker's own traceback
            assert isinstance(info.value.__cause__, ValueError)
            assert ds[2][0]["x"].tolist() == list(range(16, 24))  # the pool is still usable

    def test_worker_exit_is_raised_not_a_hang(self):
        """Seen through the process sentinel; 60 s only bounds a hang (pool start included), it is not a timing."""
        with Exiting({"x": np.arange(40)}, batch_size=8, shuffle=False, **PROCESSES) as ds:
            result = within(60, lambda: [ds[i] for i in range(len(ds))])
            assert isinstance(result.get("error"), WorkerError)
            assert "exited with code 3 while computing" in str(result["error"])
            assert "batch 1 of epoch 0" in str(result["error"])

    def test_worker_killed_by_a_signal_is_raised_and_the_next_batch_starts_a_new_pool(self, tmp_path):
        """The kill comes once the worker computing batch 0 has started it (its mark), aimed at that worker."""
        before = children()
        with Slow({"x": np.arange(8)}, batch_size=4, shuffle=False, **PROCESSES) as ds:
            ds.marks = str(tmp_path)
            pids = []

            def kill_when_started():
                assert wait_for(lambda: any(p.name.endswith("-0") for p in tmp_path.iterdir()), 60.0), "no start: hang"
                (mark,) = [p for p in tmp_path.iterdir() if p.name.endswith("-0")]
                pids.append(int(mark.name.split("-")[0]))
                os.kill(pids[0], signal.SIGKILL)

            killer = threading.Thread(target=kill_when_started, daemon=True)
            killer.start()
            result = within(90, lambda: ds[0])
            killer.join()
            assert f"(pid {pids[0]}) was killed by signal SIGKILL" in str(result.get("error"))
            assert "batch 0 of epoch 0" in str(result["error"])
            assert children() - before == set()  # the rest of the pool was stopped
            ds.marks, Slow.delay = None, 0.0
            try:
                assert ds[0][0]["x"].tolist() == [0, 1, 2, 3]
            finally:
                Slow.delay = 30.0

    @pytest.mark.parametrize(("cls", "attribute", "why"), [
        (WithLock, "WithLock.lock", "cannot pickle '_thread.lock' object"),
        (WithLambda, "WithLambda.transform", "<lambda>"),
    ])
    def test_unpicklable_attribute_is_named(self, cls, attribute, why):
        ds = cls({"x": np.arange(8)}, batch_size=4, workers=1, use_multiprocessing=True, start_method="spawn")
        with pytest.raises(WorkerError, match="start_method='spawn'") as info:
            ds[0]
        assert f"{attribute} cannot be pickled" in str(info.value)
        assert why in str(info.value)

    def test_class_defined_in_a_function_is_named(self):
        class Local(Dataset):
            pass

        ds = Local({"x": np.arange(8)}, batch_size=4, workers=1, use_multiprocessing=True, start_method="forkserver")
        with pytest.raises(WorkerError, match=r"class .*Local .*cannot be pickled"):
            ds[0]


# -- prefetching ---------------------------------------------------------------------------------


def kseq_threads():
    """kseq's worker threads now running (only kseq's: other libraries, TF and JAX, start threads at any time)."""
    return {t for t in threading.enumerate() if t.name.startswith("kseq-worker")}


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


class TestPrefetch:
    def recording(self, **kwargs):
        ds = Recording({"x": np.arange(80)}, batch_size=8, seed=1, workers=2, **kwargs)
        ds.computed = []
        return ds

    def test_prefetches_ahead_in_order_up_to_max_queue_size(self):
        """Requests are only made inside ds[i]: what is queued when it returns is all that can ever be computed
        until the next request, so over-prefetching is caught however late it would run (no sleep)."""
        with self.recording(max_queue_size=3) as ds:
            ds[0]
            loader = ds._loader
            assert loader._pending | set(loader._ready) == {(0, 1), (0, 2), (0, 3)}
            assert wait_for(lambda: len(ds.computed) >= 4, 60.0), "prefetched batches never computed: a hang"
            assert sorted(ds.computed) == [(0, 0), (0, 1), (0, 2), (0, 3)]

    def test_prefetch_runs_into_the_next_epoch(self):
        with self.recording(max_queue_size=4) as ds:
            [ds[i] for i in range(len(ds))]
            assert wait_for(lambda: (1, 3) in ds.computed)
            ds.on_epoch_end()
            computed = len(ds.computed)
            [ds[i] for i in range(4)]
            again = [key for key in ds.computed[computed:] if key in {(1, 0), (1, 1), (1, 2), (1, 3)}]
            assert again == []  # served from what was prefetched before the epoch ended

    def test_out_of_order_requests_are_correct_and_warn_once(self):
        served = []
        with jittered(**PROCESSES) as ds, warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for epoch in range(2):
                got = {int(i): ds[int(i)] for i in np.random.default_rng(epoch).permutation(len(ds))}
                served.append([got[i] for i in range(len(ds))])
                ds.on_epoch_end()
        assert_same_batches(served, epochs_of(jittered()))
        assert len([w for w in record if "shuffle=False to fit" in str(w.message)]) == 1

    def test_a_request_behind_the_epoch_window_is_still_served(self):
        """Workers skip batches outside the current epochs; one that is asked for is computed anyway."""
        ds = jittered(workers=2, use_multiprocessing=True, start_method="fork", max_queue_size=1)
        loader = ds._loader
        try:
            loader.get(ds, 0, 0, len(ds))
            loader.set_epoch(5)  # what on_epoch_end does, from another thread in fit
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = within(20, lambda: loader.get(ds, 0, 4, len(ds)))
            np.testing.assert_array_equal(result["value"][0]["x"], ds.get_batch(4, 0)[0]["x"])
        finally:
            ds.close()

    def test_a_restart_at_zero_is_a_new_pass_not_disorder(self):
        """0, 1, then 0, 1, 2...: what TF's predict and a peek at ds[0] do; no warning, prefetching goes on."""
        with self.recording(max_queue_size=3) as ds, warnings.catch_warnings():
            warnings.simplefilter("error")
            ds[0], ds[1]
            batches = [ds[i] for i in range(4)]
            assert wait_for(lambda: (0, 6) in ds.computed)
        for i, batch in enumerate(batches):
            np.testing.assert_array_equal(batch[0]["x"], ds.get_batch(i)[0]["x"])

    def test_in_order_requests_do_not_warn(self):
        """Two epochs in order: no warning and the right batches; the warning is armed all along, so the first
        request out of order after them warns (a loader that never warns fails here too)."""
        with jittered(**PROCESSES) as ds, warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            served = epochs_of(ds, epochs=2)
            assert [str(w.message) for w in record if "os.fork()" not in str(w.message)] == []  # JAX warns of fork
            assert_same_batches(served, epochs_of(jittered()))
            ds[0], ds[2]
        assert len([w for w in record if "shuffle=False to fit" in str(w.message)]) == 1


# -- fit -----------------------------------------------------------------------------------------


def regression(n=256):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return {"x": x, "y": (x @ np.array([1.0, -2.0, 3.0, 0.5], "float32"))[:, None]}


def linear_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(1, name="y")(inputs))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


class TestFit:
    @pytest.mark.portable
    def test_fit_with_worker_processes_trains_like_inline(self):
        """Same seed, same batches, same order: the same weights as inline training, with no warning."""
        data = regression()
        trained = []
        for kwargs in ({}, {"workers": 2, "use_multiprocessing": True}):
            with MultiInputDataset(data, inputs="x", targets="y", batch_size=32, seed=0, **kwargs) as ds:
                model = linear_model()
                with warnings.catch_warnings(record=True) as record:
                    warnings.simplefilter("always")
                    history = model.fit(ds, epochs=3, shuffle=False, verbose=0)
                assert not [w for w in record if "kseq" in str(w.message)]
                assert history.history["loss"][-1] < 0.05 * history.history["loss"][0]
                trained.append(model.get_weights())
        for inline, workers in zip(*trained, strict=True):
            np.testing.assert_allclose(inline, workers, rtol=1e-5, atol=1e-6)

    @pytest.mark.portable
    def test_predict_with_workers_matches_inline_without_warning(self):
        """TF's predict reads batches 0 and 1 for its signature and starts again at 0: not out of order."""
        data = regression(64)
        model = linear_model()
        predictions = []
        for kwargs in ({}, {"workers": 2}):
            with MultiInputDataset(data, inputs="x", batch_size=16, shuffle=False, **kwargs) as ds:
                with warnings.catch_warnings(record=True) as record:
                    warnings.simplefilter("always")
                    predictions.append(model.predict(ds, verbose=0))
                assert not [w for w in record if "kseq" in str(w.message) or "out of order" in str(w.message)]
        np.testing.assert_allclose(predictions[0], predictions[1], rtol=1e-6)

    @pytest.mark.portable
    def test_steps_per_epoch_below_the_length_serves_every_batch_once_per_dataset_epoch(self):
        """5 batches, 3 steps per Keras epoch: Keras reads 3, then the 2 left (it stops at the dataset's end), and
        the dataset's epoch moves on only once its pass is complete (NOTE [ epochs are passes ]): 4 Keras epochs are
        the dataset's epochs 0 and 1, every batch once each."""
        positions = []

        class Recording(MultiInputDataset):
            def read_rows(self, indices):
                positions.append(self.batch_position())
                return super().read_rows(indices)

        with Recording(regression(40), inputs="x", targets="y", batch_size=8, seed=0) as ds, \
                warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            linear_model().fit(ds, shuffle=False, verbose=0, epochs=4, steps_per_epoch=3)
        peek = len(positions) - 10
        assert 1 <= peek <= 2, positions  # Keras's reads before training (NOTE [ Keras's peeks ])
        assert positions[peek:] == [(0, i) for i in range(5)] + [(1, i) for i in range(5)]
        assert ds.epoch == 2
        assert not [w for w in record if "kseq" in str(w.message) or "order" in str(w.message)]

    def test_fit_shuffle_true_warns_once_and_still_trains(self):
        with MultiInputDataset(regression(), inputs="x", targets="y", batch_size=32, seed=0, **PROCESSES) as ds:
            model = linear_model()
            with pytest.warns(UserWarning, match="out of order") as record:
                history = model.fit(ds, epochs=3, verbose=0)
        assert len([w for w in record if "out of order" in str(w.message)]) == 1
        assert history.history["loss"][-1] < 0.05 * history.history["loss"][0]


_FAULTS = """
import resource, sys, numpy as np, kseq
if sys.argv[1] == "tuned":
    assert kseq.tune_malloc()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    a = np.ones(256 * 1024, "float32")  # 1 MB, above the forced 128 KB mmap threshold
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_malloc_stops_page_faults_on_reused_temporaries():
    """With glibc's mmap threshold pinned low (as after TF has run), every 1 MB temporary faults its
    pages in again; after kseq.tune_malloc() the freed memory is reused without faults."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "KERAS_BACKEND": "numpy"}
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", _FAULTS, mode], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()[-1])
        for mode in ("default", "tuned")
    }
    assert faults["default"] > 200 * 200  # ~256 pages per 1 MB array, every time
    assert faults["tuned"] < faults["default"] / 20


_TUNED_BEFORE_FIT = """
import ctypes, resource, sys
import numpy as np, keras, kseq, kseq.legacy

class Temporaries(kseq.Dataset):
    faults = []  # this process's page faults while each batch made 50 reused 1 MB temporaries

    def build_batch(self, rows):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(50):
            a = np.ones(256 * 1024, "float32")
            del a
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return {"x": rows["x"]}, rows["y"]

if sys.argv[1] == "tuned":
    assert kseq.tune_malloc()  # at the top of the script, before fit, where a user calls it
ds = Temporaries({"x": np.ones((64, 2), "float32"), "y": np.ones(64, "float32")}, batch_size=8, seed=0)
model = keras.Sequential([keras.Input((2,), name="x"), keras.layers.Dense(1)])
model.compile("sgd", "mse")
model.fit(ds, epochs=2, shuffle=False, verbose=0)
print(min(Temporaries.faults[-8:]))  # the second epoch's batches: TensorFlow's generator has run by then

def batches():  # the same through kseq.legacy.fit_generator, a generator of its own
    while True:
        x, y = ds.get_batch(0)
        yield x["x"], y

Temporaries.faults.clear()
ctypes.CDLL("libc.so.6").mallopt(-1, 128 * 1024)  # TF's setting again (it sets it once a process): M_TRIM_THRESHOLD
kseq.legacy.fit_generator(model, batches(), steps_per_epoch=8, epochs=2, verbose=0)
print(min(Temporaries.faults[-8:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_malloc_before_fit_survives_tensorflow():
    """TensorFlow sets glibc's M_TRIM_THRESHOLD (128 KB) when fit first runs its generator dataset, after a
    user's tune_malloc(): without kseq setting the thresholds again, every reused temporary of an inline
    build_batch faults its pages in again during fit (NOTE [ malloc thresholds ])."""
    faults = {mode: [int(n) for n in words[-2:]] for mode, words in malloc_runs(_TUNED_BEFORE_FIT).items()}
    for default, tuned in zip(faults["default"], faults["tuned"], strict=True):
        assert default > 50 * 200  # ~256 pages per 1 MB temporary, every time: TF's setting in force
        assert tuned < default / 20


class Faulting(Dataset):
    """Each batch is the page faults of 200 reused 1 MB temporaries in the process computing it."""

    def build_batch(self, rows):
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(200):
            a = np.ones(256 * 1024, "float32")
            del a
        return (np.array([resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]),)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_processes_call_tune_malloc(tmp_path, start_method):
    """With glibc's mmap threshold pinned low in the environment (inherited by every process), the main process
    faults on every reused temporary and kseq's worker processes, which call tune_malloc at start, do not."""
    out = run_script(
        """
        import sys
        import numpy as np
        from test_workers import Faulting
        if __name__ == "__main__":
            kwargs = {"workers": 1, "use_multiprocessing": True, "start_method": sys.argv[1]}
            inline = Faulting({"x": np.arange(4)}, batch_size=2).get_batch(0)[0][0]
            with Faulting({"x": np.arange(4)}, batch_size=2, **kwargs) as ds:
                print(inline, ds[0][0][0], ds[1][0][0])
        """,
        tmp_path,
        start_method,
        env={"MALLOC_MMAP_THRESHOLD_": "131072"},
    )
    inline, *workers = [int(n) for n in out.stdout.split()] or [0]
    assert len(workers) == 2, out.stderr[-2000:]
    assert inline > 200 * 200  # ~256 pages per 1 MB array, every time
    assert max(workers) < inline / 20
