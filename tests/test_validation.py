import multiprocessing

import keras
import numpy as np
import pytest
from conftest import concat_model

import kseq
from kseq import MultiInputDataset, StructureError

pytestmark = pytest.mark.portable


def dataset(two_inputs, **kwargs):
    kwargs.setdefault("inputs", ["a", "b"])
    return MultiInputDataset(two_inputs, batch_size=8, shuffle=False, **kwargs)


class TestCheckNames:
    def test_missing_input_names_the_fix(self, two_inputs):
        ds = dataset(two_inputs, inputs={"a": "a", "bee": "b"})
        with pytest.raises(StructureError) as e:
            kseq.check(concat_model(), ds)
        assert str(e.value) == (
            "Model input(s) ['b'] have no field in this dataset. Expected inputs ['a', 'b'] (as model.summary() "
            "shows them). Received inputs ['a', 'bee']. "
            "Pass inputs={'a': 'a', 'b': <field>} to MultiInputDataset ({model input name: field})."
        )

    def test_extra_input_key_is_refused(self, two_inputs):
        """keras#23258: an extra key sorting between real keys is routed silently; kseq refuses it."""
        ds = dataset(two_inputs, inputs={"a": "a", "ab": "b", "b": "b"})
        with pytest.raises(StructureError) as e:
            kseq.check(concat_model("dict"), ds)
        assert str(e.value) == (
            "The batch has inputs ['ab'] that the model does not take. Expected exactly ['a', 'b']. "
            "Extra keys are not harmless: Keras can route the wrong array to an input (keras#23258). "
            "Pass inputs={'a': 'a', 'b': 'b'} to MultiInputDataset ({model input name: field})."
        )

    def test_missing_target(self, two_inputs):
        a = keras.Input((3,), name="a")
        model = keras.Model(a, keras.layers.Dense(1, name="score")(a))
        ds = dataset(two_inputs, inputs="a", targets={"label": "label"})
        with pytest.raises(StructureError) as e:
            kseq.check(model, ds)
        assert str(e.value) == (
            "Model output(s) ['score'] have no field in this dataset. Expected outputs ['score'] (as "
            "model.summary() shows them). Received targets ['label']. "
            "Pass targets='label' (y as one array) or targets={'score': 'label'}."
        )

    def test_unnamed_array_for_a_two_input_model(self, two_inputs):
        class Bare(kseq.Dataset):
            def build_batch(self, rows):
                return (rows["a"], rows["y"])

        with pytest.raises(StructureError, match=r"The model has 2 inputs \['a', 'b'\], but the batch gives one"):
            kseq.check(concat_model(), Bare(two_inputs))


