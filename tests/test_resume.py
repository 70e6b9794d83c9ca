"""kseq.BackupAndRestore: a killed run, rerun with the same command, ends with the uninterrupted run's weights.

The kill tests run a real training script in a subprocess (TensorFlow on the CPU with op
determinism), kill it with ``os._exit`` from a callback part way through an epoch, run the same
command again, and compare the final weights with an uninterrupted run: they must be equal.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import kseq
from kseq import KseqError
from kseq.resume import BackupAndRestore

ROOT = Path(__file__).resolve().parent.parent
KILLED = 3  # the exit code of a run killed by the script's own callback
BATCHES = 8  # per epoch of the dense run: 60 rows in batches of 8
EPOCHS = 3

# Training jobs, run in turn, each {"model": "dense"|"stateful", "workers", "mp", "save_freq", "double",
# "kill": [epoch, batch] | None, "epochs", "backup", "out"}; each job's final weights go to its "out" (.npz).
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import keras, numpy as np, tensorflow as tf
    import kseq

    tf.config.experimental.enable_op_determinism()

    class Kill(keras.callbacks.Callback):
        def __init__(self, at):
            super().__init__()
            self.at, self.epoch = at, None
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.at and [self.epoch, batch] == self.at:
                os._exit(3)  # no cleanup, no flush: a preemption

    def dense(job):
        rng = np.random.default_rng(1)
        data = {"a": rng.normal(size=(60, 3)), "b": rng.normal(size=(60, 5)), "y": rng.normal(size=60)}
        ds = kseq.MultiInputDataset(data, inputs=["a", "b"], targets="y", batch_size=8, seed=5,
                                    workers=job["workers"], use_multiprocessing=job["mp"])
        keras.utils.set_random_seed(0)
        a, b = keras.Input((3,), name="a"), keras.Input((5,), name="b")
        h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
        model = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Dropout(0.3)(h)))  # built from a list
        model.compile(keras.optimizers.Adam(0.01), "mse")
        return model, ds.for_model(model), []

    def stateful(job):
        rng = np.random.default_rng(2)
        series = [rng.normal(size=(n, 1)) for n in (23, 9, 30, 14)]
        ds = kseq.StatefulSequenceDataset(series, batch_size=2, timesteps=4, seed=0,
                                          workers=job["workers"], use_multiprocessing=job["mp"])
        keras.utils.set_random_seed(0)
        inp = ds.keras_input()
        h = keras.layers.LSTM(4, stateful=True, return_sequences=True)(inp)
        model = keras.Model(inp, keras.layers.Dense(1)(h))
        model.compile(keras.optimizers.Adam(0.01), "mse")
        return model, ds, [kseq.ResetStates(ds)]

    for job in json.loads(sys.argv[1]):
        keras.backend.clear_session()
        model, ds, extra = {"dense": dense, "stateful": stateful}[job["model"]](job)
        backup = kseq.BackupAndRestore(job["backup"], ds, save_freq=job["save_freq"],
                                       double_checkpoint=job["double"])
        model.fit(ds, epochs=job["epochs"], shuffle=False, verbose=0, callbacks=[*extra, backup, Kill(job["kill"])])
        np.savez(job["out"], *model.get_weights(), iterations=int(model.optimizer.iterations.numpy()),
                 batches=len(ds), restored=json.dumps(backup.restored))
        ds.close()
    """
)


def run(tmp_path, jobs, *, expect=0):
    """Run SCRIPT on ``jobs`` in a fresh TensorFlow process; its return code must be ``expect``."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(jobs)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == expect, done.stderr[-3000:]
    return done


def job(tmp_path, name, **changes):
    base = {"model": "dense", "workers": 1, "mp": False, "save_freq": 3, "double": False, "kill": None}
    base["epochs"] = EPOCHS
    return {**base, "backup": str(tmp_path / f"backup-{name}"), "out": str(tmp_path / f"{name}.npz"), **changes}


def rerun(tmp_path, killed, name, **changes):
    """The killed job's command again, on a copy of its backups (so that one kill serves several reruns)."""
    backup = tmp_path / f"backup-{name}"
    shutil.copytree(killed["backup"], backup)
    return {**killed, "kill": None, "backup": str(backup), "out": str(tmp_path / f"{name}.npz"), **changes}


