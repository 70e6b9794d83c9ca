"""kseq.legacy: Keras 2 generator code (fit_generator, Sequence, yields) running on Keras 3."""

import os
import pickle
import random
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import concat_model
from packaging.version import Version

from kseq import MultiInputDataset
from kseq.callbacks import stateful_layers, track_states
from kseq.errors import StructureError
from kseq.legacy import (
    BatchNormaliser,
    GeneratorDataset,
    SequenceAdapter,
    evaluate_generator,
    fit_generator,
    predict_generator,
)
from kseq.legacy.generator import EpochMarker
from kseq.legacy.stream import Stream
from kseq.structure import ModelStructure
from kseq.torch_states import use_generic_rnn_path

# -- models and data -----------------------------------------------------------------


def two_input_model(outputs=("score",), *, zeros=False, lr=0.01):
    """Inputs a (3,) and b (5,), so a swapped input fails; heads 'score' (1) and optionally 'aux' (2)."""
    a = keras.Input((3,), name="a")
    b = keras.Input((5,), name="b")
    h = keras.layers.Concatenate()([a, keras.layers.Dense(4, name="mix")(b)])
    init = "zeros" if zeros else "glorot_uniform"
    widths = {"score": 1, "aux": 2, "decoder_output": 1}
    heads = [keras.layers.Dense(widths[n], name=n, kernel_initializer=init)(h) for n in outputs]
    model = keras.Model([a, b], heads if len(heads) > 1 else heads[0])
    model.compile(keras.optimizers.SGD(lr), ["mse"] * len(heads) if len(heads) > 1 else "mse")
    return model


def arrays(seed, n=8):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 3)).astype("float32")
    b = rng.normal(size=(n, 5)).astype("float32")
    return a, b, (a.sum(axis=1, keepdims=True) - b[:, :1]).astype("float32")


def forever(make_batch):
    """A Keras 2 style generator: `while True`, counting its yields in .count."""

    def generator():
        step = 0
        while True:
            counter.count += 1
            yield make_batch(step)
            step += 1

    counter = type("Counter", (), {"count": 0})()
    return generator(), counter


def finite(n, make_batch):
    def generator():
        for step in range(n):
            yield make_batch(step)

    return generator


# -- reading yields --------------------------------------------------------------------


