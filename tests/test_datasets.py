import os
import pickle
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import concat_model

import kseq
from kseq import Dataset, MultiInputDataset, StructureError


def all_batches(ds, epoch=None):
    return [ds.get_batch(i, epoch) for i in range(len(ds))]


@pytest.mark.portable
class TestDataset:
    def test_seed_is_drawn_once_and_exposed(self):
        ds = Dataset({"x": np.arange(20)}, batch_size=5)
        again = Dataset({"x": np.arange(20)}, batch_size=5, seed=ds.seed)
        assert isinstance(ds.seed, int)
        assert [b[0]["x"].tolist() for b in all_batches(ds)] == [b[0]["x"].tolist() for b in all_batches(again)]

    def test_every_sample_once_per_epoch_and_epochs_differ(self):
        ds = Dataset({"x": np.arange(50)}, batch_size=8, seed=1)
        first = np.concatenate([b[0]["x"] for b in all_batches(ds)])
        ds.on_epoch_end()
        second = np.concatenate([b[0]["x"] for b in all_batches(ds)])
        assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))
        assert first.tolist() != second.tolist()
        assert ds.epoch == 1

    def test_no_shuffle_keeps_order(self):
        ds = Dataset({"x": np.arange(10)}, batch_size=4, shuffle=False)
        assert [b[0]["x"].tolist() for b in all_batches(ds)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]

    def test_drop_remainder(self):
        ds = Dataset({"x": np.arange(10)}, batch_size=4, drop_remainder=True, seed=0)
        assert len(ds) == 2
        assert all(len(b[0]["x"]) == 4 for b in all_batches(ds))

    def test_too_few_rows_for_one_batch(self):
        with pytest.raises(StructureError, match="no batches"):
            Dataset({"x": np.arange(3)}, batch_size=4, drop_remainder=True)

    @pytest.mark.parametrize("seed", [-1, 1.5, "7"])
    def test_bad_seed(self, seed):
        with pytest.raises(StructureError, match="seed must be a non-negative integer"):
            Dataset({"x": np.arange(3)}, seed=seed)

    def test_accepts_a_dataframe(self):
        ds = Dataset(pd.DataFrame({"a": range(6)}), batch_size=3, shuffle=False)
        assert ds[1][0]["a"].tolist() == [3, 4, 5]

    def test_index_out_of_range(self):
        ds = Dataset({"x": np.arange(10)}, batch_size=4)
        with pytest.raises(IndexError, match="3 batches"):
            ds[3]

    def test_subclass_overrides_build_batch(self):
        class Squares(Dataset):
            def build_batch(self, rows):
                return rows["x"], rows["x"] ** 2

        x, y = Squares({"x": np.arange(6)}, batch_size=6, seed=2)[0]
        assert (y == x**2).all()
        assert sorted(x.tolist()) == list(range(6))

    def test_list_from_build_batch_is_refused(self):
        class Bad(Dataset):
            def build_batch(self, rows):
                return [rows["x"], rows["x"]]

        with pytest.raises(StructureError, match=r"Keras reads a list as \(x, y\)"):
            Bad({"x": np.arange(4)})[0]

    def test_pickle_keeps_seed_epoch_and_batches(self):
        data = {"a": np.arange(30.0), "t": np.arange(30)}
        ds = MultiInputDataset(data, inputs="a", targets="t", batch_size=8, seed=4)
        ds.on_epoch_end()
        clone = pickle.loads(pickle.dumps(ds))
        assert clone.epoch == 1
        assert clone[2][1].tolist() == ds[2][1].tolist()

    def test_batch_rng_depends_on_seed_epoch_and_index(self):
        ds = Dataset({"x": np.arange(10)}, seed=3)
        draw = ds.batch_rng(0).random()
        assert draw == ds.batch_rng(0).random()
        assert draw != ds.batch_rng(1).random()
        assert draw != ds.batch_rng(0, epoch=1).random()