def result(job):
    """The final weights of ``job``, its optimizer's step count, its dataset's length, and what it restored."""
    with np.load(job["out"]) as saved:
        arrays = [saved[f"arr_{i}"] for i in range(len(saved.files) - 3)]
        return arrays, int(saved["iterations"]), int(saved["batches"]), json.loads(str(saved["restored"]))


def assert_same_run(job, reference):
    got, iterations, batches, _ = result(job)
    want, want_iterations, _, _ = result(reference)
    assert iterations == want_iterations == EPOCHS * batches  # every batch trained once, none again
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four TensorFlow processes: three killed part way (one after the uninterrupted reference runs), then
    every rerun. A process builds each job's model after ``keras.backend.clear_session()``, so a job
    trains as it would alone, and only a killed job ends its process."""
    tmp = tmp_path_factory.mktemp("resume")
    jobs = {
        "reference": job(tmp, "reference"),
        "reference_stateful": job(tmp, "reference_stateful", model="stateful"),
        "inline": job(tmp, "inline", double=True, kill=[1, 5]),
        "processes": job(tmp, "processes", workers=2, mp=True, save_freq="epoch", kill=[2, 3]),
        "stateful": job(tmp, "stateful", model="stateful", save_freq=2, kill=[1, 4]),
    }
    run(tmp, [jobs["reference"], jobs["reference_stateful"], jobs["inline"]], expect=KILLED)
    run(tmp, [jobs["processes"]], expect=KILLED)
    run(tmp, [jobs["stateful"]], expect=KILLED)
    reruns = {
        "inline": rerun(tmp, jobs["inline"], "inline-again"),
        "inline_to_processes": rerun(tmp, jobs["inline"], "inline-to-processes", workers=2, mp=True),
        "damaged": rerun(tmp, jobs["inline"], "damaged"),
        "processes": rerun(tmp, jobs["processes"], "processes-again"),
        "processes_to_inline": rerun(tmp, jobs["processes"], "processes-to-inline", workers=1, mp=False),
        "stateful": rerun(tmp, jobs["stateful"], "stateful-again"),
    }
    newest, previous = sorted(Path(reruns["damaged"]["backup"]).glob("backup-*"), reverse=True)
    with (newest / "model.weights.h5").open("r+b") as f:  # half-written: truncated
        f.truncate((newest / "model.weights.h5").stat().st_size // 2)
    done = run(tmp, list(reruns.values()))
    return {"killed": jobs, "reruns": reruns, "stderr": done.stderr, "damaged": (newest, previous)}


class TestKilledRunsResumeExactly:
    def test_inline_workers(self, runs):
        """workers=1, a backup every 3 batches (counted across epochs), killed at epoch 1 batch 5: resumed at 4."""
        again = runs["reruns"]["inline"]
        restored = result(again)[3]
        assert (restored["epoch"], restored["batch"]) == (1, 4)
        assert_same_run(again, runs["killed"]["reference"])

    def test_a_rerun_in_worker_processes_of_a_run_killed_inline(self, runs):
        again = runs["reruns"]["inline_to_processes"]
        assert result(again)[3]["batch"] == 4
        assert_same_run(again, runs["killed"]["reference"])

    def test_worker_processes_with_a_backup_every_epoch(self, runs):
        """workers=2 processes, save_freq="epoch", killed inside epoch 2: epoch 2 trains again from batch 0."""
        again = runs["reruns"]["processes"]
        restored = result(again)[3]
        assert (restored["epoch"], restored["batch"]) == (2, 0)
        assert_same_run(again, runs["killed"]["reference"])

    def test_an_inline_rerun_of_a_run_killed_in_worker_processes(self, runs):
        assert_same_run(runs["reruns"]["processes_to_inline"], runs["killed"]["reference"])

    def test_stateful_lstm_with_reset_states(self, runs):
        """A stateful LSTM killed mid-stream carries (and resets) its state as the uninterrupted run did."""
        again = runs["reruns"]["stateful"]
        restored = result(again)[3]
        assert (restored["epoch"], restored["batch"]) == (1, 4)
        assert 0 < restored["batch"] < result(again)[2]
        assert_same_run(again, runs["killed"]["reference_stateful"])

    def test_a_truncated_newest_backup_falls_back_to_the_previous_one(self, runs):
        """The newest backup's weights cut in half: a warning, the previous backup, and still the same run."""
        newest, previous = runs["damaged"]
        again = runs["reruns"]["damaged"]
        assert f"skipping the damaged backup {newest}" in runs["stderr"]
        assert result(again)[3]["path"] == str(previous)
        assert_same_run(again, runs["killed"]["reference"])


