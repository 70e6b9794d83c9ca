"""What kseq.keras_compat relies on, measured on the installed Keras (3.15.1, and the 3.16 nightly leg).

Each test states a behaviour of Keras itself: when a Keras release changes one, its test fails here
first, naming the piece of kseq.keras_compat to revisit.
"""

import keras
import numpy as np
import pytest

from kseq import keras_compat
from kseq.position import PEEK_BATCHES

pytestmark = pytest.mark.portable


class Log(keras.utils.PyDataset):
    """A plain Keras PyDataset that logs what Keras asks of it."""

    def __init__(self, batches=5):
        super().__init__()
        self.batches, self.log = batches, []

    def __len__(self):
        return self.batches

    def __getitem__(self, index):
        self.log.append(index)
        return np.ones((2, 3), "float32"), np.ones((2, 1), "float32")

    def on_epoch_begin(self):
        self.log.append("begin")

    def on_epoch_end(self):
        self.log.append("end")


def tiny_model():
    x = keras.Input((3,))
    model = keras.Model(x, keras.layers.Dense(1)(x))
    model.compile("sgd", "mse")
    return model


def test_keras_peeks_at_most_peek_batches_and_ends_an_epoch_before_training():
    """NOTE [ Keras's peeks ]: before epoch 0, Keras reads 1 (JAX, torch) or 2 (TF) batches, then ends an epoch."""
    ds = Log()
    tiny_model().fit(ds, epochs=1, shuffle=False, verbose=0)
    first_end = ds.log.index("end")
    peek = [entry for entry in ds.log[:first_end] if entry != "begin"]
    assert 1 <= len(peek) <= PEEK_BATCHES
    assert peek == list(range(len(peek)))
    assert ds.log[first_end + 1 :] == ["begin", 0, 1, 2, 3, 4, "end"]


def test_set_initial_epoch_makes_fit_start_there_from_on_train_begin():
    """keras_compat.set_initial_epoch: fit reads model._initial_epoch after on_train_begin, as Keras's own
    BackupAndRestore relies on."""

    class Start(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            keras_compat.set_initial_epoch(self.model, 2)

        def on_train_end(self, logs=None):
            keras_compat.set_initial_epoch(self.model, None)

    history = tiny_model().fit(Log(), epochs=4, shuffle=False, verbose=0, callbacks=[Start()])
    assert history.epoch == [2, 3]


def test_flatten_layers_reaches_layers_inside_wrappers_and_nested_models():
    inner = keras.Sequential([keras.Input((4, 2)), keras.layers.Bidirectional(keras.layers.LSTM(3))], name="inner")
    x = keras.Input((4, 2))
    model = keras.Model(x, keras.layers.Dense(1)(inner(x)))
    names = {type(layer).__name__ for layer in keras_compat.flatten_layers(model)}
    assert {"Sequential", "Bidirectional", "LSTM", "Dense"} <= names


def test_a_variable_listed_for_jax_is_among_the_layer_s_variables_once():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    extra = keras.Variable(np.zeros(2, "float32"), trainable=False)
    assert keras_compat.list_variables_for_jax(layer, [extra]) == 1
    assert keras_compat.list_variables_for_jax(layer, [extra]) == 0
    assert sum(v is extra for v in layer.variables) == 1


def test_keras_3_16_shards_a_pydataset_itself_and_3_15_refuses_it():
    """NOTE [ Keras shards a PyDataset itself from 3.16 ]: what PyDatasetAdapter does under a distribution whose
    auto_shard_dataset is true, read from the adapter's own attributes (one process here: one shard)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(Log())
    shards = getattr(adapter, "_num_data_shards", None)
    if keras_compat.keras_version() >= (3, 16):
        assert shards == 1  # the attribute PR #23044 added: the adapter shards by process
    else:
        assert shards is None  # 3.15 never shards a PyDataset (it refuses one under multi-process auto-sharding)