class TestCheckTensors:
    def test_wrong_trailing_shape(self, two_inputs):
        ds = dataset(two_inputs, inputs={"a": "b", "b": "a"})
        with pytest.raises(StructureError) as e:
            kseq.check(concat_model(), ds)
        assert str(e.value) == (
            "Batch x does not fit the model's inputs:\n"
            "  input 'a': expected shape (None, 3); Received (8, 5) float32. "
            "Make the Input shape (None, 5) or give the field shape (n, 3).\n"
            "  input 'b': expected shape (None, 5); Received (8, 3) float32. "
            "Make the Input shape (None, 3) or give the field shape (n, 5)."
        )

    def test_wrong_rank(self):
        inp = keras.Input((4, 4), name="img")
        model = keras.Model(inp, keras.layers.Flatten()(inp))
        ds = MultiInputDataset({"img": np.zeros((8, 16), "float32")}, inputs="img")
        with pytest.raises(StructureError, match=r"input 'img': expected rank 3 shape \(None, 4, 4\); Received"):
            kseq.check(model, ds)

    def test_trailing_one_is_accepted_like_keras(self):
        inp = keras.Input((1,), name="v")
        model = keras.Model(inp, inp)
        ds = MultiInputDataset({"v": np.zeros(8, "float32")}, inputs="v")
        assert kseq.check(model, ds, verbose=False).structure.input_names == ["v"]

    def test_non_integral_float_into_integer_input(self):
        """Keras would cast 0.5 to 0: a cast that changes values is refused, with the count and an example."""
        inp = keras.Input((5,), name="tokens", dtype="int32")
        model = keras.Model(inp, keras.layers.Embedding(10, 2)(inp))
        tokens = np.zeros((8, 5), "float64")
        tokens[0, 1] = 0.5
        ds = MultiInputDataset({"tokens": tokens}, inputs="tokens", batch_size=8, shuffle=False)
        with pytest.raises(StructureError) as e:
            kseq.check(model, ds)
        assert str(e.value) == (
            "Batch x does not fit the model's inputs:\n"
            "  input 'tokens': expected dtype int32; Received (8, 5) float64, and Keras's cast to int32 would "
            "change its values (1 non-integral value(s), e.g. 0.5). Fix the values (np.round, or a "
            "smaller range), or declare Input(dtype='float64')."
        )

    def test_integers_out_of_range_are_refused(self):
        inp = keras.Input((2,), name="tokens", dtype="uint8")
        model = keras.Model(inp, keras.layers.Embedding(300, 2)(inp))
        ds = MultiInputDataset({"tokens": np.array([[1, 256]] * 4)}, inputs="tokens", batch_size=4, shuffle=False)
        with pytest.raises(StructureError, match=r"from 1 to 256, outside uint8.s range \[0, 255\]"):
            kseq.check(model, ds)

    def test_bool_input_takes_zeros_and_ones_only(self):
        inp = keras.Input((2,), name="mask", dtype="bool")
        model = keras.Model(inp, keras.layers.Dense(1)(keras.ops.cast(inp, "float32")))
        ok = MultiInputDataset({"mask": np.array([[0.0, 1.0]] * 4)}, inputs="mask", batch_size=4, shuffle=False)
        kseq.check(model, ok, verbose=False)  # no error
        bad = MultiInputDataset({"mask": np.array([[0, 2]] * 4)}, inputs="mask", batch_size=4, shuffle=False)
        with pytest.raises(StructureError, match="4 value\\(s\\) other than 0 and 1"):
            kseq.check(model, bad)

    def test_integral_floats_train_an_integer_input(self):
        """A float64 batch of whole numbers for an int64 Input: Keras casts it, so check accepts it and fit trains."""
        inp = keras.Input((5,), name="tokens", dtype="int64")
        model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(keras.layers.Embedding(10, 2)(inp))))
        model.compile("sgd", "mse")
        rng = np.random.default_rng(0)
        data = {"tokens": rng.integers(0, 10, (32, 5)).astype("float64"), "y": rng.random(32)}
        ds = MultiInputDataset(data, inputs="tokens", targets="y", batch_size=8, seed=0)
        assert kseq.check(model, ds, verbose=False).structure.inputs[0].dtype == "int64"
        history = model.fit(ds.for_model(model), epochs=2, verbose=0)
        assert np.isfinite(history.history["loss"]).all()

    def test_string_into_numeric_input(self):
        inp = keras.Input((1,), name="v")
        model = keras.Model(inp, keras.layers.Dense(1)(inp))
        ds = MultiInputDataset({"v": np.array([["a"]] * 4)}, inputs="v", batch_size=4, shuffle=False)
        with pytest.raises(StructureError, match=r"expected dtype float32; Received \(4, 1\) <U1\. Give the field"):
            kseq.check(model, ds)


class TestGeneratedInputNames:
    """Item 1 and 2 of issue 24: unnamed Inputs, named as model.summary() shows them and fed by position."""

    @staticmethod
    def unnamed_pair_model():
        left, right = keras.Input((3,)), keras.Input((5,))
        return keras.Model([left, right], keras.layers.Concatenate()([left, right]))

    def test_inputs_are_named_like_the_summary(self):
        model = self.unnamed_pair_model()
        names = kseq.ModelStructure.of(model).input_names
        assert names == [layer.name for layer in model.layers[:2]]
        assert all(n.startswith("input_layer") for n in names)

    def test_declared_order_feeds_generated_names_by_position(self, two_inputs):
        """inputs=["b", "a"] feeds the first unnamed Input with b: the declared order, not the alphabet."""
        left, right = keras.Input((5,)), keras.Input((3,))
        model = keras.Model([left, right], keras.layers.Concatenate()([left, right]))
        ds = MultiInputDataset(two_inputs, inputs=["b", "a"], batch_size=8, shuffle=False)
        report = kseq.check(model, ds, verbose=False)
        assert "x by position ('b' -> 'input_layer" in str(report)
        out = model.predict(ds.for_model(model), verbose=0)
        np.testing.assert_array_equal(out[:8], np.concatenate([two_inputs["b"][:8], two_inputs["a"][:8]], axis=1))

    def test_named_inputs_are_still_matched_by_name(self, two_inputs):
        ds = MultiInputDataset(two_inputs, inputs=["b", "a"], batch_size=8, shuffle=False)
        report = kseq.check(concat_model(), ds, verbose=False)
        assert "position" not in str(report)
        assert report.structure.input_keys is None

    def test_a_users_name_that_is_missing_is_not_guessed(self, two_inputs):
        left, right = keras.Input((3,), name="first"), keras.Input((5,), name="second")
        model = keras.Model([left, right], keras.layers.Concatenate()([left, right]))
        ds = MultiInputDataset(two_inputs, inputs=["a", "b"], batch_size=8, shuffle=False)
        with pytest.raises(StructureError, match="Pass inputs=\\{'first': <field>, 'second': <field>\\}"):
            kseq.check(model, ds)