# -- in-process tests: any backend ------------------------------------------------------


class Interrupt(keras.callbacks.Callback):
    """Raises at (epoch, batch), as Keras's own BackupAndRestore example interrupts a fit."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise RuntimeError("interrupted")


def small_dataset(**changes):
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(40, 3)).astype("float32"), "y": rng.normal(size=40).astype("float32")}
    return kseq.MultiInputDataset(data, inputs="x", targets="y", **{"batch_size": 8, "seed": 1, **changes})


def small_model(initial=None):
    x = keras.Input((3,), name="x")
    model = keras.Model(x, keras.layers.Dense(1)(keras.layers.Dense(4, activation="tanh")(x)))
    model.compile(keras.optimizers.Adam(0.01), "mse")
    if initial is not None:
        model.set_weights(initial)
    return model


def fit(model, ds, backup_dir, **options):
    """``fit_feed`` on ``ds``'s view for ``model``."""
    return fit_feed(model, ds.for_model(model), backup_dir, **options)


def fit_feed(model, feed, backup_dir, *, epochs=3, interrupt=None, **options):
    """``model.fit(feed)`` with a BackupAndRestore of ``feed`` (``options``), interrupted at ``(epoch, batch)``."""
    backup = BackupAndRestore(backup_dir, feed, **options)
    callbacks = [backup] if interrupt is None else [backup, Interrupt(*interrupt)]
    return model.fit(feed, epochs=epochs, shuffle=False, callbacks=callbacks, verbose=0), backup


@pytest.mark.portable
@pytest.mark.parametrize(("save_freq", "at", "resumed"), [(2, (1, 2), (1, 3)), ("epoch", (1, 2), (1, 0))])
def test_an_interrupted_fit_resumes_at_the_batch_of_its_last_backup(tmp_path, save_freq, at, resumed):
    """Rerun after an interruption: restored at the last backup, every batch trained once, the same weights."""
    initial = small_model().get_weights()
    reference = small_model(initial)
    fit(reference, small_dataset(), tmp_path / "reference")
    model = small_model(initial)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(model, small_dataset(), tmp_path / "b", interrupt=at, save_freq=save_freq)
    model = small_model(initial)
    history, backup = fit(model, small_dataset(), tmp_path / "b", save_freq=save_freq)
    assert (backup.restored["epoch"], backup.restored["batch"]) == resumed
    assert history.epoch == ([2] if resumed[1] else [1, 2])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3 * 5
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "b").exists()  # delete_checkpoint=True removes the backups at the end


