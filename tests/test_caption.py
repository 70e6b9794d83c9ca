import pickle

import keras
import numpy as np
import pytest

from kseq import StructureError
from kseq.datasets.caption import CaptionDataset
from kseq.samplers import CaptionSampler
from kseq.text import TokenTable, Vocabulary, standardize, tokenize

START, END = 2, 3


def caption(rng, lo=1, hi=9):
    """START, some words (ids 4..19), END."""
    return np.concatenate([[START], rng.integers(4, 20, size=rng.integers(lo, hi)), [END]]).astype("int32")


@pytest.fixture
def corpus(rng):
    """30 images with 1 to 4 captions each, of 3 to 10 tokens."""
    features = rng.normal(size=(30, 6)).astype("float32")
    captions = [[caption(rng) for _ in range(rng.integers(1, 5))] for _ in range(30)]
    return features, captions


def pairs(ds, epoch):
    """(image row, decoder_output tokens without padding) of every sample in an epoch."""
    out = []
    for i in range(len(ds)):
        x, y, w = ds.get_batch(i, epoch)
        image = [int(np.flatnonzero((ds.source.arrays["features"] == f).all(axis=1))[0]) for f in x[ds.input_names[0]]]
        targets = zip(y["decoder_output"], w["decoder_output"], strict=True)
        out += list(zip(image, [tuple(row[weights > 0].tolist()) for row, weights in targets], strict=True))
    return out


def all_pairs(captions):
    return sorted((i, tuple(c[1:].tolist())) for i, caps in enumerate(captions) for c in caps)


def learnable():
    """Image k of 4 kinds (one-hot features) has two captions: k+1 or k+3 repeats of word 4+k."""
    kinds = np.arange(64) % 4
    captions = [[[START, *[4 + k] * (k + 1), END], [START, *[4 + k] * (k + 3), END]] for k in kinds]
    return np.eye(4, dtype="float32")[kinds], captions


def captioner(vocab, feature_dim, length=None, dict_io=False):
    """Features -> initial GRU state; tokens -> Embedding -> GRU -> logits per step."""
    f = keras.Input((feature_dim,), name="transfer_values_input")
    t = keras.Input((length,), name="decoder_input", dtype="int32")
    state = keras.layers.Dense(16, activation="tanh")(f)
    h = keras.layers.GRU(16, return_sequences=True)(keras.layers.Embedding(vocab, 8)(t), initial_state=state)
    out = keras.layers.Dense(vocab, name="decoder_output")(h)
    inputs = {"transfer_values_input": f, "decoder_input": t} if dict_io else [f, t]
    model = keras.Model(inputs, {"decoder_output": out} if dict_io else out)
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.portable
class TestText:
    def test_standardize_lowercases_and_drops_punctuation(self):
        assert standardize("Two RED circles, left!") == ["two", "red", "circles", "left"]

    def test_encode_decode_round_trip_with_markers(self):
        vocab = Vocabulary.fit(["a red circle", "a blue square"])
        ids = vocab.encode("a blue circle")
        assert (ids[0], ids[-1]) == (Vocabulary.START, Vocabulary.END)
        assert vocab.decode(ids) == "a blue circle"
        assert vocab.decode(ids, markers=True) == "<start> a blue circle <end>"

    def test_decode_stops_at_end_or_padding(self):
        vocab = Vocabulary(["red", "blue"])
        assert vocab.decode([2, 4, 3, 5, 5]) == "red"
        assert vocab.decode([4, 5, 0, 4]) == "red blue"

    def test_unknown_words_are_oov(self):
        vocab = Vocabulary.fit(["red circle"])
        assert vocab.encode("green circle").tolist() == [START, Vocabulary.OOV, vocab.encode("circle")[1], END]

    def test_fit_ranks_by_frequency_and_caps_words(self):
        vocab = Vocabulary.fit(["b b b a a c"], max_words=2)
        assert vocab.words[4:] == ["b", "a"]
        assert len(vocab) == 6

    def test_duplicate_or_marker_words_are_refused(self):
        with pytest.raises(StructureError, match=r"duplicates \['red'\] and marker words \['<end>'\]"):
            Vocabulary(["red", "red", "<end>"])

    def test_tokenize_keeps_nesting(self):
        ids, vocab = tokenize([["a b"], ["b", "a b c"]])
        assert [len(per_image) for per_image in ids] == [1, 2]
        assert vocab.decode(ids[1][1]) == "a b c"