@pytest.mark.portable
class TestBatchNormaliser:
    def structure(self, outputs=("score", "aux")):
        return ModelStructure.of(two_input_model(outputs))

    def test_list_x_follows_model_input_order(self):
        a, b, y = arrays(0)
        x, _ = BatchNormaliser(self.structure(("score",)))(([a, b], y))
        assert [v.shape for v in x] == [(8, 3), (8, 5)]

    def test_dict_targets_are_matched_by_output_name(self):
        a, b, y = arrays(0)
        aux = np.ones((8, 2), "float32")
        _, targets = BatchNormaliser(self.structure())(({"b": b, "a": a}, {"aux": aux, "score": y}))
        assert targets[0] is y
        assert targets[1] is aux

    def test_list_of_wrong_length_names_inputs_and_step(self):
        a, b, y = arrays(0)
        with pytest.raises(StructureError) as e:
            BatchNormaliser(self.structure())(([a, b, b], y), where="epoch 1, step 3 of 5")
        assert str(e.value).startswith("At epoch 1, step 3 of 5: x is a list of 3 arrays")
        assert "the model has 2 inputs ['a', 'b']" in str(e.value)

    def test_missing_x_key_says_which(self):
        a, b, y = arrays(0)
        with pytest.raises(StructureError, match=r"no key for model input\(s\) \['b'\]"):
            BatchNormaliser(self.structure(("score",)))(({"a": a, "bee": b}, y))

    def test_extra_x_key_is_dropped_with_one_warning(self):
        """Keras 2 ignored keys no input takes; they are dropped before Keras, which could misroute them
        (keras#23258: 'ab' sorts between 'a' and 'b'), and named in one warning however many batches."""
        a, b, y = arrays(0)
        norm = BatchNormaliser(self.structure(("score",)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            xs = [norm(({"a": a, "ab": np.zeros((8, 7)), "b": b}, y))[0] for _ in range(3)]
        assert len(caught) == 1
        assert str(caught[0].message).startswith("At this batch: dropped dict key(s) ['ab'] that no input")
        np.testing.assert_array_equal(xs[2][1], b)

    def test_swapped_inputs_fail_on_shape(self):
        a, b, y = arrays(0)
        with pytest.raises(StructureError, match="input 'a': expected shape"):
            BatchNormaliser(self.structure(("score",)))(({"a": b, "b": a}, y))

    def test_lone_dict_is_refused_with_keras2_message(self):
        a, b, _ = arrays(0)
        with pytest.raises(StructureError, match=r"Expected a tuple \(x, y\) or \(x, y, sample_weight\)"):
            BatchNormaliser(self.structure())({"a": a, "b": b})

    def test_list_yield_of_two_is_x_and_y(self):
        a, b, y = arrays(0)
        x, target = BatchNormaliser(self.structure(("score",)))([[a, b], y])
        assert x[1] is b
        assert target is y

    def test_x_only_reads_a_list_as_inputs(self):
        a, b, y = arrays(0)
        norm = BatchNormaliser(self.structure(("score",)), x_only=True)
        assert [v.shape for v in norm([a, b])[0]] == [(8, 3), (8, 5)]
        assert len(norm(([a, b], y))) == 1

    def test_sample_weight_list_fills_none_with_ones(self):
        a, b, y = arrays(0)
        _, _, weights = BatchNormaliser(self.structure())(([a, b], [y, np.ones((8, 2))], [np.zeros(8), None]))
        assert weights[0].tolist() == [0.0] * 8
        assert weights[1].tolist() == [1.0] * 8

    def test_class_weight_multiplies_sample_weight(self):
        a, b, _ = arrays(0)
        labels = np.array([1, 1, 0, 0, 1, 0, 0, 0])
        norm = BatchNormaliser(self.structure(("score",)), class_weight={0: 1.0, 1: 3.0})
        _, _, w = norm(([a, b], labels, np.full(8, 2.0)))
        assert w.tolist() == [6.0, 6.0, 2.0, 2.0, 6.0, 2.0, 2.0, 2.0]

    def test_flat_class_weight_for_two_outputs_is_refused(self):
        with pytest.raises(StructureError, match=r"must be given per output: \{output_name"):
            BatchNormaliser(self.structure(), class_weight={0: 1.0, 1: 2.0})

    def test_class_missing_from_class_weight_names_the_step(self):
        a, b, _ = arrays(0)
        norm = BatchNormaliser(self.structure(("score",)), class_weight={0: 1.0})
        with pytest.raises(StructureError, match=r"At step 7: class_weight has no weight for class\(es\) \[2\]"):
            norm(([a, b], np.full(8, 2)), where="step 7")


# -- the stream behind GeneratorDataset ------------------------------------------------


@pytest.mark.portable
class TestStream:
    def test_signature_probe_loses_no_yield(self):
        """TF's probe asks for 0 and 1 outside the epoch; the epoch then gets every yield once, in order."""
        s = Stream(iter(range(100)), steps=4)
        assert [s.take(0)[1], s.take(1)[1]] == [0, 1]
        s.end()  # Keras's reset before the first epoch
        s.begin()
        assert [s.take(i)[1] for i in range(4)] == [0, 1, 2, 3]
        s.end()
        s.begin()
        assert [s.take(i)[1] for i in range(4)] == [4, 5, 6, 7]

    def test_build_pass_gives_its_batch_back(self):
        """JAX opens a window, takes one batch to build the model, and closes it."""
        s = Stream(iter(range(100)), steps=4)
        s.begin()
        assert s.take(2)[1] == 0
        s.end()
        s.begin()
        assert [s.take(i)[1] for i in range(4)] == [0, 1, 2, 3]
        s.end()
        assert s.epoch == 1

    def test_shuffled_requests_take_the_next_yield(self):
        s = Stream(iter(range(100)), steps=6, slack=2)
        s.begin()
        assert [s.take(i)[1] for i in (5, 1, 4, 0, 3, 2)] == [0, 1, 2, 3, 4, 5]

    def test_out_of_turn_threads_get_their_own_yield(self):
        s = Stream(iter(range(100)), steps=6, slack=2)
        s.begin()
        assert [(i, s.take(i)[1]) for i in (1, 0, 3, 2, 4, 5)] == [(1, 1), (0, 0), (3, 3), (2, 2), (4, 4), (5, 5)]

    def test_early_thread_requests_count_as_served(self):
        """A thread pool that starts before on_epoch_begin may fetch a whole epoch outside the window."""
        s = Stream(iter(range(100)), steps=3, replay=0, slack=2)
        assert [s.take(i)[1] for i in range(3)] == [0, 1, 2]
        s.begin()
        s.end()
        s.begin()
        assert [s.take(i)[1] for i in range(3)] == [3, 4, 5]

    def test_marked_windows_alone_are_epochs(self):
        """With marks on, an unmarked window of a whole epoch (JAX's build pass at steps=1) gives its yield back."""
        s = Stream(iter(range(100)), steps=1)
        s.marks = True
        s.begin()
        assert s.take(0)[1] == 0
        s.end()
        assert s.epoch == 0
        s.mark()
        s.begin()
        assert s.take(0)[1] == 0
        s.end()
        assert s.epoch == 1

    def test_factory_restarts_every_epoch(self):
        s = Stream(lambda: iter("abcdef"), steps=2)
        epochs = []
        for _ in range(3):
            s.begin()
            epochs.append("".join(s.take(i)[1] for i in range(2)))
            s.end()
        assert epochs == ["ab", "ab", "ab"]

    def test_plain_generator_carries_on_across_epochs(self):
        s = Stream(iter("abcdef"), steps=2)
        epochs = []
        for _ in range(3):
            s.begin()
            epochs.append("".join(s.take(i)[1] for i in range(2)))
            s.end()
        assert epochs == ["ab", "cd", "ef"]

    def test_threads_read_an_unsafe_generator_once_each(self):
        def slow():
            for i in range(200):
                time.sleep(0.0002)  # without the lock: "ValueError: generator already executing"
                yield i

        s = Stream(slow(), steps=200, replay=0, slack=8)
        order = list(range(200))
        random.Random(0).shuffle(order)
        s.begin()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: s.take(i)[1], order))
        assert sorted(got) == list(range(200))