@pytest.mark.portable
def test_a_dataset_adapted_by_the_deprecated_set_structure_resumes_as_fit_feeds_it(tmp_path):
    """Replayed batches take the dataset's model_structure, as ds[i] does: a list-built model refuses a y dict."""
    def two_input_model(initial=None):
        a, b = keras.Input((2,), name="a"), keras.Input((1,), name="b")
        h = keras.layers.Dense(4, activation="tanh")(keras.layers.Concatenate()([a, b]))
        model = keras.Model([a, b], keras.layers.Dense(1, name="out")(h))
        model.compile(keras.optimizers.Adam(0.01), "mse")
        if initial is not None:
            model.set_weights(initial)
        return model

    def adapted(model):
        rng = np.random.default_rng(0)
        data = {"a": rng.normal(size=(40, 2)), "b": rng.normal(size=40), "y": rng.normal(size=40)}
        ds = kseq.MultiInputDataset(data, inputs=["a", "b"], targets={"out": "y"}, batch_size=8, seed=1)
        with pytest.warns(DeprecationWarning, match="set_structure"):
            ds.set_structure(kseq.ModelStructure.of(model))
        return ds

    def run(model, backup_dir, interrupt=None):
        return fit_feed(model, adapted(model), backup_dir, epochs=2, interrupt=interrupt, save_freq=2)[1]

    initial = two_input_model().get_weights()
    reference = two_input_model(initial)
    run(reference, tmp_path / "reference")
    with pytest.raises(RuntimeError, match="interrupted"):
        run(two_input_model(initial), tmp_path / "b", interrupt=(0, 2))
    model = two_input_model(initial)
    backup = run(model, tmp_path / "b")
    assert (backup.restored["epoch"], backup.restored["batch"]) == (0, 2)  # batches 2, 3 and 4 replayed
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.portable
def test_fit_s_class_weight_given_to_the_callback_weighs_the_resumed_batches_as_fit_does(tmp_path):
    """fit(class_weight=cw) resumed with BackupAndRestore(class_weight=cw) ends where the uninterrupted run does;
    without it on the callback, the replayed batches train unweighted and the weights differ."""
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(40, 3)).astype("float32"), "y": (rng.random(40) < 0.3).astype("float32")}
    weights = {0: 1.0, 1: 4.0}

    def model_(initial=None):
        x = keras.Input((3,), name="x")
        model = keras.Model(x, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(4)(x)))
        model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy")
        if initial is not None:
            model.set_weights(initial)
        return model

    def train(model, backup_dir, interrupt=None, **options):
        ds = kseq.MultiInputDataset(data, inputs="x", targets="y", batch_size=8, seed=1)
        view = ds.for_model(model)
        callbacks = [BackupAndRestore(backup_dir, view, save_freq=1, **options)]
        callbacks += [] if interrupt is None else [Interrupt(*interrupt)]
        model.fit(view, epochs=2, shuffle=False, class_weight=weights, callbacks=callbacks, verbose=0)

    initial = model_().get_weights()
    reference = model_(initial)
    train(reference, tmp_path / "reference")
    ends = {}
    for given in (True, False):
        model = model_(initial)
        options = {"class_weight": weights} if given else {}
        with pytest.raises(RuntimeError, match="interrupted"):
            train(model, tmp_path / str(given), interrupt=(0, 1), **options)
        model = model_(initial)
        train(model, tmp_path / str(given), **options)
        pairs = zip(model.get_weights(), reference.get_weights(), strict=True)
        ends[given] = max(float(np.abs(a - b).max()) for a, b in pairs)
    assert ends[True] < 1e-6
    assert ends[False] > 1e-3


@pytest.mark.parametrize("class_weight", [[1.0, 4.0], {"a": 1.0}])
def test_a_class_weight_that_is_not_a_mapping_of_classes_is_refused_with_an_example(tmp_path, class_weight):
    with pytest.raises(kseq.KseqError, match=r"class_weight must be the mapping.*Received class_weight="):
        BackupAndRestore(tmp_path, small_dataset(), class_weight=class_weight)


class Noisy(kseq.Dataset):
    """A subclass of kseq.Dataset whose batches add noise drawn from the batch's own generator."""

    def build_batch(self, rows):
        return rows["x"] + self.batch_rng().normal(scale=0.1, size=rows["x"].shape).astype("float32"), rows["y"]


class TripletLoss(keras.layers.Layer):
    def call(self, anchor, positive, negative):
        distance = keras.ops.sum(keras.ops.square(anchor - positive) - keras.ops.square(anchor - negative), axis=1)
        self.add_loss(keras.ops.mean(keras.ops.relu(distance + 1.0)))
        return anchor


def labelled(n=48, dim=3):
    rng = np.random.default_rng(3)
    label = np.arange(n) % 4
    return {"x": (rng.normal(size=(n, dim)) + label[:, None]).astype("float32"), "label": label}