@pytest.mark.portable
class TestMultiInputDataset:
    def test_x_is_named_by_model_inputs(self, two_inputs):
        ds = MultiInputDataset(two_inputs, inputs={"left": "a", "right": "b"}, targets="y", shuffle=False)
        x, y = ds[0]
        assert list(x) == ["left", "right"]
        assert np.array_equal(x["left"], two_inputs["a"][:32])
        assert np.array_equal(y, two_inputs["y"][:32])

    def test_targets_list_gives_a_dict(self, two_inputs):
        ds = MultiInputDataset(two_inputs, inputs="a", targets=["y", "label"], shuffle=False)
        _, y = ds[0]
        assert sorted(y) == ["label", "y"]

    def test_no_targets_gives_x_only(self, two_inputs):
        assert len(MultiInputDataset(two_inputs, inputs=["a", "b"])[0]) == 1

    def test_reads_only_the_fields_it_uses(self, two_inputs):
        ds = MultiInputDataset(two_inputs, inputs="a", targets="y")
        assert ds.fields_read == ["a", "y"]

    def test_unknown_field(self, two_inputs):
        with pytest.raises(StructureError, match=r"inputs names field\(s\) \['c'\] that the source does not have"):
            MultiInputDataset(two_inputs, inputs=["a", "c"])

    def test_class_weight_is_looked_up_per_sample(self, two_inputs):
        ds = MultiInputDataset(two_inputs, inputs="a", targets="label", class_weight={0: 1.0, 1: 4.0}, seed=0)
        _, y, w = ds[0]
        assert np.array_equal(w, np.where(y == 1, 4.0, 1.0))

    def test_class_weight_times_sample_weight(self, two_inputs):
        ds = MultiInputDataset(
            two_inputs, inputs="a", targets="label", sample_weight="w", class_weight={0: 1.0, 1: 4.0}, shuffle=False
        )
        _, y, w = ds[1]
        expected = two_inputs["w"][32:64] * np.where(y == 1, 4.0, 1.0)
        np.testing.assert_allclose(w, expected, rtol=1e-6)

    def test_class_weight_per_output(self, two_inputs):
        ds = MultiInputDataset(
            two_inputs,
            inputs="a",
            targets={"cls": "label", "reg": "y"},
            class_weight={"cls": {0: 2.0, 1: 0.5}},
            shuffle=False,
        )
        _, y, w = ds[0]
        assert np.array_equal(w["cls"], np.where(y["cls"] == 1, 0.5, 2.0))
        assert (w["reg"] == 1).all()

    def test_class_weight_one_hot_labels(self):
        onehot = np.eye(3, dtype="float32")[[0, 2, 1, 2]]
        ds = MultiInputDataset({"x": np.zeros((4, 1)), "t": onehot}, inputs="x", targets="t",
                               class_weight={0: 1, 1: 2, 2: 3}, shuffle=False)
        assert ds[0][2].tolist() == [1, 3, 2, 3]

    def test_class_weight_missing_class_fails_at_construction(self, two_inputs):
        with pytest.raises(StructureError, match=r"no weight for class\(es\) \[1\]"):
            MultiInputDataset(two_inputs, inputs="a", targets="label", class_weight={0: 1.0})

    def test_flat_class_weight_with_several_targets_is_refused(self, two_inputs):
        with pytest.raises(StructureError, match="must be given per output"):
            MultiInputDataset(two_inputs, inputs="a", targets=["label", "y"], class_weight={0: 1.0, 1: 2.0})

    def test_weights_for_unknown_output(self, two_inputs):
        with pytest.raises(StructureError, match=r"sample_weight names output\(s\) \['zzz'\]"):
            MultiInputDataset(two_inputs, inputs="a", targets=["y"], sample_weight={"zzz": "w"})