# -- GeneratorDataset ------------------------------------------------------------------


@pytest.mark.portable
class TestGeneratorDataset:
    def test_fit_reads_each_yield_once(self):
        """Keras's signature probe (TF) and build pass (JAX) cost no yield: epochs x steps reads."""
        model = two_input_model()
        gen, counter = forever(lambda s: ({"b": arrays(s)[1], "a": arrays(s)[0]}, arrays(s)[2]))
        ds = GeneratorDataset(gen, 4, model=model)
        model.fit(ds, epochs=3, verbose=0)
        assert counter.count == 12
        assert ds.epoch == 3

    def test_marker_counts_only_the_epochs_keras_starts(self):
        """EpochMarker around model.fit: a generator of exactly epochs batches is enough at steps_per_epoch=1."""
        model = two_input_model()
        ds = GeneratorDataset(finite(3, lambda s: ([*arrays(s)[:2]], arrays(s)[2]))(), 1, model=model)
        with EpochMarker(ds, "train") as marker:
            model.fit(ds, epochs=3, shuffle=False, callbacks=[marker], verbose=0)
        assert ds.epoch == 3

    def test_predict_keeps_generator_order_with_threads(self):
        def rows():
            for i in range(24):
                time.sleep(0.001)
                yield [np.full((2, 3), i, "float32"), np.full((2, 5), -i, "float32")]

        pred = predict_generator(concat_model(), rows(), steps=24, workers=4)
        assert pred[::2, 0].tolist() == list(range(24))
        assert pred[::2, 3].tolist() == [-i for i in range(24)]

    def test_plain_generator_ending_early_names_epoch_and_step(self):
        model = two_input_model()
        gen = finite(6, lambda s: ([arrays(s)[0], arrays(s)[1]], arrays(s)[2]))()
        with pytest.raises(StructureError) as e:
            fit_generator(model, gen, steps_per_epoch=4, epochs=2, verbose=0)
        assert str(e.value).startswith("The generator ended at epoch 2, step 3 of 4, after 6 batches in all.")
        assert "`while True:`" in str(e.value)

    def test_factory_ending_early_says_how_many_it_gave(self):
        model = two_input_model()
        with pytest.raises(StructureError, match=r"epoch 1, step 4 of 4: .* yielded only 3 batches.*to 3"):
            fit_generator(model, finite(3, lambda s: ([*arrays(s)[:2]], arrays(s)[2])), steps_per_epoch=4, verbose=0)

    def test_check_names_list_yields_before_comparing(self):
        a, b, y = arrays(0)
        ds = GeneratorDataset(lambda: iter([([a, b], y)] * 3), 3)
        report = ds.check(two_input_model(), verbose=False)
        assert report.structure.input_names == ["a", "b"]
        assert isinstance(ds.get_batch(0)[0], list)  # check only reads: the yield is not adapted
        assert "Pass model= to GeneratorDataset(...)" in str(report)

    def test_check_refuses_a_model_in_another_order(self):
        """Built for model (a, b), the batches are tuples in that order: a model taking (b, a) is refused."""
        a, b, y = arrays(0)
        ds = GeneratorDataset(lambda: iter([([a, b], y)] * 3), 3, model=two_input_model())
        ia, ib = keras.Input((3,), name="a"), keras.Input((5,), name="b")
        swapped = keras.Model([ib, ia], keras.layers.Dense(1, name="score")(keras.layers.Concatenate()([ib, ia])))
        with pytest.raises(StructureError, match=r"this GeneratorDataset was made for model .*inputs \['a', 'b'\]"):
            ds.check(swapped)

    def test_multiprocessing_is_refused(self):
        with pytest.raises(StructureError, match="cannot be shared with worker processes"):
            GeneratorDataset(iter([]), 3, use_multiprocessing=True)

    def test_refuses_to_pickle(self):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(GeneratorDataset(iter([]), 3))

    @pytest.mark.parametrize("steps", [0, 2.5, "3", None])
    def test_bad_steps(self, steps):
        with pytest.raises(StructureError, match=r"steps_per_epoch must be a whole number >= 1\. Received"):
            GeneratorDataset(iter([]), steps)

    def test_float_steps_from_ceil_are_accepted(self):
        assert len(GeneratorDataset(iter([]), np.ceil(10 / 4))) == 3