def kind(name):
    """A dataset of kind ``name`` and a function building a small compiled model for it."""
    if name == "subclass":
        rng = np.random.default_rng(0)
        data = {"x": rng.normal(size=(40, 3)).astype("float32"), "y": rng.normal(size=40).astype("float32")}
        return Noisy(data, batch_size=8, seed=2), lambda: small_model()
    if name == "siamese":

        def siamese():
            tower = keras.layers.Dense(4, activation="tanh")
            left, right = keras.Input((3,), name="left"), keras.Input((3,), name="right")
            diff = keras.layers.Subtract()([tower(left), tower(right)])
            model = keras.Model({"left": left, "right": right}, keras.layers.Dense(1, activation="sigmoid")(diff))
            model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
            return model

        return kseq.SiamesePairDataset(labelled(), batch_size=8, seed=0), siamese
    if name == "triplet":

        def triplet():
            tower = keras.layers.Dense(4)
            inputs = {role: keras.Input((3,), name=role) for role in ("anchor", "positive", "negative")}
            out = TripletLoss()(*(tower(inputs[role]) for role in ("anchor", "positive", "negative")))
            model = keras.Model(inputs, out)
            model.compile(keras.optimizers.Adam(0.01))
            return model

        return kseq.TripletDataset(labelled(), batch_size=8, seed=0), triplet
    rng = np.random.default_rng(4)  # 48 images, 2 captions each: every epoch draws one per image
    captions = [[[2, *rng.integers(4, 12, size=rng.integers(3, 7)).tolist(), 3] for _ in range(2)] for _ in range(48)]
    features = rng.normal(size=(48, 5)).astype("float32")
    ds = kseq.CaptionDataset(features, captions, fixed_length=True, batch_size=8, seed=0)

    def captioner():
        image = keras.Input((5,), name="transfer_values_input")
        tokens = keras.Input((ds.sequence_length,), name="decoder_input")
        h = keras.layers.Embedding(12, 4)(tokens) + keras.layers.Reshape((1, 4))(keras.layers.Dense(4)(image))
        out = keras.layers.Dense(12, activation="softmax", name="decoder_output")(h)
        model = keras.Model({"transfer_values_input": image, "decoder_input": tokens}, {"decoder_output": out})
        model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        return model

    return ds, captioner


