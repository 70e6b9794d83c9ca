"""kseq.profile: the stages of real datasets add up to what is delivered, and the slow part is named."""

import sys
import time

import h5py
import keras
import numpy as np
import pytest
from conftest import malloc_runs

import kseq
from kseq.cli import main
from kseq.errors import StructureError
from kseq.profiling import STAGES, Profile

N, WIDTH = 512, 256


class Mixing(kseq.Dataset):
    """build_batch does real numpy work (16 element-wise passes) and waits 20 ms, as for a remote read.

    The wait keeps the test's accounting clear of scheduling noise: on a loaded 2-core machine a
    pure-CPU batch of a few ms is descheduled for as long as it runs, in one pass and not the other.
    """

    def build_batch(self, rows):
        x = rows["x"]
        for _ in range(16):
            x = np.tanh(x * np.float32(1.01) + np.float32(0.1))
        time.sleep(0.02)
        return {"x": x}, rows["y"]


class SlowBuild(kseq.Dataset):
    """A build_batch that sleeps 60 ms: far longer than a tiny model's step on any backend."""

    def build_batch(self, rows):
        time.sleep(0.06)
        assert self.batch_position()[1] >= 0  # the batch context is set, as in get_batch
        noise = self.batch_rng().normal(size=rows["x"].shape).astype("float32")
        return {"x": rows["x"] + noise}, rows["y"]


@pytest.fixture
def arrays(rng):
    return {"x": rng.normal(size=(N, WIDTH)).astype("float32"), "y": rng.normal(size=N).astype("float32")}


@pytest.fixture
def h5_file(tmp_path, arrays):
    path = tmp_path / "rows.h5"
    with h5py.File(path, "w") as f:
        for name, value in arrays.items():
            f.create_dataset(name, data=value)
    return path


def dense_model(width=WIDTH, hidden=()):
    x = keras.Input((width,), name="x")
    h = x
    for units in hidden:
        h = keras.layers.Dense(units, activation="relu")(h)
    model = keras.Model([x], keras.layers.Dense(1)(h))  # built from a list: profile adapts through for_model
    model.compile("sgd", "mse")
    return model


class TestStages:
    @pytest.mark.portable
    def test_stages_add_up_to_the_delivered_total(self, h5_file):
        """Inline, sampler + read + build_batch (timed one by one) match ds[i] timed on its own."""
        ds = Mixing(kseq.HDF5Source(h5_file), batch_size=64, seed=0)
        p = kseq.profile(ds, batches=8, epochs=3)
        assert list(p.stages) == ["sampler", "read", "build"]
        assert p.stages["build"] > p.stages["read"] > 0
        assert abs(p.other_s) <= 0.25 * p.total_s + 2e-4, p.table()
        assert p.batch_bytes == 64 * WIDTH * 4 + 64 * 4
        assert p.mb_per_s == pytest.approx(p.rate * p.batch_bytes / 1e6)

    @pytest.mark.parametrize("given", ["dataset", "view"])
    def test_with_a_list_built_model_adaptation_is_a_stage(self, arrays, given):
        ds = kseq.MultiInputDataset(arrays, inputs="x", targets="y", batch_size=64, seed=0)
        model = dense_model()
        p = kseq.profile(ds if given == "dataset" else ds.for_model(model), model, batches=4, epochs=1)
        assert list(p.stages) == ["sampler", "read", "build", "adapt"]
        assert p.step_s > 0
        assert p.fit_s > 0
        assert "model step, held batches" in p.table()

    def test_a_plain_pydataset_is_one_stage(self, arrays):
        class Plain(keras.utils.PyDataset):
            def __len__(self):
                return 8

            def __getitem__(self, index):
                return arrays["x"][index * 64 : (index + 1) * 64], arrays["y"][index * 64 : (index + 1) * 64]

        p = kseq.profile(Plain(), batches=4, epochs=1)
        assert list(p.stages) == ["getitem"]
        assert p.bottleneck == "getitem"
        assert STAGES["getitem"] in p.table()


class TestVerdict:
    @pytest.mark.portable
    def test_a_slow_build_batch_is_named_as_the_bottleneck(self, arrays):
        ds = SlowBuild(arrays, batch_size=32, seed=0)
        p = kseq.profile(ds, dense_model(), batches=4, epochs=2)
        assert p.bottleneck == "build"
        assert p.input_bound
        assert p.verdict.startswith("input-bound: the step waits on data")
        assert p.verdict.endswith("slowest stage: build_batch")
        assert any("use_multiprocessing=True" in line and "workers=" in line for line in p.advice)

    def test_the_slow_stage_is_named_in_worker_processes_too(self, arrays):
        """With 2 processes, build_batch still sets the pace; transport is measured in the main process."""
        ds = SlowBuild(arrays, batch_size=32, seed=0, workers=2, use_multiprocessing=True, start_method="fork")
        try:
            p = kseq.profile(ds, batches=6, epochs=2)
        finally:
            ds.close()
        assert p.mode == "processes"
        assert p.workers == 2
        assert list(p.stages) == ["sampler", "read", "build", "transport"]
        assert p.bottleneck == "build"
        assert 0 < p.stages["transport"] < p.stages["build"]
        assert "2 workers" in p.table()

    def test_a_heavy_model_with_cheap_data_is_model_bound(self, rng):
        data = {"x": rng.normal(size=(512, 512)).astype("float32"), "y": rng.normal(size=512).astype("float32")}
        ds = kseq.MultiInputDataset(data, inputs="x", targets="y", batch_size=128, seed=0)
        p = kseq.profile(ds, dense_model(512, hidden=(1024, 1024)), batches=4, epochs=2)
        assert p.bottleneck == "model step", p.table()
        assert p.verdict.startswith("model-bound")
        assert "a faster input will not speed up training" in p.advice[0]