# -- the patterns from Keras 2 tutorials, through a real fit --------------------------


@pytest.mark.portable
class TestFitGenerator:
    def test_dict_yield_multi_input_trains(self):
        model = two_input_model(lr=0.05)
        gen, _ = forever(lambda s: ({"b": arrays(s % 4)[1], "a": arrays(s % 4)[0]}, {"score": arrays(s % 4)[2]}))
        hist = fit_generator(model, gen, steps_per_epoch=4, epochs=6, verbose=0)
        assert hist.history["loss"][-1] < 0.7 * hist.history["loss"][0]

    def test_list_yield_multi_input_trains(self):
        model = two_input_model(lr=0.05)
        gen, _ = forever(lambda s: ([arrays(s % 4)[0], arrays(s % 4)[1]], arrays(s % 4)[2]))
        hist = fit_generator(model, gen, steps_per_epoch=4, epochs=6, verbose=0)
        assert hist.history["loss"][-1] < 0.7 * hist.history["loss"][0]

    @pytest.mark.parametrize("outputs", [("decoder_output",), ("decoder_output", "aux")])
    def test_dict_targets_reach_a_list_built_model_by_name(self, outputs):
        """Targets by output layer name, as Keras 2 matched them; losses show which target met which output."""
        model = two_input_model(outputs, zeros=True, lr=0.0)
        a, b, _ = arrays(0)
        y = {"aux": np.full((8, 2), 2.0, "float32"), "decoder_output": np.ones((8, 1), "float32")}
        y = {name: y[name] for name in sorted(outputs)}
        gen, _ = forever(lambda s: ({"a": a, "b": b}, y))
        hist = fit_generator(model, gen, steps_per_epoch=2, verbose=0)
        assert hist.history["loss"] == [sum({"aux": 4.0, "decoder_output": 1.0}[n] for n in outputs)]
        if len(outputs) == 2:
            assert hist.history["decoder_output_loss"] == [1.0]

    def test_one_step_per_epoch_reads_exactly_steps_times_epochs(self):
        """steps_per_epoch=1: Keras's build pass (JAX) and signature probe (TF) take no yield of their own."""
        seen = []

        def batch(step):
            seen.append(step)
            a, b, y = arrays(step)
            return [a, b], y

        hist = fit_generator(two_input_model(), finite(3, batch)(), steps_per_epoch=1, epochs=3, verbose=0,
                             validation_data=finite(3, batch)(), validation_steps=1)
        assert len(hist.history["val_loss"]) == 3
        assert seen == [0, 0, 1, 1, 2, 2]  # train, then validation, each epoch

    def test_one_step_evaluate_and_predict_read_the_one_yield(self):
        """evaluate (JAX builds its metrics on a batch first) and predict at steps=1 need one yield, not two."""
        a, b, _ = arrays(0)
        model = two_input_model(zeros=True)
        assert float(evaluate_generator(model, iter([([a, b], np.ones((8, 1)))]), steps=1)) == 1.0
        assert predict_generator(model, iter([[a, b]]), steps=1).shape == (8, 1)

    def test_three_tuples_keep_sample_weights(self):
        model = two_input_model(zeros=True, lr=0.0)
        a, b, _ = arrays(0)
        weights = np.array([3.0, 3.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], "float32")
        gen, _ = forever(lambda s: ([a, b], np.ones((8, 1), "float32"), weights))
        hist = fit_generator(model, gen, steps_per_epoch=2, verbose=0)
        assert hist.history["loss"] == [1.0]  # sum(w * 1) / 8

    def test_class_weight_is_applied_per_batch(self):
        model = two_input_model(zeros=True, lr=0.0)
        a, b, _ = arrays(0)
        labels = np.array([1, 1, 0, 0, 0, 0, 0, 0], "float32")
        gen, _ = forever(lambda s: ([a, b], labels))
        hist = fit_generator(model, gen, steps_per_epoch=2, class_weight={0: 1.0, 1: 3.0}, verbose=0)
        assert hist.history["loss"] == [0.75]  # (3 + 3) / 8

    def test_validation_generator_matches_evaluate_generator(self):
        model = two_input_model()
        train, _ = forever(lambda s: ([*arrays(s)[:2]], arrays(s)[2]))
        val = finite(2, lambda s: ([*arrays(100 + s)[:2]], arrays(100 + s)[2]))
        hist = fit_generator(model, train, steps_per_epoch=3, epochs=2, validation_data=val, validation_steps=2,
                             verbose=0)
        assert len(hist.history["val_loss"]) == 2
        assert evaluate_generator(model, val, steps=2) == pytest.approx(hist.history["val_loss"][-1], rel=1e-5)

    def test_validation_arrays_as_list_inputs_and_dict_targets(self):
        model = two_input_model()
        a, b, y = arrays(7, n=20)
        train, _ = forever(lambda s: ([*arrays(s)[:2]], arrays(s)[2]))
        hist = fit_generator(model, train, steps_per_epoch=3, epochs=2, validation_data=([a, b], {"score": y}),
                             validation_freq=2, verbose=0)
        assert len(hist.history["val_loss"]) == 1
        assert model.evaluate([a, b], y, verbose=0) == pytest.approx(hist.history["val_loss"][0], rel=1e-5)

    def test_stateful_lstm_trains_in_generator_order(self):
        """Same weights as train_on_batch over the batches in order: none skipped, none reordered."""
        series = np.sin(np.arange(4 * 4 * 6) / 3.0).astype("float32").reshape(4, 4 * 6)

        def make():
            inp = keras.Input((6, 1), batch_size=4)
            out = keras.layers.Dense(1)(keras.layers.LSTM(3, stateful=True)(inp))
            model = keras.Model(inp, out)
            model.compile(keras.optimizers.SGD(0.1), "mse")
            return model

        def batch(step):
            i = step % 4
            return series[:, i * 6 : (i + 1) * 6, None], series[:, (i + 1) * 6 - 1, None] * 0.5

        model, expected = make(), make()
        expected.set_weights(model.get_weights())
        track_states(expected)  # fit_generator does this to `model`: state carries on JAX too
        use_generic_rnn_path(stateful_layers(expected))  # and this: the LSTM trains on PyTorch with Keras 3.15
        gen, _ = forever(batch)
        fit_generator(model, gen, steps_per_epoch=4, epochs=2, verbose=0)
        for step in range(8):
            expected.train_on_batch(*batch(step))
        for got, want in zip(model.get_weights(), expected.get_weights(), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def test_stateful_state_carries_from_batch_to_batch(self):
        """As in Keras 2: the same batch twice gives two predictions when the layer keeps state (JAX too)."""
        inp = keras.Input((2, 1), batch_size=1)
        rnn = keras.layers.SimpleRNN(1, stateful=True, kernel_initializer="ones", recurrent_initializer="ones")
        model = keras.Model(inp, rnn(inp))
        pred = predict_generator(model, iter([np.ones((1, 2, 1), "float32")] * 2), steps=2)
        assert pred[1, 0] > pred[0, 0] + 0.01

    def test_captioning_batch_generator(self):
        """The widely copied captioning generator: dict x, dict y {'decoder_output'}, list-built model."""
        vocab, length, images = 12, 7, np.random.default_rng(0).normal(size=(40, 16)).astype("float32")
        captions = (np.arange(40)[:, None] * 3 + np.arange(length)[None]) % (vocab - 1) + 1

        def batch_generator(batch_size):
            rng = np.random.default_rng(1)
            while True:
                idx = rng.integers(0, len(images), size=batch_size)
                tokens = captions[idx]  # padded to one fixed length: see docs/migration.md
                x_data = {"decoder_input": tokens[:, :-1], "transfer_values_input": images[idx]}
                y_data = {"decoder_output": tokens[:, 1:]}
                yield (x_data, y_data)

        transfer = keras.Input((16,), name="transfer_values_input")
        decoder_input = keras.Input((None,), name="decoder_input", dtype="int32")
        state = keras.layers.Dense(16, activation="tanh")(transfer)
        h = keras.layers.GRU(16, return_sequences=True)(keras.layers.Embedding(vocab, 8)(decoder_input),
                                                       initial_state=state)
        model = keras.Model([transfer, decoder_input], keras.layers.Dense(vocab, name="decoder_output")(h))
        model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        hist = fit_generator(model, batch_generator(8), steps_per_epoch=5, epochs=4, verbose=0)
        assert hist.history["loss"][-1] < 0.8 * hist.history["loss"][0]


@pytest.mark.portable
class DataOnTrainBegin(keras.callbacks.Callback):
    """A Keras 2 generator that is also a callback and builds its data in on_train_begin (the pattern of keras'
    old examples/image_ocr.py): reading a batch before on_train_begin fails with AttributeError."""

    def __init__(self, extra_keys=()):
        super().__init__()
        self.begun = 0
        self.extra_keys = extra_keys

    def on_train_begin(self, logs=None):
        self.begun += 1
        self.rows = [arrays(seed) for seed in range(4)]

    def batches(self):
        step = 0
        while True:
            a, b, y = self.rows[step % 4]
            x = {"a": a, "b": b, **{k: np.array(["some words"] * 8) for k in self.extra_keys}}
            yield x, y
            step += 1


@pytest.mark.portable
class TestKeras2Programs:
    """Patterns of Keras 2 programs ported unchanged (issue 24, items 3 and 4)."""

    def test_a_generator_that_builds_its_data_in_on_train_begin_trains(self):
        """fit_generator reads no batch (kseq's check, Keras's signature probe) before on_train_begin, which
        runs once; the validation generator from the same object is read after it too."""
        model = two_input_model(lr=0.05)
        data = DataOnTrainBegin()
        hist = fit_generator(model, data.batches(), steps_per_epoch=4, epochs=3, callbacks=[data], verbose=0,
                             validation_data=data.batches(), validation_steps=2)
        assert data.begun == 1
        assert len(hist.history["val_loss"]) == 3
        assert hist.history["loss"][-1] < hist.history["loss"][0]

    def test_on_train_begin_runs_once_per_fit_generator_call(self):
        model = two_input_model()
        data = DataOnTrainBegin()
        for _ in range(2):
            fit_generator(model, data.batches(), steps_per_epoch=2, callbacks=[data], verbose=0)
        assert data.begun == 2
        assert "on_train_begin" not in vars(data)  # Keras's own call goes back to the method

    def test_extra_yield_keys_are_dropped_with_one_warning(self):
        """A key no input takes (a 'source_str' of labels; 'ab', which sorts between the inputs, keras#23258)
        is dropped as Keras 2 dropped it: the same weights as without it, and one warning that names both."""
        trained = []
        for extra in ((), ("ab", "source_str")):
            keras.utils.set_random_seed(3)
            model = two_input_model(lr=0.05)
            data = DataOnTrainBegin(extra_keys=extra)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit_generator(model, data.batches(), steps_per_epoch=4, epochs=2, callbacks=[data], verbose=0)
            dropped = [w for w in caught if "dropped dict key" in str(w.message)]
            assert len(dropped) == (1 if extra else 0)
            trained.append(model.get_weights())
        assert "['ab', 'source_str']" in str(dropped[0].message)
        for before, after in zip(*trained, strict=True):
            np.testing.assert_array_equal(before, after)

    def test_a_generator_dataset_drops_extra_keys_in_model_fit(self):
        model = two_input_model(lr=0.05)
        data = DataOnTrainBegin(extra_keys=("source_str",))
        data.on_train_begin()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hist = model.fit(GeneratorDataset(data.batches(), 4, model=model), epochs=2, shuffle=False, verbose=0)
        dropped = [str(w.message) for w in caught if "dropped" in str(w.message)]
        assert len(dropped) == 1
        assert dropped[0].startswith("At epoch 1, step 1 of 4: dropped dict key(s) ['source_str']")
        assert len(hist.history["loss"]) == 2

    def test_kseq_datasets_still_refuse_extra_keys(self):
        """keras#23258: kseq's own datasets name their fields, so an extra one is a mistake."""
        a, b, y = arrays(0)
        ds = MultiInputDataset({"a": a, "b": b, "ab": b, "y": y}, inputs=["a", "ab", "b"], targets="y", batch_size=4)
        with pytest.raises(StructureError):
            ds.for_model(two_input_model())

    def test_an_iterator_too_short_for_the_epochs_is_refused_before_training(self):
        """An iterator that knows its length is refused before fit starts (no tf.data iterator is left behind)."""
        model = two_input_model()
        weights = model.get_weights()
        batches = iter([([*arrays(s)[:2]], arrays(s)[2]) for s in range(7)])
        with pytest.raises(StructureError, match=r"holds 7 batches, but steps_per_epoch=4 x 2 epochs needs 8"):
            fit_generator(model, batches, steps_per_epoch=4, epochs=2, verbose=0)
        assert next(batches)[1].shape == (8, 1)  # nothing was read
        for before, after in zip(weights, model.get_weights(), strict=True):
            np.testing.assert_array_equal(before, after)


def test_keras3_alone_rejects_dict_targets_for_a_single_output_list_model():
    """Why the adapter exists: pin the Keras 3.15 failure it works around, and what the next Keras does.

    Keras 3.15 takes the dict's key as the target. TF: 'Expected float32, but got decoder_output of type str';
    JAX: 'could not convert string to float: 'decoder_output''; PyTorch converts the key to a string array:
    'Invalid dtype: str448'. keras-nightly 3.16.0.dev2026102704 (`make test`'s keras-next leg, JAX) fails the same
    way, then its CompileLoss wraps that ValueError in a message built from the target's shape, and the key, a
    str, has none: an AttributeError whose context is the ValueError naming the key.
    """
    model = two_input_model(("decoder_output",))
    a, b, _ = arrays(0)
    gen, _ = forever(lambda s: ({"a": a, "b": b}, {"decoder_output": np.ones((8, 1), "float32")}))
    nightly = Version(keras.__version__) >= Version("3.16.0.dev0")
    if nightly and keras.backend.backend() == "jax":
        with pytest.raises(AttributeError, match=r"'str' object has no attribute 'shape'") as caught:
            model.fit(gen, steps_per_epoch=1, shuffle=False, verbose=0)
        assert isinstance(caught.value.__context__, ValueError)
        assert "'decoder_output'" in str(caught.value.__context__)
        return
    with pytest.raises((TypeError, ValueError), match=r"decoder_output|Invalid dtype: str"):
        model.fit(gen, steps_per_epoch=1, shuffle=False, verbose=0)


class TestFitGeneratorTF:
    def test_keras3_alone_rejects_list_inputs_in_a_generator(self):
        """Pin the second Keras 3.15 (TF) failure docs/migration.md lists: `[x1, x2], y` yields."""
        a, b, y = arrays(0)
        gen, _ = forever(lambda s: ([a, b], y))
        with pytest.raises(TypeError, match="found <class 'list'>"):
            two_input_model().fit(gen, steps_per_epoch=1, shuffle=False, verbose=0)

    def test_batch_wider_than_the_signature_says_why(self):
        """Keras fixes the sequence length from batches 0 and 1 on TF: a later, longer batch fails, explained."""
        tokens = keras.Input((None,), dtype="int32")
        pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4)(tokens))
        model = keras.Model(tokens, keras.layers.Dense(1)(pooled))
        model.compile("sgd", "mse")
        widths = [5, 5, 7]
        gen = finite(3, lambda s: (np.ones((4, widths[s]), "int32"), np.ones((4, 1))))
        with pytest.raises(StructureError, match=r"A batch of shape \(4, 7\) does not fit the shape \(None, 5\)"):
            fit_generator(model, gen, steps_per_epoch=3, verbose=0)

    def test_stateful_short_batch_names_the_step(self):
        inp = keras.Input((2, 1), batch_size=4)
        model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.SimpleRNN(2, stateful=True)(inp)))
        model.compile("sgd", "mse")
        sizes = [4, 4, 3]
        gen = finite(3, lambda s: (np.zeros((sizes[s], 2, 1)), np.zeros((sizes[s], 1))))
        with pytest.raises(StructureError, match=r"At epoch 1, step 3 of 3: model input .* fixed batch size of 4"):
            fit_generator(model, gen, steps_per_epoch=3, shuffle=False, verbose=0)