@pytest.mark.portable
@pytest.mark.parametrize("name", ["subclass", "siamese", "triplet", "caption"])
def test_every_dataset_kind_resumes_exactly(tmp_path, name):
    """Pairs, triplets, caption draws and per-batch noise are the same after a resume as without one."""
    keras.utils.set_random_seed(0)
    _, build = kind(name)
    initial = build().get_weights()

    def train(backup_dir, interrupt=None):
        ds, build = kind(name)
        model = build()
        model.set_weights(initial)
        return model, fit_feed(model, ds, backup_dir, interrupt=interrupt, save_freq=2)[1]

    reference, _ = train(tmp_path / "reference")
    with pytest.raises(RuntimeError, match="interrupted"):
        train(tmp_path / "b", interrupt=(1, 2))
    resumed, backup = train(tmp_path / "b")
    assert backup.restored["epoch"] == 1
    assert 0 < backup.restored["batch"] < len(kind(name)[0])
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 3 * len(kind(name)[0])
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.portable
def test_a_stateful_lstm_resumes_mid_stream_exactly(tmp_path):
    """Resumed at batch 4 of 10: the RNN state saved with the backup, and ResetStates' resets at 6 and 8.

    On torch, ResetStates puts the LSTM on Keras's generic RNN path when it is given the model (NOTE [ stateful
    LSTM/GRU on PyTorch in Keras 3.15 ] in kseq/torch_states.py), before the resumed batches train.
    """
    rng = np.random.default_rng(2)
    series = [rng.normal(size=(n, 1)).astype("float32") for n in (23, 9, 30, 14)]
    keras.utils.set_random_seed(0)
    initial = None

    def train(backup_dir, interrupt=None):
        nonlocal initial
        ds = kseq.StatefulSequenceDataset(series, batch_size=2, timesteps=4, seed=0)
        inp = ds.keras_input()
        h = keras.layers.LSTM(4, stateful=True, return_sequences=True)(inp)
        model = keras.Model(inp, keras.layers.Dense(1)(h))
        model.compile(keras.optimizers.Adam(0.01), "mse")
        initial = model.get_weights() if initial is None else initial
        model.set_weights(initial)
        backup = BackupAndRestore(backup_dir, ds, save_freq=2)
        callbacks = [kseq.ResetStates(ds), backup] + ([] if interrupt is None else [Interrupt(*interrupt)])
        model.fit(ds, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
        return model, backup

    reference, _ = train(tmp_path / "reference")
    with pytest.raises(RuntimeError, match="interrupted"):
        train(tmp_path / "b", interrupt=(1, 4))
    resumed, backup = train(tmp_path / "b")
    assert (backup.restored["epoch"], backup.restored["batch"]) == (1, 4)
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.portable
def test_the_datasets_epoch_follows_keras(tmp_path):
    """Whatever Keras's pre-training peek did, Keras epoch e trains on the dataset's epoch e."""
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(ds.epoch)

    ds = small_dataset()
    model = small_model()
    view = ds.for_model(model)
    model.fit(view, epochs=2, shuffle=False, verbose=0, callbacks=[BackupAndRestore(tmp_path, view), Record()])
    assert seen == [0] * 5 + [1] * 5


@pytest.mark.portable
def test_a_backup_of_another_dataset_is_refused_naming_the_difference(tmp_path):
    model = small_model()
    fit(model, small_dataset(), tmp_path, epochs=1, delete_checkpoint=False)
    with pytest.raises(KseqError, match=r"batch_size: 8 in the state, 10 here"):
        fit(model, small_dataset(batch_size=10), tmp_path, epochs=2)


@pytest.mark.portable
def test_damaged_backups_start_from_scratch_with_a_warning_and_the_initial_weights(tmp_path):
    """A broken backup.json and a truncated weights file: a warning each, then training from scratch."""
    initial = small_model().get_weights()
    fit(small_model(initial), small_dataset(), tmp_path, epochs=2, save_freq=5, double_checkpoint=True,
        delete_checkpoint=False)
    newest, previous = sorted(tmp_path.glob("backup-*"), reverse=True)
    (newest / "backup.json").write_text('{"format": "kseq.bac')
    with (previous / "model.weights.h5").open("r+b") as f:
        f.truncate(100)
    model = small_model(initial)
    with pytest.warns(UserWarning, match="kseq.BackupAndRestore") as caught:
        history, backup = fit(model, small_dataset(), tmp_path, epochs=2)
    messages = [str(w.message) for w in caught]
    assert sum("skipping the damaged backup" in m for m in messages) == 2
    assert any("training starts from scratch" in m for m in messages)
    assert backup.restored is None
    reference = small_model(initial)
    fit(reference, small_dataset(), tmp_path / "reference", epochs=2)
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert history.epoch == [0, 1]


@pytest.mark.portable
def test_a_half_written_backup_is_ignored_and_removed(tmp_path):
    """A .partial directory (a kill during a save) is not a backup: training starts from scratch, silently."""
    partial = tmp_path / ".partial-000001-999"
    partial.mkdir()
    (partial / "model.weights.h5").write_bytes(b"\x89HDF")
    model = small_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history, backup = fit(model, small_dataset(), tmp_path, epochs=1, delete_checkpoint=False)
    assert backup.restored is None
    assert history.epoch == [0]
    assert not partial.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["backup-000001"]


@pytest.mark.portable
def test_fit_with_other_steps_per_epoch_is_refused(tmp_path):
    model = small_model()
    view = small_dataset().for_model(model)
    with pytest.raises(KseqError, match=r"Expected 5 steps per epoch \(len\(dataset\)\). Received 2"):
        model.fit(view, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0,
                  callbacks=[BackupAndRestore(tmp_path, view)])


@pytest.mark.portable
def test_fit_with_keras_shuffle_is_refused(tmp_path):
    """fit(shuffle=True) asks for batches in an order a rerun cannot repeat: refused with the fix."""
    model = small_model()
    view = small_dataset().for_model(model)
    with pytest.raises(KseqError, match=r"needs fit\(shuffle=False\)"):
        model.fit(view, epochs=1, verbose=0, callbacks=[BackupAndRestore(tmp_path, view)])


@pytest.mark.portable
def test_a_generator_dataset_is_refused_at_construction_saying_what_to_use(tmp_path):
    def batches():
        while True:
            yield np.ones((4, 3)), np.ones((4, 1))

    generator = kseq.GeneratorDataset(batches(), steps_per_epoch=2)
    with pytest.raises(KseqError, match=r"cannot be rewound.*Received GeneratorDataset.*kseq\.Dataset"):
        BackupAndRestore(tmp_path, generator)


@pytest.mark.portable
@pytest.mark.parametrize("save_freq", [0, "batch", False, 1.5])
def test_save_freq_is_checked_at_construction(tmp_path, save_freq):
    with pytest.raises(KseqError, match="save_freq"):
        BackupAndRestore(tmp_path, small_dataset(), save_freq=save_freq)