def same_batch(before, after):
    """Every part of two named batches is the same type, with the same keys and equal arrays."""
    assert len(before) == len(after)
    for b, a in zip(before, after, strict=True):
        assert type(a) is type(b)
        if isinstance(b, dict):
            assert list(a) == list(b)
            for key in b:
                np.testing.assert_array_equal(a[key], b[key])
        else:
            np.testing.assert_array_equal(a, b)


def two_input_regressor(order=("a", "b"), name="regressor"):
    """A list-built model taking `order`; its output learns y from both inputs."""
    inputs = {"a": keras.Input((3,), name="a"), "b": keras.Input((5,), name="b")}
    h = keras.layers.Concatenate()([inputs[n] for n in order])
    out = keras.layers.Dense(1, name="y")(h)
    return keras.Model([inputs[n] for n in order], out, name=name)


class TestCheckIsReadOnly:
    @pytest.mark.parametrize("structure", ["list", "dict"])
    def test_batch_zero_is_the_same_after_check(self, two_inputs, structure):
        """kseq.check reads and compares only: ds[0] is the same named dict before and after."""
        ds = dataset(two_inputs, targets={"both": "y"})
        before = ds[0]
        kseq.check(concat_model(structure), ds, verbose=False)
        ds.check(concat_model(structure), verbose=False)
        after = ds[0]
        assert isinstance(after[0], dict)
        assert isinstance(after[1], dict)
        same_batch(before, after)

    def test_dict_model_needs_nothing(self, two_inputs):
        report = dataset(two_inputs).check(concat_model("dict"), verbose=False)
        assert report.adaptations == []
        assert not report.needs_adapting

    def test_report_says_a_list_model_needs_a_view(self, two_inputs, capsys):
        ds = dataset(two_inputs)
        report = ds.check(concat_model("list"))
        assert report.needs_adapting
        assert capsys.readouterr().out.strip() == (
            "kseq.check: x dict ['a', 'b'] must be passed as a tuple in the model's order (model built from list). "
            "Train on ds.for_model(model), which does this."
        )

    def test_unbuilt_model_is_refused(self, two_inputs):
        model = keras.Sequential([keras.layers.Dense(1)])
        with pytest.raises(StructureError, match="Expected a built Functional or Sequential model"):
            kseq.check(model, dataset(two_inputs, inputs="a"))

    def test_named_batches_stay_named_without_check(self, two_inputs):
        assert isinstance(dataset(two_inputs)[0][0], dict)