# -- keras.utils.Sequence ------------------------------------------------------------


class LegacySequence(keras.utils.Sequence):
    """Keras 2 style: no super().__init__(), `[x1, x2], y` batches, state changed in on_epoch_end."""

    def __init__(self, n=4, rows=8):
        self.n, self.rows, self.epochs_ended, self.asked = n, rows, 0, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.asked.append(i)
        a, b, y = arrays(i, self.rows)
        a[:, 0], b[:, 0] = i, os.getpid()
        return [a, b], y

    def on_epoch_end(self):
        self.epochs_ended += 1


class TestSequence:
    def test_on_epoch_end_once_per_epoch(self):
        """Keras 3 sends one more on_epoch_end before the first epoch; a Sequence sees exactly `epochs`."""
        seq = LegacySequence()
        fit_generator(two_input_model(), seq, epochs=3, verbose=0)
        assert seq.epochs_ended == 3

    def test_steps_per_epoch_below_len_is_honoured(self):
        """Keras 3 reads on through the Sequence, as Keras 2 did: epoch 1 gets batches 0-1, epoch 2 gets 2-3."""
        seq = LegacySequence()
        hist = fit_generator(two_input_model(), seq, steps_per_epoch=2, epochs=2, shuffle=False, verbose=0)
        assert len(hist.history["loss"]) == 2
        assert seq.asked[-4:] == [0, 1, 2, 3]

    def test_steps_per_epoch_above_len_is_refused(self):
        with pytest.raises(StructureError, match=r"steps_per_epoch=5 is more than the 4 batches"):
            fit_generator(two_input_model(), LegacySequence(), steps_per_epoch=5)

    def test_processes_read_a_sequence_in_index_order(self):
        seq = LegacySequence(n=6, rows=2)
        pred = predict_generator(concat_model(), seq, workers=2, use_multiprocessing=True)
        assert pred[::2, 0].tolist() == [0, 1, 2, 3, 4, 5]
        assert os.getpid() not in set(pred[:, 3].astype(int).tolist())  # column 3 is b[:, 0]: the reader's pid

    def test_duck_typed_sequence(self):
        class Plain:
            def __len__(self):
                return 3

            def __getitem__(self, i):
                return {"a": np.full((2, 3), i, "float32"), "b": np.zeros((2, 5), "float32")}, np.zeros((2, 1))

        pred = predict_generator(concat_model(), Plain())
        assert pred[::2, 0].tolist() == [0, 1, 2]

    def test_bad_batch_after_the_signature_raises_kseq_error(self):
        """On TF, a Sequence's batch 3 (after the signature batches 0-1) missing a key is kseq's error, not tf's."""

        class MissingKeyAt3(LegacySequence):
            def __getitem__(self, i):
                (a, b), y = super().__getitem__(i)
                return ({"a": a} if i == 3 else {"a": a, "b": b}), y

        with pytest.raises(StructureError, match=r"At batch 3 of MissingKeyAt3: the x dict has no key for model "):
            fit_generator(two_input_model(), MissingKeyAt3(), shuffle=False, verbose=0)

    def test_stateful_model_refuses_a_shuffled_sequence(self):
        inp = keras.Input((2, 1), batch_size=8)
        model = keras.Model(inp, keras.layers.SimpleRNN(1, stateful=True)(inp))
        with pytest.raises(StructureError, match="Expected shuffle=False"):
            fit_generator(model, SequenceAdapter([(np.zeros((8, 2, 1)), np.zeros((8, 1)))]), verbose=0)