@pytest.mark.portable
class TestTokenTable:
    def test_trailing_padding_is_stripped(self):
        assert TokenTable(np.array([[2, 5, 3, 0], [2, 3, 0, 0]])).lengths.tolist() == [3, 2]

    def test_inner_padding_is_detected(self):
        table = TokenTable([[2, 0, 3], [2, 4, 3, 0], [0, 0]])
        assert table.inner_pad_rows().tolist() == [0]
        assert table.lengths.tolist() == [3, 3, 0]

    def test_gather_pads_and_truncates(self):
        table = TokenTable([[2, 5, 6, 3], [2, 3]], pad_value=-1)
        assert table.gather(np.array([0, 1]), width=3).tolist() == [[2, 5, 6], [2, 3, -1]]
        assert table.gather(np.array([0]), width=4, lengths=np.array([2])).tolist() == [[2, 5, -1, -1]]

    def test_float_tokens_are_refused(self):
        with pytest.raises(StructureError, match="Expected integer token ids"):
            TokenTable([[2.0, 3.5]])


@pytest.mark.portable
class TestTeacherForcing:
    def test_shift_and_padding_exactly(self):
        caps = [[[2, 5, 6, 3]], [[2, 7, 3]], [[2, 8, 9, 10, 11, 3]]]
        ds = CaptionDataset(np.eye(3, dtype="float32"), caps, batch_size=3, shuffle=False, weighting="mask")
        x, y, w = ds[0]
        assert x["decoder_input"].tolist() == [[2, 5, 6, 0, 0], [2, 7, 0, 0, 0], [2, 8, 9, 10, 11]]
        assert y["decoder_output"].tolist() == [[5, 6, 3, 0, 0], [7, 3, 0, 0, 0], [8, 9, 10, 11, 3]]
        assert w["decoder_output"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
        assert x["decoder_input"].dtype == y["decoder_output"].dtype == np.int32
        np.testing.assert_array_equal(x["transfer_values_input"], np.eye(3))

    def test_mean_weights_make_the_default_loss_a_mean_over_real_tokens(self):
        caps = [[[2, 5, 6, 3]], [[2, 7, 3]]]
        _, _, w = CaptionDataset(np.eye(2), caps, batch_size=2, shuffle=False)[0]
        weights = w["decoder_output"]
        np.testing.assert_allclose(weights, np.array([[1, 1, 1], [1, 1, 0]]) * 6 / 5)
        assert weights.sum() == pytest.approx(weights.size)

    @pytest.mark.parametrize("weighting", ["mean", "mask"])
    def test_the_compiled_default_loss_is_the_mean_over_real_tokens(self, rng, weighting):
        """README: with "mean" weights, Keras's default (sum_over_batch_size) loss of a real compiled model is
        the mean of the per-token losses over the real tokens of each batch, whatever its padding; "mask"
        weights divide by every position instead."""
        caps = [[caption(rng, 1, 12)] for _ in range(12)]
        ds = CaptionDataset(rng.normal(size=(12, 6)).astype("float32"), caps, batch_size=4, seed=0,
                            weighting=weighting)
        keras.utils.set_random_seed(0)
        model = captioner(20, 6, dict_io=True)
        per_token = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
        padded = 0
        for i in range(len(ds)):
            x, y, w = ds[i]
            logits = model.predict_on_batch(x)["decoder_output"]
            losses = keras.ops.convert_to_numpy(per_token(y["decoder_output"], logits))
            real = w["decoder_output"] > 0
            padded += int((~real).sum())
            expected = losses[real].mean() if weighting == "mean" else losses[real].sum() / losses.size
            compiled = model.test_on_batch(x, y, w, return_dict=True)["loss"]
            assert compiled == pytest.approx(float(expected), rel=1e-4)
        assert padded > 0

    def test_no_sample_weight_gives_x_y(self, corpus):
        assert len(CaptionDataset(*corpus, weighting=None, seed=0)[0]) == 2

    def test_names_follow_the_model(self, corpus):
        ds = CaptionDataset(*corpus, input_names=("img", "words"), output_name="next", seed=0)
        x, y, w = ds[0]
        assert (list(x), list(y), list(w)) == (["img", "words"], ["next"], ["next"])

    def test_max_length_truncates_and_warns_once_with_the_count(self):
        caps = [[[2, 4, 5, 6, 7, 3]], [[2, 4, 3]], [[2, 4, 5, 6, 7, 8, 9, 3]]]
        with pytest.warns(UserWarning, match=r"2 of 3 captions are longer than max_length=4") as record:
            ds = CaptionDataset(np.eye(3), caps, max_length=4, batch_size=3, shuffle=False, weighting="mask")
        assert len(record) == 1
        assert ds.num_truncated == 2
        x, y, _ = ds[0]
        assert x["decoder_input"].tolist() == [[2, 4, 5], [2, 4, 0], [2, 4, 5]]
        assert y["decoder_output"].tolist() == [[4, 5, 6], [4, 3, 0], [4, 5, 6]]

    def test_pad_to_multiple_rounds_widths_up(self, corpus):
        ds = CaptionDataset(*corpus, pad_to_multiple=4, captions_per_image="all", batch_size=8, seed=0)
        widths = {ds[i][0]["decoder_input"].shape[1] for i in range(len(ds))}
        assert len(widths) > 1
        assert all(w % 4 == 0 for w in widths)

    def test_fixed_length_pads_every_batch_to_max_length_minus_one(self, corpus):
        ds = CaptionDataset(*corpus, fixed_length=True, max_length=12, batch_size=8, seed=0)
        assert ds.sequence_length == 11
        assert {ds[i][0]["decoder_input"].shape[1] for i in range(len(ds))} == {11}

    def test_a_sequence_length_of_none_when_widths_vary(self, corpus):
        assert CaptionDataset(*corpus, batch_size=8, seed=0).sequence_length is None


@pytest.mark.portable
class TestSignatureWidths:
    """NOTE [ variable-length batches and the TF signature ]: batches 0 and 1 must differ in width."""

    def test_batch_one_is_widened_when_it_matches_batch_zero(self):
        caps = [[[2, 4, 4, 3]]] * 6 + [[[2, 4, 3]]] * 2  # batches of 2: widths 3, 3, 3, 2 unshuffled
        ds = CaptionDataset(np.zeros((8, 1)), caps, batch_size=2, shuffle=False, weighting="mask")
        assert [ds.batch_width(i) for i in range(4)] == [3, 4, 3, 2]
        x, _, w = ds[1]
        assert x["decoder_input"].tolist() == [[2, 4, 4, 0]] * 2
        assert w["decoder_output"][:, 3].tolist() == [0, 0]

    def test_batch_one_is_not_widened_when_widths_differ(self):
        caps = [[[2, 4, 4, 3]]] * 2 + [[[2, 4, 3]]] * 2
        ds = CaptionDataset(np.zeros((4, 1)), caps, batch_size=2, shuffle=False)
        assert [ds.batch_width(i) for i in range(2)] == [3, 2]

    def test_equal_lengths_give_one_width_and_no_widening(self):
        ds = CaptionDataset(np.zeros((6, 1)), [[[2, 4, 3]]] * 6, batch_size=2, seed=0)
        assert ds.sequence_length == 2
        assert {ds[i][0]["decoder_input"].shape for i in range(3)} == {(2, 2)}

    def test_a_single_batch_uses_the_widest_width_every_epoch(self, corpus):
        ds = CaptionDataset(*corpus, batch_size=64, seed=0)
        longest = max(len(c) for caps in corpus[1] for c in caps)
        assert len(ds) == 1
        assert [ds.get_batch(0, e)[0]["decoder_input"].shape[1] for e in range(3)] == [longest - 1] * 3


@pytest.mark.portable
class TestSampling:
    def test_one_caption_per_image_per_epoch(self, corpus):
        ds = CaptionDataset(*corpus, batch_size=7, seed=3)
        for epoch in range(3):
            seen = pairs(ds, epoch)
            assert sorted(i for i, _ in seen) == list(range(30))
            assert set(seen) <= set(all_pairs(corpus[1]))

    def test_one_draws_every_caption_over_epochs_and_epochs_differ(self, corpus):
        ds = CaptionDataset(*corpus, batch_size=10, seed=3)
        epochs = [pairs(ds, e) for e in range(25)]
        assert {p for seen in epochs for p in seen} == set(all_pairs(corpus[1]))
        assert sorted(epochs[0]) != sorted(epochs[1])

    def test_unshuffled_one_draws_the_same_captions_every_epoch(self, corpus):
        """shuffle=False is a fixed validation set: one caption per image, in image order, never redrawn."""
        ds = CaptionDataset(*corpus, batch_size=7, seed=3, shuffle=False)
        epochs = [pairs(ds, e) for e in range(4)]
        assert epochs[0] == epochs[1] == epochs[2] == epochs[3]
        assert [i for i, _ in epochs[0]] == list(range(30))
        assert set(epochs[0]) <= set(all_pairs(corpus[1]))
        other = CaptionDataset(*corpus, batch_size=7, seed=4, shuffle=False)
        assert pairs(other, 0) != epochs[0]  # the draw still follows the seed

    def test_all_gives_every_pair_once_per_epoch_in_a_new_order(self, corpus):
        ds = CaptionDataset(*corpus, captions_per_image="all", batch_size=8, seed=3)
        first, second = pairs(ds, 0), pairs(ds, 1)
        assert sorted(first) == sorted(second) == all_pairs(corpus[1])
        assert first != second

    def test_batches_are_a_pure_function_of_seed_epoch_and_index(self, corpus):
        ds = CaptionDataset(*corpus, batch_size=8, seed=11)
        other = CaptionDataset(*corpus, batch_size=8, seed=11)
        backwards = [other.get_batch(i, 2) for i in reversed(range(len(other)))][::-1]
        clone = pickle.loads(pickle.dumps(ds))
        for i, expected in enumerate(backwards):
            for batch in (ds.get_batch(i, 2), clone.get_batch(i, 2)):
                for part, ref in zip(batch, expected, strict=True):
                    for key in ref:
                        np.testing.assert_array_equal(part[key], ref[key])

    @pytest.mark.parametrize("processes", [False, True])
    def test_workers_give_the_inline_batches(self, corpus, processes):
        """Widths vary per batch and epoch: threads and processes must agree with get_batch exactly."""
        with CaptionDataset(*corpus, batch_size=8, seed=5, bucket_by_length=True, workers=2,
                            use_multiprocessing=processes) as ds:
            for epoch in range(2):
                for i in range(len(ds)):
                    expected = ds.get_batch(i, epoch)
                    for part, ref in zip(ds[i], expected, strict=True):
                        for key in ref:
                            np.testing.assert_array_equal(part[key], ref[key])
                ds.on_epoch_end()

    def test_golden_caption_order(self):
        """Pinned: a change in how captions are drawn changes every user's run."""
        sampler = CaptionSampler(np.repeat(np.arange(5), 2), np.full(10, 4), one_per_image=True, batch_size=5, seed=0)
        assert sampler.order(0).tolist() == [1, 4, 9, 6, 2]

    @pytest.mark.parametrize("per_image", ["all", "one"])
    def test_bucketing_cuts_the_padding_of_served_batches_and_keeps_every_sample(self, rng, per_image):
        """Padding counted in the batches served (zero-weight target positions), not from lengths; each
        bucketed batch is as wide as its longest caption (batch 1 one column wider where it would match
        batch 0: NOTE [ variable-length batches and the TF signature ]); "all" serves every pair once and
        "one" one caption of every image."""
        caps = [[caption(rng, 1, 30) for _ in range(3)] for _ in range(200)]
        features = np.arange(200.0)[:, None]
        args = {"captions_per_image": per_image, "batch_size": 16, "seed": 0}
        plain = CaptionDataset(features, caps, **args)
        bucketed = CaptionDataset(features, caps, bucket_by_length=True, **args)
        served = {}
        for name, ds in (("plain", plain), ("bucketed", bucketed)):
            batches = [ds.get_batch(i, 0) for i in range(len(ds))]
            steps = [(b[2]["decoder_output"] > 0).sum(axis=1) for b in batches]
            widths = [b[2]["decoder_output"].shape[1] for b in batches]
            longest = [int(s.max()) for s in steps]
            assert widths == [w + (i == 1 and w == longest[0]) for i, w in enumerate(longest)]
            real = sum(int(s.sum()) for s in steps)
            served[name] = 1 - real / sum(len(s) * w for s, w in zip(steps, widths, strict=True))
            assert ds.padding_fraction(0) == pytest.approx(served[name])
            if name == "bucketed":
                spread = [int(s.max() - s.min()) for s in steps]
                assert max(spread[:-1]) <= 4  # sorted windows of 200-600 captions of 2-30 steps (plain: ~25)
            images = np.concatenate([b[0]["transfer_values_input"][:, 0] for b in batches]).astype(int)
            targets = [tuple(row[w > 0].tolist()) for b in batches
                       for row, w in zip(b[1]["decoder_output"], b[2]["decoder_output"], strict=True)]
            if per_image == "all":
                assert sorted(zip(images.tolist(), targets, strict=True)) == all_pairs(caps)
                assert len(steps[-1]) == 600 % 16
            else:
                assert sorted(images.tolist()) == list(range(200))
                assert all((i, t) in set(all_pairs(caps)) for i, t in zip(images.tolist(), targets, strict=True))
        assert served["bucketed"] < 0.5 * served["plain"]

    def test_bucketing_with_one_caption_per_image_draws_new_captions_each_epoch(self, rng):
        """Bucketed "one": each epoch one caption of every image, drawn afresh, so over epochs captions of
        every length get drawn, not only the short ones that bucketing puts first."""
        caps = [[caption(rng, 1, 30) for _ in range(3)] for _ in range(40)]
        ds = CaptionDataset(np.arange(40.0)[:, None], caps, batch_size=8, seed=0, bucket_by_length=True)
        drawn = [sorted(pairs(ds, e)) for e in range(8)]
        assert all(sorted(i for i, _ in d) == list(range(40)) for d in drawn)
        assert len({tuple(d) for d in drawn}) == 8
        assert len(set().union(*drawn)) > 100  # of 120 pairs

    def test_bucketed_epochs_differ(self, rng):
        caps = [[caption(rng, 1, 30)] for _ in range(200)]
        ds = CaptionDataset(np.zeros((200, 1)), caps, batch_size=16, seed=0, bucket_by_length=True)
        assert ds.sampler.order(0).tolist() != ds.sampler.order(1).tolist()

    def test_images_without_captions_are_warned_about_and_left_out(self):
        with pytest.warns(UserWarning, match="2 of 4 images have no caption"):
            ds = CaptionDataset(np.arange(4.0)[:, None], [[2, 4, 3], [2, 5, 3]], image_ids=[3, 1], batch_size=4)
        assert sorted(ds[0][0]["transfer_values_input"][:, 0].tolist()) == [1.0, 3.0]


@pytest.mark.portable
class TestCaptionForms:
    def test_every_form_gives_the_same_pairs(self, corpus):
        features, nested = corpus
        flat = [c for caps in nested for c in caps]
        owners = [i for i, caps in enumerate(nested) for _ in caps]
        padded = keras.utils.pad_sequences(flat, padding="post", value=0)
        cube = np.zeros((30, 4, padded.shape[1]), dtype="int32")
        for row, (image, slot) in enumerate((i, j) for i, caps in enumerate(nested) for j in range(len(caps))):
            cube[image, slot] = padded[row]
        forms = [(nested, None), (flat, owners), (padded, owners), (cube, None)]
        expected = all_pairs(nested)
        for captions, image_ids in forms:
            ds = CaptionDataset(features, captions, image_ids=image_ids, captions_per_image="all", batch_size=9, seed=1)
            assert sorted(pairs(ds, 0)) == expected

    def test_a_2d_array_without_image_ids_is_one_caption_per_image(self):
        ds = CaptionDataset(np.arange(3.0)[:, None], np.array([[2, 4, 3, 0], [2, 5, 6, 3], [2, 7, 3, 0]]),
                            batch_size=3, shuffle=False)
        assert ds[0][1]["decoder_output"].tolist() == [[4, 3, 0], [5, 6, 3], [7, 3, 0]]

    def test_memmap_features(self, tmp_path, corpus):
        features, captions = corpus
        mm = np.memmap(tmp_path / "f.dat", dtype="float32", mode="w+", shape=features.shape)
        mm[:] = features
        mm.flush()
        ds = CaptionDataset(np.memmap(tmp_path / "f.dat", dtype="float32", mode="r", shape=features.shape), captions,
                            batch_size=30, shuffle=False)
        x = ds[0][0]["transfer_values_input"]
        assert type(x) is np.ndarray
        np.testing.assert_array_equal(x, features)

    def test_a_field_of_a_source(self, corpus):
        features, captions = corpus
        ds = CaptionDataset({"emb": features, "id": np.arange(30)}, captions, features_field="emb", batch_size=30,
                            shuffle=False)
        np.testing.assert_array_equal(ds[0][0]["transfer_values_input"], features)

    def test_an_hdf5_field(self, tmp_path, corpus):
        hdf5 = pytest.importorskip("kseq.sources.hdf5")
        h5py = pytest.importorskip("h5py")
        features, captions = corpus
        with h5py.File(tmp_path / "f.h5", "w") as f:
            f.create_dataset("features", data=features)
            f.create_dataset("label", data=np.arange(30))
        source = hdf5.HDF5Source(tmp_path / "f.h5")
        ds = CaptionDataset(source, captions, features_field="features", batch_size=8, seed=0)
        in_memory = CaptionDataset(features, captions, batch_size=8, seed=0)
        clone = pickle.loads(pickle.dumps(ds))
        for i in range(len(ds)):
            expected = in_memory.get_batch(i, 1)[0]["transfer_values_input"]
            np.testing.assert_array_equal(clone.get_batch(i, 1)[0]["transfer_values_input"], expected)


@pytest.mark.portable
class TestValidation:
    def test_captions_of_missing_images(self):
        with pytest.raises(StructureError, match=r"2 captions refer to missing images: features has 2 rows"):
            CaptionDataset(np.zeros((2, 1)), [[2, 4, 3]] * 3, image_ids=[0, 2, -1])

    @pytest.mark.parametrize("bad", [[], [2], [0, 0]])
    def test_empty_or_one_token_captions(self, bad):
        with pytest.raises(StructureError, match="1 captions have fewer than 2 tokens"):
            CaptionDataset(np.zeros((2, 1)), [[[2, 4, 3]], [bad]])

    def test_pad_value_inside_a_caption(self):
        with pytest.raises(StructureError, match=r"pad_value=0 inside them \(first: caption 1: \[2, 0, 5, 3\]\)"):
            CaptionDataset(np.zeros((2, 1)), [[[2, 4, 3]], [[2, 0, 5, 3]]])

    def test_another_pad_value_makes_zero_a_token(self):
        ds = CaptionDataset(np.zeros((1, 1)), [[[2, 0, 5, 3]]], pad_value=-1, batch_size=1)
        assert ds[0][1]["decoder_output"].tolist() == [[0, 5, 3]]

    @pytest.mark.parametrize("captions", [np.zeros((2, 3, 4), dtype="int32"), []])
    def test_no_caption_at_all(self, captions):
        with pytest.raises(StructureError, match="captions holds no caption"):
            CaptionDataset(np.zeros((2, 1)), captions, image_ids=None if len(captions) else [])

    def test_an_object_array_of_ragged_captions(self):
        ragged = np.empty(2, dtype=object)
        ragged[:] = [[[2, 4, 3]], [[2, 5, 6, 3], [2, 3]]]
        ds = CaptionDataset(np.eye(2), ragged, captions_per_image="all", batch_size=3, shuffle=False)
        assert ds[0][1]["decoder_output"].tolist() == [[4, 3, 0], [5, 6, 3], [3, 0, 0]]

    def test_text_captions_ask_for_tokenizing(self):
        with pytest.raises(StructureError, match="Tokenize first"):
            CaptionDataset(np.zeros((1, 1)), [["a red circle"]])

    def test_flat_list_without_image_ids(self):
        with pytest.raises(StructureError, match="Pass image_ids="):
            CaptionDataset(np.zeros((2, 1)), [[2, 4, 3], [2, 5, 3]])

    def test_one_list_per_image(self):
        with pytest.raises(StructureError, match=r"captions has 1 entries .* but features has 2 rows"):
            CaptionDataset(np.zeros((2, 1)), [[[2, 4, 3]]])

    def test_an_open_h5py_dataset_is_refused(self, tmp_path):
        h5py = pytest.importorskip("h5py")
        with h5py.File(tmp_path / "f.h5", "w") as f:
            f.create_dataset("x", data=np.zeros((2, 3)))
            with pytest.raises(StructureError, match="cannot be pickled"):
                CaptionDataset(f["x"], [[[2, 3]], [[2, 3]]])

    def test_unknown_features_field(self):
        with pytest.raises(StructureError, match=r"Expected one of \['a', 'b'\]. Received features_field=None"):
            CaptionDataset({"a": np.zeros((1, 1)), "b": np.zeros((1, 1))}, [[[2, 3]]])

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"captions_per_image": "two"}, "captions_per_image must be"),
            ({"weighting": "sum"}, "weighting must be one of"),
            ({"max_length": 1}, "max_length must be an integer >= 2"),
            ({"pad_to_multiple": 0}, "pad_to_multiple must be an integer >= 1"),
            ({"input_names": ("x",)}, "input_names must be two distinct names"),
        ],
    )
    def test_bad_arguments_fail_at_construction(self, kwargs, match):
        with pytest.raises(StructureError, match=match):
            CaptionDataset(np.zeros((1, 1)), [[[2, 3]]], **kwargs)