class TestModelView:
    def test_list_model_gets_a_tuple_in_model_order(self, two_inputs):
        ds = dataset(two_inputs, inputs=["b", "a"])
        view = ds.for_model(concat_model("list"))
        x = view[0][0]
        assert isinstance(x, tuple)
        assert [v.shape[1] for v in x] == [3, 5]
        assert isinstance(ds[0][0], dict)

    def test_dict_model_keeps_dicts(self, two_inputs):
        view = dataset(two_inputs).for_model(concat_model("dict"))
        assert isinstance(view[0][0], dict)
        assert view.report.adaptations == []

    def test_sequential_model_gets_single_arrays(self, two_inputs):
        model = keras.Sequential([keras.Input((3,), name="a"), keras.layers.Dense(1, name="out")])
        x, y = dataset(two_inputs, inputs="a", targets={"out": "y"}).for_model(model)[0]
        assert x.shape == (8, 3)
        assert y.shape == (8,)

    def test_a_mismatch_raises_when_the_view_is_made(self, two_inputs):
        with pytest.raises(StructureError, match=r"Model input\(s\) \['b'\] have no field"):
            dataset(two_inputs, inputs="a").for_model(concat_model())

    def test_trains_a_list_built_two_input_model(self, two_inputs):
        """model.fit on the view: a tuple in the model's (b, a) order, a single target, and the loss falls."""
        model = two_input_regressor(order=("b", "a"))
        model.compile(keras.optimizers.Adam(0.05), "mse")
        ds = MultiInputDataset(two_inputs, inputs=["a", "b"], targets={"y": "y"}, batch_size=16, seed=0)
        view = ds.for_model(model)
        hist = model.fit(view, epochs=30, shuffle=False, verbose=0)  # kseq shuffles samples itself
        assert hist.history["loss"][-1] < 0.01 * hist.history["loss"][0]
        assert ds.epoch == view.epoch >= 30
        x, y = view[0]  # after fit: a read before it would make JAX's build pass look like a partial epoch
        assert [v.shape[1] for v in x] == [5, 3]
        assert y.shape == (16,)

    def test_delegates_to_the_dataset(self, two_inputs):
        ds = MultiInputDataset(two_inputs, inputs=["a", "b"], batch_size=8, seed=0, workers=2)
        with ds.for_model(concat_model()) as view:
            assert len(view) == len(ds) == 12
            assert (view.workers, view.use_multiprocessing) == (1, False)  # kseq's pool, not Keras's
            assert (view.batch_size, view.seed) == (8, 0)
            view.on_epoch_end()
            assert ds.epoch == view.epoch == 1
            named = ds.get_batch(0)
            np.testing.assert_array_equal(view[0][0][1], named[0]["b"])
            same_batch(view.get_batch(0), named)

    def test_refuses_pool_changes(self, two_inputs):
        view = dataset(two_inputs).for_model(concat_model())
        with pytest.raises(StructureError, match="Pass workers= to the dataset's constructor"):
            view.workers = 4


class TestViewGuard:
    """A view's tuples fit one routing: wherever kseq sees another model next to it, it refuses."""

    def view_and_swapped(self, two_inputs):
        view = dataset(two_inputs, targets={"y": "y"}).for_model(two_input_regressor(name="ab"))
        return view, two_input_regressor(order=("b", "a"), name="ba")

    def test_check_with_a_model_in_another_order(self, two_inputs):
        view, swapped = self.view_and_swapped(two_inputs)
        with pytest.raises(StructureError) as e:
            kseq.check(swapped, view)
        assert str(e.value) == (
            "this ModelView was made for model 'ab' (inputs ['a', 'b'] as a list, outputs ['y'] as a single "
            "tensor); received model 'ba' (inputs ['b', 'a'] as a list, outputs ['y'] as a single tensor). "
            "Its batches are arranged for the first model, so the second would get arrays in the wrong places "
            "(or fail on shapes). Call ds.for_model(model) on the named dataset (view.dataset, a "
            "MultiInputDataset) for model 'ba'."
        )

    def test_for_model_on_a_view(self, two_inputs):
        view, swapped = self.view_and_swapped(two_inputs)
        with pytest.raises(StructureError, match="this ModelView was made for model 'ab'"):
            view.for_model(swapped)
        again = view.for_model(two_input_regressor(name="ab2"))  # same routing: fine
        assert again.dataset is view.dataset

    def test_fit_generator(self, two_inputs):
        view, swapped = self.view_and_swapped(two_inputs)
        swapped.compile("sgd", "mse")
        with pytest.raises(StructureError, match="received model 'ba'"):
            kseq.legacy.fit_generator(swapped, view, epochs=1, verbose=0)

    def test_the_named_dataset_serves_both_models(self, two_inputs):
        view, swapped = self.view_and_swapped(two_inputs)
        other = view.dataset.for_model(swapped)
        x_ab, x_ba = view[0][0], other[0][0]
        np.testing.assert_array_equal(x_ab[0], x_ba[1])
        np.testing.assert_array_equal(x_ab[1], x_ba[0])
        assert kseq.check(swapped, other, verbose=False).remedy == "This ModelView does this."


class TestSetStructure:
    def test_warns_and_names_for_model(self, two_inputs):
        ds = dataset(two_inputs)
        with pytest.warns(DeprecationWarning, match=r"set_structure\(\) is deprecated.*ds.for_model\(model\)"):
            ds.set_structure(kseq.ModelStructure.of(concat_model("list")))
        assert isinstance(ds[0][0], tuple)  # still works, for 0.1.0 code
        with pytest.warns(DeprecationWarning, match="set_structure"):
            ds.set_structure(None)
        assert isinstance(ds[0][0], dict)


