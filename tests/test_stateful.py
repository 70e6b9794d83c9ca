import math
import pickle

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kseq.callbacks
import kseq.jax_states
import kseq.states
from kseq import StructureError
from kseq.callbacks import ResetStates, check_stateful_model, stateful_layers, track_states
from kseq.datasets.stateful import StatefulSequenceDataset
from kseq.samplers.streams import StreamSampler, stream_layout
from kseq.states import StatefulLayers
from kseq.torch_states import has_fused_path_bug
from kseq.validation import check_stateful_rows, check_step_count, check_steps_per_execution

layouts = st.fixed_dictionaries(
    {
        "lengths": st.lists(st.integers(1, 40), min_size=1, max_size=7),
        "batch_size": st.integers(1, 6),
        "timesteps": st.integers(1, 7),
        "split": st.booleans(),
    }
)


def coded(lengths, width=1):
    """Series whose values name their own position: sequence j, step t holds 1000 * (j + 1) + t."""
    return [np.stack([1000.0 * (j + 1) + np.arange(n)] * width, axis=1) for j, n in enumerate(lengths)]


def serve_all(ds):
    return [ds[k] for k in range(len(ds))]


def raised_while_fed(error, match):
    """``pytest.raises`` for an error a dataset raises while ``fit`` reads it.

    On TensorFlow, Keras reads a PyDataset inside a tf.data ``PyFunc``, which re-raises any
    exception as ``InvalidArgumentError`` with the original's type name and message in its
    text; the other backends let the error itself through.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return pytest.raises(tf.errors.InvalidArgumentError, match=rf"{error.__name__}: .*{match}")
    return pytest.raises(error, match=match)


def seq2seq(inp, *, stateful, units=4, outputs=1, seed=0):
    keras.utils.set_random_seed(seed)
    h = keras.layers.LSTM(units, stateful=stateful, return_sequences=True, name="lstm")(inp)
    return keras.Model(inp, keras.layers.Dense(outputs, name="out")(h))


@pytest.mark.portable
class TestStreamLayout:
    @settings(max_examples=150, deadline=None)
    @given(layouts)
    def test_each_row_continues_the_same_row_of_the_previous_batch(self, case):
        layout = stream_layout(**case)
        for k in range(1, layout.num_batches):
            carried = ~layout.starts[k] & (layout.sequence[k] >= 0)
            prev = k - 1
            assert (layout.sequence[k][carried] == layout.sequence[prev][carried]).all()
            assert (layout.start[k][carried] == layout.start[prev][carried] + case["timesteps"]).all()
            assert (layout.length[prev][carried] == case["timesteps"]).all()  # only a sequence's last window is short

    @settings(max_examples=150, deadline=None)
    @given(layouts)
    def test_every_real_step_appears_exactly_once(self, case):
        layout = stream_layout(**case)
        seen = []
        for k in range(layout.num_batches):
            sequence, step = layout.steps(k)
            seen += list(zip(sequence[sequence >= 0].tolist(), step[sequence >= 0].tolist(), strict=True))
        expected = [(j, t) for j, n in enumerate(case["lengths"]) for t in range(n)]
        assert sorted(seen) == expected

    @settings(max_examples=150, deadline=None)
    @given(layouts)
    def test_a_piece_starts_at_its_first_step_or_at_a_cut(self, case):
        layout = stream_layout(**case)
        first = layout.starts & (layout.sequence >= 0)
        assert first[0][layout.sequence[0] >= 0].all()
        assert (layout.start[first] % case["timesteps"] == 0).all()
        if not case["split"]:
            assert (layout.start[first] == 0).all()
            assert first.sum() == len(case["lengths"])
        assert not (layout.starts & (layout.sequence < 0)).any()

    @settings(max_examples=100, deadline=None)
    @given(st.integers(1, 200), st.integers(1, 8), st.integers(1, 9))
    def test_one_series_fills_every_stream(self, n, batch_size, timesteps):
        layout = stream_layout([n], batch_size=batch_size, timesteps=timesteps, split=True)
        assert layout.num_batches == math.ceil(math.ceil(n / timesteps) / batch_size)

    def test_golden_layout_of_three_series(self):
        layout = stream_layout([7, 2, 5], batch_size=2, timesteps=3, split=False)
        assert layout.sequence.tolist() == [[0, 2], [0, 2], [0, 1]]
        assert layout.start.tolist() == [[0, 0], [3, 3], [6, 0]]
        assert layout.length.tolist() == [[3, 3], [3, 2], [1, 2]]
        assert layout.starts.tolist() == [[True, True], [False, False], [False, True]]

    def test_sampler_indices_are_rows_of_the_concatenated_series_and_minus_one_for_padding(self):
        s = StreamSampler([4, 3], batch_size=2, timesteps=2, split=False, bases=[0, 10])
        assert [s.indices(0, k).tolist() for k in range(len(s))] == [[[0, 1], [10, 11]], [[2, 3], [12, -1]]]
        assert s.indices(5, 1).tolist() == s.indices(0, 1).tolist()  # the same every epoch

    @pytest.mark.parametrize("bad", [{"timesteps": 0}, {"batch_size": 0}, {"lengths": [3, 0]}, {"lengths": []}])
    def test_bad_arguments_are_refused(self, bad):
        with pytest.raises(StructureError, match=r"must be an integer >= 1|at least one sequence"):
            stream_layout(**{"lengths": [5], "batch_size": 2, "timesteps": 2, "split": True, **bad})


@pytest.mark.portable
class TestBatches:
    @settings(max_examples=40, deadline=None)
    @given(layouts, st.integers(1, 3))
    def test_streams_continue_and_targets_are_the_next_steps(self, case, offset):
        lengths = [n + offset for n in case["lengths"]]
        ds = StatefulSequenceDataset(
            coded(lengths), batch_size=case["batch_size"], timesteps=case["timesteps"],
            target_offset=offset, split=case["split"],
        )
        batches = serve_all(ds)
        for k, (x, y, w) in enumerate(batches):
            assert x.shape == (case["batch_size"], case["timesteps"], 1)
            assert w.shape == x.shape[:2]
            real = w == 1
            np.testing.assert_array_equal(y[real], x[real] + offset)
            if k:
                carried = ~ds.starts(k) & real[:, 0]
                np.testing.assert_array_equal(x[carried, 0, 0], batches[k - 1][0][carried, -1, 0] + 1)
        values = np.concatenate([x[w == 1, 0] for x, _, w in batches])
        expected = np.concatenate([s[:-offset, 0] for s in coded(lengths)])
        assert sorted(values.tolist()) == sorted(expected.tolist())  # no real step lost or repeated

    def test_padding_is_zero_with_weight_zero_and_batches_are_full(self):
        ds = StatefulSequenceDataset(coded([9, 4]), batch_size=3, timesteps=4)
        for x, y, w in serve_all(ds):
            assert x.shape[0] == y.shape[0] == w.shape[0] == 3
            assert set(np.unique(w).tolist()) <= {0.0, 1.0}
            assert (x[w == 0] == 0).all()
            assert (y[w == 0] == 0).all()
            assert (x[w == 1] >= 1000).all()
        assert sum(w.sum() for _, _, w in serve_all(ds)) == (9 - 1) + (4 - 1)

    def test_target_field_at_offset_zero(self):
        data = pd.DataFrame({"a": np.arange(10.0), "b": np.arange(10.0) * 10, "label": np.arange(10) % 3})
        ds = StatefulSequenceDataset(data, batch_size=2, timesteps=3, inputs=["a", "b"], targets="label",
                                     target_offset=0)
        x, y, _ = ds[0]
        assert (x.shape, y.shape) == ((2, 3, 2), (2, 3, 1))
        assert y.dtype == data["label"].dtype
        np.testing.assert_array_equal(y[..., 0], x[..., 0].astype(int) % 3)
        assert x[0, :, 1].tolist() == [0.0, 10.0, 20.0]

    def test_a_target_among_inputs_at_offset_zero_is_refused(self):
        with pytest.raises(StructureError, match="would see its answer"):
            StatefulSequenceDataset({"a": np.ones(9), "t": np.ones(9)}, batch_size=1, timesteps=2, targets="t",
                                    target_offset=0)

    def test_copying_the_input_is_refused(self):
        with pytest.raises(StructureError, match="copy its input"):
            StatefulSequenceDataset(np.ones(9), batch_size=1, timesteps=2, target_offset=0)

    def test_pandas_series_and_list_of_dataframes(self):
        one = StatefulSequenceDataset(pd.Series(np.arange(7.0), name="v"), batch_size=1, timesteps=3)
        assert one.inputs == ["v"]
        assert one[0][0][0, :, 0].tolist() == [0.0, 1.0, 2.0]
        frames = [pd.DataFrame({"v": np.arange(n, dtype="float32")}) for n in (5, 8)]
        several = StatefulSequenceDataset(frames, batch_size=2, timesteps=2)
        assert several.lengths == [4, 7]
        assert len(several) == 4

    def test_series_with_different_fields_are_refused(self):
        with pytest.raises(StructureError, match="same fields"):
            StatefulSequenceDataset([{"a": np.ones(5)}, {"b": np.ones(5)}], batch_size=1, timesteps=2)

    def test_a_series_too_short_for_the_offset_is_refused(self):
        with pytest.raises(StructureError, match=r"Series \[1\] are too short"):
            StatefulSequenceDataset([np.ones(5), np.ones(2)], batch_size=1, timesteps=2, target_offset=2)

    def test_a_list_of_numbers_is_not_taken_for_several_series(self):
        with pytest.raises(StructureError, match=r"np\.asarray"):
            StatefulSequenceDataset([1.0, 2.0, 3.0], batch_size=1, timesteps=2)

    def test_to_series_inverts_the_layout(self):
        series = coded([11, 6, 3], width=2)
        ds = StatefulSequenceDataset(series, batch_size=2, timesteps=4, target_offset=2)
        targets = np.concatenate([b[1] for b in serve_all(ds)])
        back = ds.to_series(targets)
        assert [b.shape for b in back] == [(9, 2), (4, 2), (1, 2)]
        for s, b in zip(series, back, strict=True):
            np.testing.assert_array_equal(b, s[2:])

    def test_to_series_refuses_one_output_per_window(self):
        ds = StatefulSequenceDataset(np.arange(9.0), batch_size=2, timesteps=2)
        with pytest.raises(StructureError, match="return_sequences=True"):
            ds.to_series(np.zeros((len(ds) * 2, 1)))

    def test_keras_input_and_like(self):
        ds = StatefulSequenceDataset({"a": np.ones((30, 3)), "t": np.ones(30)}, batch_size=4, timesteps=5,
                                     inputs="a", targets="t")
        assert tuple(ds.keras_input().shape) == (4, 5, 3)
        assert tuple(ds.keras_input(open_time_axis=True).shape) == (4, None, 3)
        other = ds.like({"a": np.zeros((12, 3)), "t": np.zeros(12)})
        assert (other.batch_size, other.timesteps, other.inputs, other.targets) == (4, 5, ["a"], ["t"])
        assert ds.like({"a": np.zeros((12, 3)), "t": np.zeros(12)}, batch_size=1).batch_size == 1

    def test_pickle_round_trip_keeps_batches(self):
        ds = StatefulSequenceDataset(coded([13, 7]), batch_size=2, timesteps=3, seed=5)
        clone = pickle.loads(pickle.dumps(ds))
        for k in range(len(ds)):
            for a, b in zip(ds.get_batch(k), clone.get_batch(k), strict=True):
                np.testing.assert_array_equal(a, b)

    def test_reads_series_from_hdf5_files(self, tmp_path):
        """A list of HDF5 paths, one memory-mapped (contiguous) and one read in chunks (gzip)."""
        series = coded([10, 6], width=3)
        paths = [tmp_path / "contiguous.h5", tmp_path / "chunked.h5"]
        with h5py.File(paths[0], "w") as f:
            f["x"] = series[0]
        with h5py.File(paths[1], "w") as f:
            f.create_dataset("x", data=series[1], chunks=(2, 3), compression="gzip")
        from_files = StatefulSequenceDataset([str(p) for p in paths], batch_size=2, timesteps=4)
        in_memory = StatefulSequenceDataset([{"x": s} for s in series], batch_size=2, timesteps=4)
        for k in range(len(in_memory)):
            for a, b in zip(from_files.get_batch(k), in_memory.get_batch(k), strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("use_multiprocessing", [False, True], ids=["threads", "processes"])
def test_worker_pools_serve_the_inline_batches_in_order(use_multiprocessing):
    """kseq's pool computes batches ahead; __getitem__ still serves, and checks, Keras' order."""
    series = coded([17, 9, 5])
    inline = StatefulSequenceDataset(series, batch_size=2, timesteps=3)
    with StatefulSequenceDataset(series, batch_size=2, timesteps=3, workers=2,
                                 use_multiprocessing=use_multiprocessing) as pooled:
        for k in range(len(inline)):
            for a, b in zip(pooled[k], inline.get_batch(k), strict=True):
                np.testing.assert_array_equal(a, b)
        with pytest.raises(StructureError, match="shuffle=False"):
            pooled[2]


@pytest.mark.portable
class TestRefusals:
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"shuffle": True}, "cannot shuffle"),
            ({"stride": 1}, "stride must equal timesteps"),
            ({"timesteps": 0}, "timesteps must be an integer >= 1"),
            ({"inputs": "nope"}, r"inputs names field\(s\) \['nope'\]"),
        ],
    )
    def test_construction_refuses(self, kwargs, match):
        with pytest.raises(StructureError, match=match):
            StatefulSequenceDataset(np.arange(20.0), **{"batch_size": 2, "timesteps": 3, **kwargs})

    def test_stride_equal_to_timesteps_is_accepted(self):
        assert len(StatefulSequenceDataset(np.arange(20.0), batch_size=2, timesteps=3, stride=3)) == 4

    def test_a_jump_is_refused_with_the_fix(self):
        ds = StatefulSequenceDataset(np.arange(40.0), batch_size=2, timesteps=3)
        ds[0]
        with pytest.raises(StructureError, match=r"fit\(ds, shuffle=False"):
            ds[2]

    def test_the_first_batch_must_be_zero(self):
        with pytest.raises(StructureError, match="Expected batch 0"):
            StatefulSequenceDataset(np.arange(40.0), batch_size=2, timesteps=3)[3]

    def test_a_repeat_is_refused(self):
        ds = StatefulSequenceDataset(np.arange(40.0), batch_size=2, timesteps=3)
        ds[0], ds[1]
        with pytest.raises(StructureError, match="after serving batch 1"):
            ds[1]

    def test_restarts_at_zero_are_allowed(self):
        """Keras reads batches 0 and 1 for its TF signature, then trains from 0; evaluate and predict restart too."""
        ds = StatefulSequenceDataset(np.arange(40.0), batch_size=2, timesteps=3)
        order = [0, 1, 0, 1, 2, 3, 4, 5, 6, 0, 1]
        served = [ds[k] for k in order]
        for k, batch in zip(order, served, strict=True):
            for got, expected in zip(batch, ds.get_batch(k), strict=True):
                np.testing.assert_array_equal(got, expected)
        assert [b[0][0, 0, 0] for b in served] == [0.0, 3.0, 0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 0.0, 3.0]

    def test_get_batch_is_free_in_any_order(self):
        ds = StatefulSequenceDataset(np.arange(40.0), batch_size=2, timesteps=3)
        assert [ds.get_batch(k)[0][0, 0, 0] for k in (5, 2, 5)] == [15.0, 6.0, 15.0]


@pytest.mark.portable
class TestResetStates:
    def test_stateful_predictions_equal_whole_sequence_predictions(self):
        """Carried state plus per-row resets give exactly what a fresh layer computes on each whole sequence."""
        rng = np.random.default_rng(0)
        series = [rng.normal(size=(n, 2)).astype("float32") for n in (23, 9, 14, 5, 31, 2)]
        ds = StatefulSequenceDataset(series, batch_size=3, timesteps=4)
        assert ds.layout.starts[1:].any()  # sequences begin mid-epoch in some rows
        stateful = seq2seq(ds.keras_input(), stateful=True, outputs=2)
        stateless = seq2seq(keras.Input((None, 2)), stateful=False, outputs=2)
        stateless.set_weights(stateful.get_weights())
        predicted = ds.to_series(stateful.predict(ds, callbacks=[ResetStates(ds)], verbose=0))
        for s, p in zip(series, predicted, strict=True):
            np.testing.assert_allclose(p, stateless.predict(s[None, :-1], verbose=0)[0], atol=1e-5)

    def test_reset_rows_zeroes_only_those_rows(self):
        ds = StatefulSequenceDataset(np.ones(20), batch_size=2, timesteps=3)
        model = seq2seq(ds.keras_input(), stateful=True)
        callback = ResetStates(ds)
        callback.set_model(model)
        (layer,) = stateful_layers(model)
        for state in layer.states:
            state.assign(np.ones(state.shape, "float32"))
        callback.reset_rows(np.array([True, False]))
        for state in layer.states:
            assert keras.ops.convert_to_numpy(state.value).tolist() == [[0.0] * 4, [1.0] * 4]

    def test_track_states_keeps_weights_and_is_idempotent(self):
        model = seq2seq(keras.Input(batch_shape=(2, 3, 1)), stateful=True)
        weights = [w.path for w in model.weights]
        first, again = track_states(model), track_states(model)
        assert [w.path for w in model.weights] == weights
        assert again == 0
        assert first == (2 if keras.backend.backend() == "jax" else 0)

    def test_a_model_for_another_batch_size_is_refused(self):
        ds = StatefulSequenceDataset(np.arange(30.0), batch_size=2, timesteps=3)
        model = seq2seq(keras.Input(batch_shape=(3, 3, 1)), stateful=True)
        callback = ResetStates(ds)
        callback.set_model(model)
        with pytest.raises(StructureError, match=r"batch_size=2"):
            callback.on_predict_begin()
        with pytest.raises(StructureError, match=r"\{'lstm': 3, 'input 0': 3\}"):
            ds.check(model)

    def test_check_accepts_the_matching_stateful_model(self):
        ds = StatefulSequenceDataset(np.arange(30.0), batch_size=2, timesteps=3)
        report = ds.check(seq2seq(ds.keras_input(), stateful=True), verbose=False)
        assert report.adaptations == []

    def test_steps_per_execution_with_mid_epoch_resets_is_refused(self):
        skip_where_keras_refuses_steps_per_execution()
        ds = StatefulSequenceDataset([np.arange(9.0), np.arange(4.0)], batch_size=1, timesteps=2)
        model = seq2seq(ds.keras_input(), stateful=True)
        model.compile("sgd", "mse", steps_per_execution=2)
        with pytest.raises(StructureError, match="steps_per_execution=1"):
            model.fit(ds, shuffle=False, callbacks=[ResetStates(ds)], verbose=0)

    def test_validation_without_validation_data_is_refused(self):
        ds = StatefulSequenceDataset(np.arange(30.0), batch_size=2, timesteps=3)
        model = seq2seq(ds.keras_input(), stateful=True)
        model.compile("sgd", "mse")
        with pytest.raises(StructureError, match="validation_data=val"):
            model.fit(ds, validation_data=ds.like(np.arange(12.0)), shuffle=False, callbacks=[ResetStates(ds)],
                      verbose=0)

    def test_evaluate_outside_fit_uses_the_dataset_not_validation_data(self):
        """validation_data belongs to fit; evaluate(ds) on its own gives the same loss as a fresh callback."""
        ds = StatefulSequenceDataset([np.arange(9.0), np.arange(7.0)], batch_size=2, timesteps=3)
        val = ds.like([np.arange(4.0), np.arange(5.0), np.arange(3.0)])
        model = seq2seq(ds.keras_input(), stateful=True)
        model.compile("sgd", "mse")
        both = model.evaluate(ds, callbacks=[ResetStates(ds, validation_data=val)], verbose=0)
        np.testing.assert_allclose(both, model.evaluate(ds, callbacks=[ResetStates(ds)], verbose=0), rtol=1e-6)

    @pytest.mark.parametrize("call", ["evaluate", "predict"])
    def test_another_step_count_is_refused(self, call):
        ds = StatefulSequenceDataset(np.arange(40.0), batch_size=2, timesteps=3)
        model = seq2seq(ds.keras_input(), stateful=True)
        model.compile("sgd", "mse")
        with pytest.raises(StructureError, match=rf"{call} runs 2 steps but .* has {len(ds)} batches"):
            getattr(model, call)(ds, steps=2, callbacks=[ResetStates(ds)], verbose=0)

    def test_something_without_starts_is_refused(self):
        with pytest.raises(StructureError, match="expects a stateful dataset"):
            ResetStates(np.zeros(3))


@pytest.mark.portable
class TestStatefulLayers:
    def test_resets_hit_exactly_the_rows_that_start_a_sequence(self):
        """Before each batch the callback zeroes the rows of ds.starts(batch) and keeps every other row."""
        series = [np.arange(float(n)) for n in (7, 3, 12, 2, 5, 9)]
        ds = StatefulSequenceDataset(series, batch_size=3, timesteps=2)
        assert ds.layout.starts[1:].any()  # sequences start mid-epoch ...
        assert not ds.layout.starts[1:].all()  # ... in some rows only
        model = seq2seq(ds.keras_input(), stateful=True)
        callback = ResetStates(ds)
        callback.set_model(model)
        callback.on_predict_begin()
        for k in range(len(ds)):
            for state in callback.stateful.variables:
                state.assign(np.ones(state.shape, "float32"))
            callback.on_predict_batch_begin(k)
            expected = np.ones(3, bool) if k == 0 else ds.starts(k)
            for state in callback.stateful.variables:
                zeroed = (keras.ops.convert_to_numpy(state.value) == 0).all(axis=1)
                assert zeroed.tolist() == expected.tolist(), k

    def test_the_layers_are_those_of_the_model_set_and_kept_across_batches(self):
        ds = StatefulSequenceDataset([np.arange(9.0), np.arange(4.0)], batch_size=1, timesteps=2)
        model = seq2seq(ds.keras_input(), stateful=True)
        callback = ResetStates(ds)
        callback.set_model(model)
        found = callback.stateful
        assert found.layers == tuple(stateful_layers(model)) == (model.get_layer("lstm"),)
        assert found.rows() == {"lstm": 1}
        assert len(found.variables) == 2  # LSTM's h and c
        model.predict(ds, callbacks=[callback], verbose=0)
        assert callback.stateful is not found  # predict set the model again (Keras does, per call) ...
        assert callback.stateful.variables == found.variables  # ... and found the same variables

    def test_a_second_model_is_looked_up_again(self):
        """set_model with another model re-caches: resets reach the new model's state, not the old one's."""
        ds = StatefulSequenceDataset(np.arange(20.0), batch_size=2, timesteps=3)
        first, second = (seq2seq(ds.keras_input(), stateful=True, seed=s) for s in (0, 1))
        callback = ResetStates(ds)
        callback.set_model(first)
        callback.set_model(second)
        assert callback.stateful.layers == tuple(stateful_layers(second))
        for model in (first, second):
            for state in stateful_layers(model)[0].states:
                state.assign(np.ones(state.shape, "float32"))
        callback.reset_rows(np.array([True, False]))
        for model, row0 in ((first, 1.0), (second, 0.0)):
            for state in stateful_layers(model)[0].states:
                assert keras.ops.convert_to_numpy(state.value)[:, 0].tolist() == [row0, 1.0]

    def test_a_model_built_after_set_model_is_looked_up_once_built(self):
        model = keras.Sequential([keras.layers.LSTM(4, stateful=True, return_sequences=True, name="lstm")])
        callback = ResetStates()
        callback.set_model(model)
        assert callback.stateful.layers == ()
        model(np.zeros((2, 3, 1), "float32"))
        assert [layer.name for layer in callback.stateful.layers] == ["lstm"]
        assert callback.stateful.complete

    def test_flags_for_another_number_of_rows_are_refused(self):
        model = seq2seq(keras.Input(batch_shape=(2, 3, 1)), stateful=True)
        with pytest.raises(StructureError, match=r"one flag per row .* \[2\] rows .* Received flags of shape \(3,\)"):
            StatefulLayers(model).reset_rows(np.array([True, False, True]))

    def test_the_same_pattern_twice_resets_the_same_rows(self):
        """The mask of a pattern is made once and reused; a reused mask still zeroes only its rows."""
        model = seq2seq(keras.Input(batch_shape=(3, 2, 1)), stateful=True)
        layers = StatefulLayers(model)
        for rows in ([False, True, False], [True, False, False], [False, True, False]):
            for state in layers.variables:
                state.assign(np.full(state.shape, 2.0, "float32"))
            layers.reset_rows(np.array(rows))
            for state in layers.variables:
                kept = keras.ops.convert_to_numpy(state.value)[:, 0]
                assert kept.tolist() == [0.0 if r else 2.0 for r in rows]

    def test_public_names_stay_importable_from_kseq_callbacks(self):
        assert kseq.callbacks.stateful_layers is kseq.states.stateful_layers
        assert kseq.callbacks.track_states is kseq.jax_states.track_states
        assert callable(kseq.callbacks.check_stateful_model)


@pytest.mark.portable
class TestStreamChecks:
    """The checks ResetStates runs, called directly from kseq.validation, say what the callback says."""

    def test_stateful_rows(self):
        ds = StatefulSequenceDataset(np.arange(30.0), batch_size=2, timesteps=3)
        model = seq2seq(keras.Input(batch_shape=(3, 3, 1)), stateful=True)
        with pytest.raises(StructureError) as through_callback:
            check_stateful_model(model, ds.batch_size)
        with pytest.raises(StructureError, match=r"\{'lstm': 3, 'input 0': 3\} rows .* batch_size=2") as direct:
            check_stateful_rows({"lstm": 3, "input 0": 3}, 2)
        assert str(direct.value) == str(through_callback.value)
        check_stateful_rows({"lstm": 2, "input 0": 2}, 2)

    def test_steps_per_execution(self):
        skip_where_keras_refuses_steps_per_execution()
        ds = StatefulSequenceDataset([np.arange(9.0), np.arange(4.0)], batch_size=1, timesteps=2)
        model = seq2seq(ds.keras_input(), stateful=True)
        model.compile("sgd", "mse", steps_per_execution=2)
        with pytest.raises(StructureError) as through_fit:
            model.fit(ds, shuffle=False, callbacks=[ResetStates(ds)], verbose=0)
        with pytest.raises(StructureError, match=r"steps_per_execution=2 .* steps_per_execution=1") as direct:
            check_steps_per_execution(2, ds, "fit")
        assert str(direct.value) == str(through_fit.value)
        check_steps_per_execution(1, ds, "fit")
        check_steps_per_execution(2, ds.like(np.arange(5.0)), "fit")  # one sequence, one stream: no reset inside

    @pytest.mark.parametrize("call", ["evaluate", "predict"])
    def test_step_count(self, call):
        ds = StatefulSequenceDataset(np.arange(40.0), batch_size=2, timesteps=3)
        model = seq2seq(ds.keras_input(), stateful=True)
        model.compile("sgd", "mse")
        with pytest.raises(StructureError) as through_call:
            getattr(model, call)(ds, steps=2, callbacks=[ResetStates(ds)], verbose=0)
        with pytest.raises(StructureError, match=rf"{call} runs 2 steps but .* has {len(ds)} batches") as direct:
            check_step_count(2, ds, call)
        assert str(direct.value) == str(through_call.value)
        check_step_count(None, ds, call)
        check_step_count(len(ds), ds, call)

    def test_step_count_of_fit(self):
        ds = StatefulSequenceDataset(np.arange(40.0), batch_size=2, timesteps=3)
        with pytest.raises(StructureError, match=r"fit runs 2 steps per epoch .* steps_per_epoch=None"):
            check_step_count(2, ds, "fit")


@pytest.mark.portable
class TestStatefulFit:
    def test_a_stateful_lstm_learns_what_only_the_carried_state_knows(self):
        """The target of every step is the sign of the sequence's first value, seen only in its first window.

        Checked on held-out sequences, never trained on: the state must carry the sign, not recall the sequence.
        """
        rng = np.random.default_rng(0)
        series = []
        for _ in range(24 + 8):
            x = rng.normal(size=(12, 1)).astype("float32")
            series.append({"x": x, "sign": np.full(12, float(x[0, 0] > 0), dtype="float32")})
        train, held_out = series[:24], series[24:]
        ds = StatefulSequenceDataset(train, batch_size=8, timesteps=3, inputs="x", targets="sign", target_offset=0)
        val = ds.like(held_out)
        keras.utils.set_random_seed(0)
        inp = ds.keras_input()
        h = keras.layers.LSTM(16, stateful=True, return_sequences=True)(inp)
        model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(h))
        model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", weighted_metrics=["accuracy"])
        history = model.fit(ds, epochs=40, shuffle=False, validation_data=val,
                            callbacks=[ResetStates(ds, validation_data=val)], verbose=0)
        assert history.history["val_accuracy"][-1] > 0.95
        predicted = val.to_series(model.predict(val, callbacks=[ResetStates(val)], verbose=0))
        later = np.concatenate([p[3:, 0] for p in predicted])  # steps after the first window
        truth = np.concatenate([s["sign"][3:] for s in held_out])
        assert ((later > 0.5) == (truth > 0.5)).mean() > 0.95

    def test_fit_with_its_default_shuffle_is_refused(self):
        ds = StatefulSequenceDataset(np.arange(60.0), batch_size=2, timesteps=3)
        model = seq2seq(ds.keras_input(), stateful=True)
        model.compile("sgd", "mse")
        with raised_while_fed(StructureError, r"shuffle=False"):
            model.fit(ds, epochs=2, callbacks=[ResetStates(ds)], verbose=0)


def skip_where_keras_refuses_steps_per_execution():
    if keras.backend.backend() == "torch":
        pytest.skip("Keras refuses steps_per_execution > 1 on PyTorch itself ('must be 1 with the PyTorch backend')")


@pytest.mark.portable
class TestPyTorchFusedPath:
    """NOTE [ stateful LSTM/GRU on PyTorch in Keras 3.15 ]: the generic path on torch, nothing changed elsewhere."""

    @pytest.mark.parametrize("layer", [keras.layers.LSTM, keras.layers.GRU])
    def test_resetstates_trains_a_stateful_lstm_or_gru_on_every_backend(self, layer):
        ds = StatefulSequenceDataset(np.sin(np.arange(200.0) / 5), batch_size=2, timesteps=5)
        rnn = layer(4, stateful=True, return_sequences=True)
        model = keras.Sequential([ds.keras_input(), rnn, keras.layers.Dense(1)])
        model.compile(keras.optimizers.Adam(0.02), "mse")
        history = model.fit(ds, epochs=4, shuffle=False, callbacks=[ResetStates(ds)], verbose=0)
        assert history.history["loss"][-1] < history.history["loss"][0]
        assert rnn.use_cudnn is (False if has_fused_path_bug() else "auto")

    def test_the_bug_is_keyed_on_backend_and_version(self):
        assert has_fused_path_bug("3.15.1", "torch")
        assert has_fused_path_bug("3.15.0rc1", "torch")
        assert not has_fused_path_bug("3.15.2", "torch")
        assert not has_fused_path_bug("3.16.0.dev2026", "torch")
        assert not has_fused_path_bug("3.15.1", "tensorflow")


@pytest.mark.portable
class TestManyToOne:
    """Issue 24, item 7: lstm_stateful.py's pattern, one prediction per window (target_steps="last")."""

    def test_y_is_the_target_of_each_windows_last_step(self):
        ds = StatefulSequenceDataset(np.arange(13.0), batch_size=2, timesteps=3, target_steps="last")
        x, y, w = ds[0]
        assert x[:, :, 0].tolist() == [[0.0, 1.0, 2.0], [6.0, 7.0, 8.0]]
        assert y.tolist() == [[3.0], [9.0]]
        assert w.tolist() == [1.0, 1.0]

    def test_a_window_that_padding_ends_weighs_nothing(self):
        ds = StatefulSequenceDataset(np.arange(11.0), batch_size=2, timesteps=3, target_steps="last")
        _, y, w = ds.get_batch(1)  # stream 2 has one real step in this window
        assert w.tolist() == [1.0, 0.0]
        assert y[:, 0].tolist() == [6.0, 0.0]

    def test_unknown_target_steps_is_refused(self):
        with pytest.raises(StructureError, match="target_steps"):
            StatefulSequenceDataset(np.arange(11.0), batch_size=2, timesteps=3, target_steps="first")

    def test_like_keeps_it_and_to_series_refuses_it(self):
        ds = StatefulSequenceDataset(np.arange(13.0), batch_size=2, timesteps=3, target_steps="last")
        assert ds.like(np.arange(20.0)).target_steps == "last"
        with pytest.raises(StructureError, match="target_steps='all'"):
            ds.to_series(np.zeros((len(ds) * 2, 1)))

    def test_a_stateful_lstm_returning_one_value_per_window_learns_the_next_value(self):
        """Many-to-one through fit: the next value of a sine after each window, on held-out series."""
        t = np.arange(400.0)
        train = [np.sin(0.3 * t + p)[:, None] for p in (0.0, 1.0, 2.0, 3.0)]
        held_out = [np.sin(0.3 * t + p)[:, None] for p in (0.5, 2.5, 4.0, 5.0)]
        ds = StatefulSequenceDataset(train, batch_size=4, timesteps=8, target_steps="last")
        val = ds.like(held_out)
        keras.utils.set_random_seed(0)
        inp = ds.keras_input()
        h = keras.layers.LSTM(16, stateful=True)(inp)  # return_sequences=False: one output per window
        model = keras.Model(inp, keras.layers.Dense(1)(h))
        model.compile(keras.optimizers.Adam(0.01), "mse")
        assert not ds.check(model, verbose=False).needs_adapting
        model.fit(ds, epochs=15, shuffle=False, callbacks=[ResetStates(ds)], verbose=0)
        mse = model.evaluate(val, callbacks=[ResetStates(val)], verbose=0)
        assert mse < 0.01  # predicting 0 would give about 0.5