class TestFit:
    """Routing through a real ``fit``/``predict``: inputs differ in shape, so a mis-route fails."""

    @pytest.mark.portable
    @pytest.mark.parametrize("structure", ["list", "dict"])
    def test_predict_routes_each_field_to_its_input(self, two_inputs, structure):
        model = concat_model(structure)
        ds = MultiInputDataset(two_inputs, inputs=["b", "a"], batch_size=32, shuffle=False)
        out = model.predict(ds.for_model(model), verbose=0)
        np.testing.assert_allclose(out, np.concatenate([two_inputs["a"], two_inputs["b"]], axis=1))

    @pytest.mark.portable
    def test_fit_learns_from_both_inputs_with_a_dict_target(self, two_inputs):
        a = keras.Input((3,), name="a")
        b = keras.Input((5,), name="b")
        out = keras.layers.Dense(1, name="decoder_output")(keras.layers.Concatenate()([a, b]))
        model = keras.Model([a, b], out)  # built from lists, single output
        model.compile(keras.optimizers.Adam(0.05), "mse")
        ds = MultiInputDataset(two_inputs, inputs=["a", "b"], targets={"decoder_output": "y"}, batch_size=16, seed=0)
        view = ds.for_model(model)
        assert "y dict ['decoder_output'] must be passed as a single array" in str(view.report)
        hist = model.fit(view, epochs=30, verbose=0)
        assert hist.history["loss"][-1] < 0.01 * hist.history["loss"][0]

    def test_multi_output_list_model_gets_targets_by_output_name(self, two_inputs):
        a = keras.Input((3,), name="a")
        h = keras.layers.Dense(8)(a)
        model = keras.Model(a, [keras.layers.Dense(1, name="reg")(h), keras.layers.Dense(2, name="cls")(h)])
        model.compile("adam", loss=["mse", "sparse_categorical_crossentropy"])
        ds = MultiInputDataset(
            two_inputs, inputs="a", targets={"cls": "label", "reg": "y"}, class_weight={"cls": {0: 1, 1: 3}}, seed=0
        )
        view = ds.for_model(model)
        _x, y, w = view[0]
        assert y[0].dtype == np.float32
        assert y[1].dtype == np.int64
        assert len(w) == 2
        hist = model.fit(view, epochs=2, verbose=0)
        assert np.isfinite(hist.history["loss"]).all()

    @pytest.mark.portable
    @pytest.mark.parametrize("routing", ["class_weight", "sample_weight"])
    def test_each_output_gets_its_own_weights_in_the_compiled_loss(self, two_inputs, routing):
        """Per-output weights reach the output they name: each output's loss in a real compiled model is its
        per-sample loss weighted by its own weights; the other output's weights give another value."""
        a = keras.Input((3,), name="a")
        h = keras.layers.Dense(8)(a)
        model = keras.Model(a, [keras.layers.Dense(1, name="reg")(h), keras.layers.Dense(2, name="cls")(h)])
        sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        model.compile(loss=["mse", keras.losses.SparseCategoricalCrossentropy(from_logits=True)])
        label, y = two_inputs["label"], two_inputs["y"]
        per_class = np.where(label == 1, 3.0, 1.0)
        if routing == "class_weight":  # weights on cls only; reg unweighted
            weights = {"cls": per_class, "reg": np.ones(96)}
            ds = MultiInputDataset(two_inputs, inputs="a", targets={"cls": "label", "reg": "y"},
                                   class_weight={"cls": {0: 1, 1: 3}}, batch_size=96, shuffle=False)
        else:  # a valid per-output sample_weight={output: field}, beside class weights on the other output
            weights = {"cls": per_class, "reg": two_inputs["w"]}
            ds = MultiInputDataset(two_inputs, inputs="a", targets={"cls": "label", "reg": "y"},
                                   sample_weight={"reg": "w"}, class_weight={"cls": {0: 1, 1: 3}},
                                   batch_size=96, shuffle=False)
        view = ds.for_model(model)
        losses = model.evaluate(view, verbose=0, return_dict=True)
        reg, cls = model.predict(view, verbose=0)
        per_sample = {
            "reg": (reg[:, 0] - y) ** 2,
            "cls": keras.ops.convert_to_numpy(sce(label, cls)),
        }
        for out, other in (("reg", "cls"), ("cls", "reg")):
            own = float(np.mean(per_sample[out] * weights[out]))
            swapped = float(np.mean(per_sample[out] * weights[other]))
            assert losses[f"{out}_loss"] == pytest.approx(own, rel=1e-4)
            assert abs(own - swapped) > 0.01 * own
        assert losses["loss"] == pytest.approx(losses["reg_loss"] + losses["cls_loss"], rel=1e-5)

    @pytest.mark.portable
    @pytest.mark.parametrize("mode", [{}, {"workers": 2}, {"workers": 2, "use_multiprocessing": True,
                                                          "start_method": "fork"}],
                             ids=["inline", "threads", "processes"])
    def test_fit_s_epoch_e_trains_the_dataset_s_epoch_e(self, two_inputs, mode):
        """Keras peeks and ends an epoch before training (NOTE [ Keras's peeks ]); the dataset counts passes, so
        every batch of fit's epoch e is the dataset's (e, i), each once, and after fit(epochs=2) ds.epoch is 2."""
        reads = []

        class Recording(MultiInputDataset):
            def read_rows(self, indices):
                reads.append((keras_epoch[0], self.batch_position()))
                return super().read_rows(indices)

        class Epochs(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                keras_epoch[0] = epoch
                at_begin.append(ds.epoch)

            def on_train_batch_end(self, batch, logs=None):
                during[keras_epoch[0]].add(ds.epoch)

        keras_epoch, at_begin, during = [None], [], {0: set(), 1: set()}
        ds = Recording(two_inputs, inputs=["a", "b"], targets="y", batch_size=32, seed=0, **mode)
        model = concat_model()
        model = keras.Model(model.inputs, keras.layers.Dense(1)(model.output))
        model.compile("sgd", "mse")
        with ds:
            model.fit(ds, epochs=2, verbose=0, shuffle=False, callbacks=[Epochs()])
        assert at_begin == [0, 1]
        assert during == {0: {0}, 1: {1}}
        assert ds.epoch == 2
        if not mode:  # inline, the reads are in order: Keras's epoch e read the dataset's epoch e, each batch once
            for keras_e in (0, 1):
                trained = sorted(position for e, position in reads if e == keras_e)
                assert trained == [(keras_e, i) for i in range(len(ds))]

    def test_a_second_fit_trains_the_epochs_it_is_given(self, two_inputs):
        """fit(epochs=2) then fit(initial_epoch=2, epochs=4): the second call trains the dataset's epochs 2 and 3."""
        ds = MultiInputDataset(two_inputs, inputs=["a", "b"], targets="y", batch_size=32, seed=0)
        val = MultiInputDataset(two_inputs, inputs=["a", "b"], targets="y", batch_size=32, seed=5)
        model = concat_model()
        model = keras.Model(model.inputs, keras.layers.Dense(1)(model.output))
        model.compile("sgd", "mse")
        seen = []

        class Epochs(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen.append((epoch, ds.epoch))

        model.fit(ds, epochs=2, verbose=0, shuffle=False, validation_data=val, callbacks=[Epochs()])
        assert ds.epoch == 2
        model.fit(ds, initial_epoch=2, epochs=4, verbose=0, shuffle=False, validation_data=val, callbacks=[Epochs()])
        assert ds.epoch == 4
        # on_epoch_end(e) is called once the pass is complete; the dataset is then at e + 1, never further
        assert seen == [(0, 1), (1, 2), (2, 3), (3, 4)]

    def test_epochs_during_fit_see_different_orders(self, two_inputs):
        seen = {}

        class Recording(MultiInputDataset):
            def read_rows(self, indices):
                seen[self.batch_position()] = indices.copy()  # a peek's batch and its later read are one batch
                return super().read_rows(indices)

        ds = Recording(two_inputs, inputs=["a", "b"], targets="y", batch_size=32, seed=0)
        model = concat_model()
        model = keras.Model(model.inputs, keras.layers.Dense(1)(model.output))
        model.compile("sgd", "mse")
        model.fit(ds, epochs=3, verbose=0)
        by_epoch = {}
        for (epoch, _), idx in sorted(seen.items()):
            by_epoch.setdefault(epoch, []).append(idx)
        trained = [e for e, parts in by_epoch.items() if len(parts) == len(ds)]
        assert len(trained) >= 3
        orders = [np.concatenate(sorted(by_epoch[e], key=lambda p: p[0])) for e in trained]
        for order in orders:
            assert sorted(order.tolist()) == list(range(96))
        assert len({tuple(np.sort(np.concatenate(by_epoch[e])).tolist()) for e in trained}) == 1
        assert len({tuple(np.concatenate(by_epoch[e]).tolist()) for e in trained}) == len(trained)


PARENT_PROBE = """
import os
import numpy as np
from kseq.datasets import Dataset

class ParentProbe(Dataset):
    def build_batch(self, rows):
        return ({"x": rows["x"], "ppid": np.full(len(rows["x"]), os.getppid())},)
"""

WORKER_PARENTS = """
import multiprocessing.forkserver, os, sys
import keras
from parent_probe import ParentProbe
import numpy as np
with ParentProbe({"x": np.arange(8)}, batch_size=4, workers=2, use_multiprocessing=True) as ds:
    ppids = {int(p) for i in range(len(ds)) for p in ds[i][0]["ppid"]}
server = multiprocessing.forkserver._forkserver._forkserver_pid
print("forkserver" if ppids == {server} else "fork" if ppids == {os.getpid()} else ppids)
"""


@pytest.mark.parametrize(("backend", "expected"), [("jax", "forkserver"), ("tensorflow", "fork"),
                                                    ("torch", "fork")])
def test_worker_processes_start_by_forkserver_under_jax_and_by_fork_otherwise(tmp_path, backend, expected):
    """README: default fork, forkserver under JAX. A dataset with worker processes and no start_method, in a
    fresh interpreter with Keras on the backend: under JAX every worker is a child of the forkserver process;
    on TensorFlow and PyTorch (where importing Keras loads jax without running it) a child of the main process."""
    (tmp_path / "parent_probe.py").write_text(PARENT_PROBE)
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}
    out = subprocess.run([sys.executable, "-c", WORKER_PARENTS], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, check=True)
    assert out.stdout.splitlines()[-1] == expected


def test_check_is_public():
    assert kseq.check is kseq.validation.check


@pytest.mark.portable
class TestBlockShuffle:
    def test_block_shuffle_over_a_compressed_file_reads_every_row_once(self, tmp_path):
        """shuffle="block" uses the source's chunks as blocks and still covers every row once per epoch."""
        import h5py

        path = tmp_path / "gz.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.arange(1000), chunks=(50,), compression="gzip")
        ds = Dataset(str(path), batch_size=64, shuffle="block", seed=0)
        assert type(ds.sampler).__name__ == "BlockShuffleSampler"
        rows = np.concatenate([b[0]["x"] for b in all_batches(ds)])
        assert sorted(rows.tolist()) == list(range(1000))
        assert rows.tolist() != list(range(1000))

    def test_block_shuffle_needs_a_block_source(self):
        with pytest.raises(StructureError, match="Block shuffling needs a source read in blocks"):
            Dataset({"x": np.arange(10)}, shuffle="block")

    def test_other_shuffle_values_are_refused(self):
        with pytest.raises(StructureError, match=r'shuffle must be True, False or "block". Received shuffle=\'yes\''):
            Dataset({"x": np.arange(10)}, shuffle="yes")

    def test_block_shuffle_is_refused_where_a_dataset_draws_its_own_order(self):
        from kseq import SiamesePairDataset

        data = {"x": np.arange(20.0), "label": np.arange(20) % 2}
        with pytest.raises(StructureError, match='SiamesePairDataset draws its own order and has no block shuffle'):
            SiamesePairDataset(data, shuffle="block")


@pytest.mark.portable
class TestWeightValidation:
    def test_per_step_integer_labels_with_class_weight_are_refused(self):
        """(n, T) integer ids are not one-hot: reading them as one-hot would weight the wrong class."""
        data = {"x": np.zeros((4, 2)), "t": np.array([[1, 1, 1], [0, 0, 0], [1, 0, 1], [0, 1, 0]])}
        with pytest.raises(StructureError, match=r"needs one class per sample.*shape \(4, 3\)"):
            MultiInputDataset(data, inputs="x", targets="t", class_weight={0: 1.0, 1: 10.0})

    def test_one_hot_integer_labels_are_accepted(self):
        data = {"x": np.zeros((3, 2)), "t": np.eye(3, dtype="int64")}
        ds = MultiInputDataset(data, inputs="x", targets="t", class_weight={0: 1, 1: 2, 2: 3}, shuffle=False)
        assert ds[0][2].tolist() == [1, 2, 3]

    def test_two_dimensional_sample_weight_field_fails_at_construction(self):
        data = {"x": np.zeros((8, 2)), "t": np.zeros(8), "w": np.ones((8, 5))}
        with pytest.raises(StructureError, match=r"sample_weight field 'w' must hold one number per sample"):
            MultiInputDataset(data, inputs="x", targets="t", sample_weight="w")
