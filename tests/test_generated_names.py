"""Issue 24, items 1 and 2 for the caption pair: unnamed Inputs fed by position; errors name output_name=."""

import keras
import numpy as np
import pytest

import kseq
from kseq import StructureError

pytestmark = pytest.mark.portable


def captions():
    kinds = np.arange(32) % 4
    caps = [[[1, *[4 + k] * (k + 1), 2]] for k in kinds]
    return np.eye(4, dtype="float32")[kinds], caps


def unnamed_captioner(output_name="decoder_output"):
    f, t = keras.Input((4,)), keras.Input((None,), dtype="int32")  # unnamed: input_layer_N
    state = keras.layers.Dense(8, activation="tanh")(f)
    h = keras.layers.GRU(8, return_sequences=True)(keras.layers.Embedding(10, 4)(t), initial_state=state)
    model = keras.Model([f, t], keras.layers.Dense(10, name=output_name)(h))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_the_caption_pair_feeds_unnamed_inputs_in_its_order_and_trains():
    features, caps = captions()
    ds = kseq.CaptionDataset(features, caps, batch_size=8, seed=0)
    model = unnamed_captioner()
    view = ds.for_model(model)
    assert "x by position ('transfer_values_input' -> 'input_layer" in str(view.report)
    (first, second), _, _ = view[0]
    x, _, _ = ds.get_batch(0)
    assert np.array_equal(first, x["transfer_values_input"])
    assert np.array_equal(second, x["decoder_input"])
    history = model.fit(view, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_an_output_name_that_differs_suggests_output_name():
    features, caps = captions()
    ds = kseq.CaptionDataset(features, caps, batch_size=8, seed=0)
    with pytest.raises(StructureError, match=r"Pass output_name='logits' to CaptionDataset\."):
        ds.check(unnamed_captioner(output_name="logits"))