class TestSideEffects:
    def test_the_epoch_weights_and_optimizer_state_are_put_back(self, arrays):
        ds = SlowBuild(arrays, batch_size=32, seed=0)
        ds.set_epoch(3)
        model = dense_model()
        model.compile(keras.optimizers.Adam(1e-3), "mse")
        before = [w.copy() for w in model.get_weights()]
        kseq.profile(ds, model, batches=3, epochs=1)
        assert ds.epoch == 3
        assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
        assert all(not np.any(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables[2:])

    def test_bad_arguments_are_refused(self, arrays):
        ds = kseq.Dataset(arrays, batch_size=64)
        with pytest.raises(StructureError, match="batches must be an integer >= 2"):
            kseq.profile(ds, batches=1)
        with pytest.raises(StructureError, match="epochs must be an integer >= 1"):
            kseq.profile(ds, epochs=0)
        x = keras.Input((WIDTH,), name="x")
        with pytest.raises(StructureError, match=r"Call model\.compile"):
            kseq.profile(ds, keras.Model(x, keras.layers.Dense(1)(x)))


def test_plot_shows_the_stages_and_the_rate_over_time(arrays):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    p = kseq.profile(SlowBuild(arrays, batch_size=32, seed=0), dense_model(), batches=3, epochs=1)
    fig = p.plot()
    bars, over_time = fig.axes
    assert [t.get_text() for t in bars.get_yticklabels()][::-1] == [
        "sampler", "source read", "build_batch", "adaptation to the model", "other", "model step"]
    assert len(over_time.lines[0].get_xdata()) == len(p.delivered_s)


def test_profile_is_exported_lazily():
    assert kseq.profile.__module__ == "kseq.profiling"
    assert kseq.Profile is Profile


class TestCommandLine:
    def test_an_hdf5_file(self, h5_file, capsys):
        code = main(["profile", str(h5_file), "--batch-size", "64", "--batches", "4", "--epochs", "1"])
        out = capsys.readouterr().out
        assert code == 0
        assert out.startswith("kseq.profile: Dataset, inline, 4 batches x 1 passes, 65.8 kB per batch")
        assert "source read" in out
        assert "verdict: input alone" in out

    def test_a_dataset_factory_and_a_model_factory(self, tmp_path, monkeypatch, capsys):
        (tmp_path / "my_data.py").write_text(
            "import time, numpy as np, keras, kseq\n"
            "class Slow(kseq.Dataset):\n"
            "    def build_batch(self, rows):\n"
            "        time.sleep(0.05)\n"
            "        return {'x': rows['x']}, rows['y']\n"
            "def dataset():\n"
            "    return Slow({'x': np.zeros((96, 4), 'float32'), 'y': np.zeros(96, 'float32')}, batch_size=16)\n"
            "def model():\n"
            "    x = keras.Input((4,), name='x')\n"
            "    m = keras.Model(x, keras.layers.Dense(1)(x))\n"
            "    m.compile('sgd', 'mse')\n"
            "    return m\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        code = main(["profile", "my_data:dataset", "--model", "my_data:model", "--batches", "3", "--epochs", "1"])
        out = capsys.readouterr().out
        sys.modules.pop("my_data", None)
        assert code == 0
        assert "kseq.profile: Slow, inline" in out
        assert "verdict: input-bound" in out
        assert "slowest stage: build_batch" in out

    def test_a_bad_target_is_a_clear_error(self, capsys):
        code = main(["profile", "no_such_module_xyz:make"])
        assert code == 2
        assert "kseq profile: StructureError: Cannot import 'no_such_module_xyz'" in capsys.readouterr().err


_FAULTS_THROUGH_FIT = """
import sys
import numpy as np, keras, kseq

class Temporaries(kseq.Dataset):
    def build_batch(self, rows):
        for _ in range(20):  # 20 reused 1 MB temporaries a batch
            a = np.ones(256 * 1024, "float32")
            del a
        return {"x": rows["x"]}, rows["y"]

if sys.argv[1] == "tuned":
    kseq.tune_malloc()
ds = Temporaries({"x": np.ones((128, 2), "float32"), "y": np.ones(128, "float32")}, batch_size=8, seed=0)
model = keras.Sequential([keras.Input((2,), name="x"), keras.layers.Dense(1)])
model.compile("sgd", "mse")
p = kseq.profile(ds, model=model, batches=8, epochs=2)  # a fresh process: no fit has run before
print(round(p.page_faults), round(p.fit_page_faults), any("tune_malloc" in line for line in p.advice))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_profile_sees_the_page_faults_fit_brings():
    """TensorFlow changes glibc's thresholds inside the first fit of a process, after profile's delivery passes
    timed the dataset alone: the faults the dataset takes through fit are counted there too, and advised on."""
    seen = {}
    for mode, words in malloc_runs(_FAULTS_THROUGH_FIT).items():
        delivered, through_fit, advised = words[-3:]
        seen[mode] = (int(delivered), int(through_fit), advised == "True")
    assert seen["default"][0] < 20 * 256 / 4  # delivered alone, before any fit: glibc's own threshold holds
    assert seen["default"][1] > 20 * 256 * 0.8  # through fit: ~256 faults per temporary
    assert seen["default"][2]
    assert seen["tuned"][1] < 20 * 256 / 4
    assert not seen["tuned"][2]