class TestFit:
    @pytest.mark.portable
    def test_fit_through_batches_of_varying_width(self):
        """A real fit (TF: one signature; JAX: one compile per width) consumes every width and learns."""
        widths = []

        class Recording(CaptionDataset):
            def get_batch(self, index, epoch=None):
                batch = super().get_batch(index, epoch)
                widths.append(batch[0]["decoder_input"].shape[1])
                return batch

        ds = Recording(*learnable(), captions_per_image="all", batch_size=8, seed=0)
        model = captioner(12, 4)
        hist = model.fit(ds.for_model(model), epochs=6, verbose=0)
        assert len(set(widths)) >= 3
        assert hist.history["loss"][-1] < 0.4 * hist.history["loss"][0]  # the floor: two caption lengths per kind

    @pytest.mark.portable
    def test_fit_a_dict_model_with_a_fixed_length_input(self, corpus):
        ds = CaptionDataset(*corpus, fixed_length=True, max_length=12, batch_size=8, seed=0)
        model = captioner(20, 6, length=ds.sequence_length, dict_io=True)
        assert "batches match the model as they are" in str(ds.check(model, verbose=False))
        hist = model.fit(ds, epochs=2, verbose=0)
        assert np.isfinite(hist.history["loss"]).all()

    @pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TF signature quirk")
    def test_keras_fixes_the_width_of_two_equal_first_batches(self):
        """Why the widening exists: Keras 3.15 on TF rejects a later batch wider than batches 0 and 1."""

        class Widths(keras.utils.PyDataset):
            def __len__(self):
                return 3

            def __getitem__(self, i):
                width = [3, 3, 5][i]
                return np.ones((4, width), "int32"), np.zeros((4, width), "int32")

        t = keras.Input((None,), dtype="int32")
        model = keras.Model(t, keras.layers.Dense(5)(keras.layers.Embedding(10, 4)(t)))
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with pytest.raises(Exception, match=r"shape \(4, 5\) where an element of shape \(None, 3\) was expected"):
            model.fit(Widths(), epochs=1, verbose=0, shuffle=False)

    @pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TextVectorization needs TensorFlow")
    def test_text_vectorization_output_feeds_captions(self):
        texts = ["startseq a red circle endseq", "startseq a blue square endseq", "startseq red circle endseq"]
        vectorize = keras.layers.TextVectorization(output_mode="int")
        vectorize.adapt(texts)
        ids = keras.ops.convert_to_numpy(vectorize(texts))
        ds = CaptionDataset(np.eye(2), ids, image_ids=[0, 1, 0], captions_per_image="all", batch_size=3,
                            shuffle=False, weighting="mask")
        vocab = vectorize.get_vocabulary()
        _, y, w = ds[0]
        kept = [row[mask > 0] for row, mask in zip(y["decoder_output"], w["decoder_output"], strict=True)]
        words = [[vocab[t] for t in row] for row in kept]
        assert words == [["a", "red", "circle", "endseq"], ["red", "circle", "endseq"],
                         ["a", "blue", "square", "endseq"]]