class TestBatchSizeOneOnTensorFlow:
    """Issue 24, item 6: Keras 3.15 on TF cannot fit a looping stateful RNN at batch size 1 from a PyDataset."""

    @staticmethod
    def model(ds, **rnn):
        inp = ds.keras_input()
        model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.LSTM(4, stateful=True, **rnn)(inp)))
        model.compile("sgd", "mse")
        return model

    @pytest.fixture(autouse=True)
    def _tensorflow_only(self):
        if keras.backend.backend() != "tensorflow":
            pytest.skip("a TensorFlow limitation")

    def test_fit_is_refused_before_the_first_step_with_what_works(self):
        ds = StatefulSequenceDataset(np.arange(40.0), batch_size=1, timesteps=4, target_steps="last")
        with pytest.raises(StructureError, match=r"batch_size >= 2 .*unroll=True .*JAX or PyTorch"):
            self.model(ds).fit(ds, epochs=1, shuffle=False, callbacks=[ResetStates(ds)], verbose=0)

    def test_check_and_for_model_refuse_a_compiled_model(self):
        ds = StatefulSequenceDataset(np.arange(40.0), batch_size=1, timesteps=4, target_steps="last")
        with pytest.raises(StructureError, match="cannot fit a stateful recurrent layer at batch size 1"):
            ds.for_model(self.model(ds))

    def test_predict_at_batch_size_one_is_not_refused(self):
        ds = StatefulSequenceDataset(np.arange(40.0), batch_size=1, timesteps=4, target_steps="last")
        inp = ds.keras_input()
        model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.LSTM(4, stateful=True)(inp)))  # not compiled
        ds.check(model, verbose=False)
        assert model.predict(ds, callbacks=[ResetStates(ds)], verbose=0).shape == (len(ds), 1)

    def test_unroll_trains_at_batch_size_one(self):
        ds = StatefulSequenceDataset(np.sin(np.arange(80.0))[:, None], batch_size=1, timesteps=4,
                                     target_steps="last")
        history = self.model(ds, unroll=True).fit(ds, epochs=2, shuffle=False, callbacks=[ResetStates(ds)], verbose=0)
        assert np.isfinite(history.history["loss"]).all()
