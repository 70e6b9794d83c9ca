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
            "Model input(s) ['b'] have no field in this dataset. Expected inputs ['a', 'b']. "
            "Received inputs ['a', 'bee']. Pass inputs={'b': <field>, ...}."
        )

    def test_extra_input_key_is_refused(self, two_inputs):
        """keras#23258: an extra key sorting between real keys is routed silently; kseq refuses it."""
        ds = dataset(two_inputs, inputs={"a": "a", "ab": "b", "b": "b"})
        with pytest.raises(StructureError) as e:
            kseq.check(concat_model("dict"), ds)
        assert str(e.value) == (
            "The batch has inputs ['ab'] that the model does not take. Expected exactly ['a', 'b']. "
            "Extra keys are not harmless: Keras can route the wrong array to an input (keras#23258). "
            "Remove ['ab'] from inputs=."
        )

    def test_missing_target(self, two_inputs):
        a = keras.Input((3,), name="a")
        model = keras.Model(a, keras.layers.Dense(1, name="score")(a))
        ds = dataset(two_inputs, inputs="a", targets={"label": "label"})
        with pytest.raises(StructureError) as e:
            kseq.check(model, ds)
        assert str(e.value) == (
            "Model output(s) ['score'] have no field in this dataset. Expected outputs ['score']. "
            "Received targets ['label']. Pass targets={'score': <field>, ...}."
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

    def test_float_into_integer_input(self):
        inp = keras.Input((5,), name="tokens", dtype="int32")
        model = keras.Model(inp, keras.layers.Embedding(10, 2)(inp))
        ds = MultiInputDataset({"tokens": np.zeros((8, 5), "float64")}, inputs="tokens")
        with pytest.raises(StructureError) as e:
            kseq.check(model, ds)
        assert str(e.value) == (
            "Batch x does not fit the model's inputs:\n"
            "  input 'tokens': expected dtype int32; Received (8, 5) float64. "
            "Cast the field (e.g. .astype('int32')) or declare Input(dtype='float64')."
        )


class TestAdaptation:
    def test_dict_model_keeps_dicts(self, two_inputs):
        ds = dataset(two_inputs)
        report = ds.check(concat_model("dict"), verbose=False)
        assert report.adaptations == []
        assert isinstance(ds[0][0], dict)

    def test_list_model_gets_a_tuple_in_model_order(self, two_inputs):
        ds = dataset(two_inputs, inputs=["b", "a"])
        ds.check(concat_model("list"), verbose=False)
        x = ds[0][0]
        assert isinstance(x, tuple)
        assert [v.shape[1] for v in x] == [3, 5]

    def test_check_prints_what_it_adapted(self, two_inputs, capsys):
        ds = dataset(two_inputs)
        ds.check(concat_model("list"))
        assert capsys.readouterr().out.strip() == (
            "kseq.check: x dict ['a', 'b'] is passed as a tuple in the model's order (model built from list)."
        )

    def test_sequential_model(self, two_inputs):
        model = keras.Sequential([keras.Input((3,), name="a"), keras.layers.Dense(1, name="out")])
        ds = dataset(two_inputs, inputs="a", targets={"out": "y"})
        ds.check(model, verbose=False)
        x, y = ds[0]
        assert x.shape == (8, 3)
        assert y.shape == (8,)

    def test_unbuilt_model_is_refused(self, two_inputs):
        model = keras.Sequential([keras.layers.Dense(1)])
        with pytest.raises(StructureError, match="Expected a built Functional or Sequential model"):
            kseq.check(model, dataset(two_inputs, inputs="a"))

    def test_named_batches_stay_named_without_check(self, two_inputs):
        assert isinstance(dataset(two_inputs)[0][0], dict)


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