@pytest.mark.portable
def test_a_kseq_dataset_trains_as_it_is():
    """A kseq dataset keeps its own sampling and workers; fit_generator checks it and hands it to fit."""
    a, b, y = arrays(0, n=32)
    ds = MultiInputDataset({"a": a, "b": b, "y": y}, inputs=["a", "b"], targets={"score": "y"}, batch_size=8, seed=0)
    val = MultiInputDataset({"a": a, "b": b, "y": y}, inputs=["a", "b"], targets={"score": "y"}, batch_size=8,
                            shuffle=False)
    hist = fit_generator(two_input_model(), ds, epochs=2, validation_data=val, verbose=0)
    assert len(hist.history["val_loss"]) == 2
    with pytest.raises(StructureError, match=r"\['class_weight'\] given here would be ignored"):
        fit_generator(two_input_model(), ds, class_weight={0: 1.0})


# -- arguments honoured or refused ---------------------------------------------------


@pytest.mark.portable
class TestArguments:
    def test_generator_needs_steps_per_epoch(self):
        with pytest.raises(StructureError, match="A generator has no length: pass steps_per_epoch="):
            fit_generator(two_input_model(), iter([]))

    def test_validation_generator_needs_validation_steps(self):
        gen, _ = forever(lambda s: ([*arrays(s)[:2]], arrays(s)[2]))
        with pytest.raises(StructureError, match="pass validation_steps="):
            fit_generator(two_input_model(), gen, steps_per_epoch=2, validation_data=iter([]))

    @pytest.mark.parametrize(("name", "replacement"), [("nb_epoch", "epochs"), ("samples_per_epoch", "steps_per_epoch"),
                                                        ("pickle_safe", "use_multiprocessing")])
    def test_keras1_arguments_name_their_replacement(self, name, replacement):
        with pytest.raises(TypeError, match=f"Keras 1 argument {name}=. Use {replacement}"):
            fit_generator(two_input_model(), iter([]), steps_per_epoch=1, **{name: 1})

    def test_use_multiprocessing_with_a_generator_is_refused(self):
        with pytest.raises(StructureError, match="cannot be shared with worker processes"):
            fit_generator(two_input_model(), iter([]), steps_per_epoch=1, use_multiprocessing=True, workers=2)

    def test_threads_with_a_stateful_model_are_refused(self):
        inp = keras.Input((2, 1), batch_size=4)
        model = keras.Model(inp, keras.layers.SimpleRNN(1, stateful=True)(inp))
        gen, _ = forever(lambda s: (np.zeros((4, 2, 1)), np.zeros((4, 1))))
        with pytest.raises(StructureError, match=r"stateful layers.*Expected workers=1"):
            fit_generator(model, gen, steps_per_epoch=2, workers=2)

    def test_ineffective_max_queue_size_warns(self):
        a, b, y = arrays(0)
        with pytest.warns(UserWarning, match="max_queue_size=50 has no effect with workers=1"):
            evaluate_generator(two_input_model(), lambda: iter([([a, b], y)]), steps=1, max_queue_size=50)

    def test_a_built_dataset_keeps_its_own_options(self):
        a, b, y = arrays(0)
        ds = GeneratorDataset(lambda: iter([([a, b], y)]), 1)
        with pytest.raises(StructureError, match=r"\['workers'\] given here would be ignored"):
            fit_generator(two_input_model(), ds, workers=4)

    def test_not_a_generator(self):
        with pytest.raises(StructureError, match="Expected a generator, a function returning one, or a keras"):
            fit_generator(two_input_model(), 42, steps_per_epoch=1)


def test_migration_guide_runs():
    """docs/migration.md: every `python` block (Keras 3 code; `py` blocks are Keras 2) runs, in order."""
    guide = (Path(__file__).resolve().parent.parent / "docs" / "migration.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", guide, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 8
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/migration.md", "exec"), namespace)
    assert len(namespace["history"].history["loss"]) == 2