class TestOneRoute:
    """Every kseq PyDataset feeds Keras ``as_fed(ds.model_structure, ds.get_batch(i))`` (kseq/structure.py)."""

    @staticmethod
    def feeders(two_inputs):
        model = concat_model("list")
        deprecated = dataset(two_inputs)
        with pytest.warns(DeprecationWarning, match="set_structure"):
            deprecated.set_structure(kseq.ModelStructure.of(model))
        sequence = kseq.legacy.SequenceAdapter(dataset(two_inputs), model=model, x_only=True)
        return {"named": dataset(two_inputs), "view": dataset(two_inputs).for_model(model),
                "set_structure": deprecated, "legacy sequence": sequence}

    def test_each_feeder_serves_its_named_batch_in_its_model_structure(self, two_inputs):
        for name, ds in self.feeders(two_inputs).items():
            fed = kseq.structure.as_fed(ds.model_structure, ds.get_batch(1))
            got = ds[1]
            assert (ds.model_structure is None) == (name == "named"), name
            assert isinstance(got[0], dict if name == "named" else tuple), name
            for a, b in zip(keras.tree.flatten(got), keras.tree.flatten(fed), strict=True):
                np.testing.assert_array_equal(a, b)


class TestPlainPyDataset:
    class Pairs(keras.utils.PyDataset):
        def __init__(self, arrays):
            super().__init__()
            self.arrays = arrays

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return self.arrays, np.zeros(4, "float32")

    def test_a_tuple_in_model_order_is_accepted(self):
        ds = self.Pairs((np.zeros((4, 3), "float32"), np.zeros((4, 5), "float32")))
        report = kseq.check(concat_model(), ds, verbose=False)
        assert report.structure.input_names == ["a", "b"]

    def test_a_tuple_in_the_wrong_order_fails_on_shapes(self):
        ds = self.Pairs((np.zeros((4, 5), "float32"), np.zeros((4, 3), "float32")))
        with pytest.raises(StructureError, match=r"input 'a': expected shape \(None, 3\); Received \(4, 5\)"):
            kseq.check(concat_model(), ds)

    def test_a_tuple_of_the_wrong_length(self):
        ds = self.Pairs((np.zeros((4, 3), "float32"),) * 3)
        with pytest.raises(StructureError, match=r"The model has 2 inputs \['a', 'b'\], but the batch gives 3 arrays"):
            kseq.check(concat_model(), ds)


@pytest.mark.parametrize("call", ["check", "for_model"])
class TestCheckLeavesTheDatasetWhereItWas:
    """check() and for_model() read batch 0 by name; the dataset is where it was, for Keras and for get_state()."""

    @staticmethod
    def run(call, ds):
        if call == "check":
            kseq.check(concat_model(), ds, verbose=False)
        else:
            ds.for_model(concat_model())

    def test_a_fresh_dataset_stays_at_its_start(self, two_inputs, call):
        ds = dataset(two_inputs)
        before = ds.get_state()
        self.run(call, ds)
        assert ds.get_state() == before
        assert (ds.epoch, ds.position) == (0, 0)

    def test_a_dataset_mid_epoch_keeps_its_position_and_the_batches_it_served(self, two_inputs, call):
        ds = dataset(two_inputs)
        ds[2], ds[3]  # served, as fit would
        before = ds.get_state()
        self.run(call, ds)
        assert ds.get_state() == before
        assert (ds.epoch, ds.position) == (0, 4)
        assert ds.tracker.served == {2, 3}  # the pass counts 2 and 3 only: check served nothing

    def test_the_worker_pool_is_neither_started_nor_changed(self, two_inputs, call):
        ds = dataset(two_inputs, workers=2, use_multiprocessing=True, start_method="fork")
        with ds:
            others = {p.pid for p in multiprocessing.active_children()}
            self.run(call, ds)
            assert {p.pid for p in multiprocessing.active_children()} == others  # no pool started
            first = ds[0]
            workers = {p.pid for p in multiprocessing.active_children()} - others
            assert len(workers) == 2
            self.run(call, ds)
            assert {p.pid for p in multiprocessing.active_children()} - others == workers
            assert ds.position == 1
            for got, want in zip((first, ds[1]), (ds.get_batch(0), ds.get_batch(1)), strict=True):
                np.testing.assert_array_equal(got[0]["a"], want[0]["a"])  # the pool serves in order still
