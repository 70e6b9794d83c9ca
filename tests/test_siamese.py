import pickle

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kseq import ArraySource, StructureError
from kseq.datasets.siamese import SiamesePairDataset, TripletDataset
from kseq.samplers.pairs import ClassIndex, PairSampler, PKSampler, TripletSampler, positives_in
from kseq.sources import HDF5Source


def labels_for(n, classes, seed=0):
    """``n`` labels over ``classes`` classes, every class with at least ``n // classes`` rows, in a random order."""
    return np.random.default_rng(seed).permutation(np.arange(n) % classes)


def clusters(n=120, classes=4, dim=4, seed=0):
    """Rows near one of ``classes`` centres 4 apart on the axes: pairs are easy to tell apart."""
    rng = np.random.default_rng(seed)
    label = labels_for(n, classes, seed)
    centres = 4.0 * np.eye(classes, max(dim, classes))
    x = (centres[label] + rng.normal(scale=0.5, size=centres[label].shape)).astype("float32")
    return {"x": x, "label": label}


MODES = ["rows", "classes", "pk"]


def mode_kwargs(mode, batch):
    """Sampler arguments for one of the three ways to draw left rows: row-balanced, class-balanced, P x K."""
    if mode == "pk":
        return {"classes_per_batch": 2, "batch_size": 2 * max(2, batch // 2)}
    return {"balance": mode, "batch_size": batch}


def epoch_of(sampler, epoch):
    return np.concatenate([sampler.indices(epoch, b) for b in range(len(sampler))])


class RecordingSource(ArraySource):
    """A real ArraySource (here over memmaps) that records every read."""

    def __init__(self, fields):
        super().__init__(fields)
        self.reads = []

    def read(self, indices, fields=None):
        self.reads.append((np.asarray(indices).copy(), None if fields is None else list(fields)))
        return super().read(indices, fields)


class RecordingFileSource:
    """A Source that is not an ArraySource, as a file-backed one is: it records every read it serves."""

    def __init__(self, fields):
        self._rows = ArraySource(fields)
        self.fields = self._rows.fields
        self.reads = []

    def __len__(self):
        return len(self._rows)

    def read(self, indices, fields=None):
        self.reads.append((np.asarray(indices).copy(), None if fields is None else list(fields)))
        return self._rows.read(indices, fields)


@pytest.mark.portable
class TestClassIndex:
    def test_groups_rows_by_sorted_class(self):
        idx = ClassIndex(np.array(["b", "a", "b", "a", "a"]))
        assert idx.classes.tolist() == ["a", "b"]
        assert [idx.members(c).tolist() for c in range(2)] == [[1, 3, 4], [0, 2]]
        assert idx.position.tolist() == [0, 0, 1, 1, 2]

    def test_column_labels_are_accepted(self):
        assert ClassIndex(np.array([[0], [1], [0], [1]])).sizes.tolist() == [2, 2]

    def test_one_hot_labels_are_refused_with_the_fix(self):
        with pytest.raises(StructureError, match=r"shape \(n,\) or \(n, 1\). Received shape \(4, 2\).*argmax"):
            ClassIndex(np.eye(2)[[0, 1, 0, 1]])

    def test_continuous_targets_are_refused(self):
        with pytest.raises(StructureError, match="look like regression targets"):
            ClassIndex(np.array([0.5, 1.0, 0.5, 1.0]))

    def test_singleton_classes_are_named(self):
        with pytest.raises(StructureError, match=r"Class\(es\) \[7, 9\] of label 'label' have a single row.*"
                                                 r"drop_singletons=True"):
            ClassIndex(np.array([1, 7, 1, 9, 2, 2]))

    def test_drop_singletons_leaves_their_rows_out(self):
        idx = ClassIndex(np.array([1, 7, 1, 9, 2, 2]), singletons="drop")
        assert idx.classes.tolist() == [1, 2]
        assert sorted(idx.rows.tolist()) == [0, 2, 4, 5]
        assert idx.class_of[[1, 3]].tolist() == [-1, -1]


@pytest.mark.portable
class TestPairSampler:
    @settings(max_examples=40, deadline=None)
    @given(n=st.integers(8, 200), classes=st.integers(2, 6), batch=st.integers(1, 48),
           fraction=st.floats(0, 1), seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(MODES))
    def test_exact_positives_per_batch_never_self_and_negatives_cross_classes(
        self, n, classes, batch, fraction, seed, mode
    ):
        idx = ClassIndex(labels_for(n, min(classes, n // 2), seed % 100))
        kwargs = mode_kwargs(mode, batch)
        s = PairSampler(idx, seed=seed, positive_fraction=fraction, **kwargs)
        for b in range(len(s)):
            pairs = s.indices(1, b)
            same = idx.class_of[pairs[:, 0]] == idx.class_of[pairs[:, 1]]
            assert same.sum() == positives_in(len(pairs), fraction)
            assert (pairs[:, 0] != pairs[:, 1]).all()

    def test_every_row_is_left_exactly_once_by_default(self):
        s = PairSampler(ClassIndex(labels_for(103, 5)), batch_size=16, seed=0)
        assert sorted(epoch_of(s, 0)[:, 0].tolist()) == list(range(103))

    def test_more_pairs_than_rows_spread_the_left_rows_evenly(self):
        """With N = 2.5 m pairs each row is the left element 2 or 3 times."""
        s = PairSampler(ClassIndex(labels_for(40, 4)), batch_size=8, seed=0, pairs_per_epoch=100)
        counts = np.bincount(epoch_of(s, 3)[:, 0], minlength=40)
        assert counts.sum() == 100
        assert set(counts.tolist()) == {2, 3}

    def test_negative_class_is_uniform_over_the_other_classes(self):
        """Even when one class holds 70% of the rows, it is not over-represented as a negative partner."""
        labels = np.repeat([0, 1, 2, 3], [700, 100, 100, 100])
        idx = ClassIndex(labels)
        s = PairSampler(idx, batch_size=250, seed=1, positive_fraction=0.0, pairs_per_epoch=20_000)
        pairs = epoch_of(s, 0)
        left, right = idx.class_of[pairs[:, 0]], idx.class_of[pairs[:, 1]]
        partners = np.bincount(right[left == 0], minlength=4)[1:]
        assert np.allclose(partners / partners.sum(), 1 / 3, atol=0.03)

    def test_class_balance_makes_negative_class_pairs_uniform(self):
        """balance='classes': each class is left equally often, so every ordered pair of classes is equally likely."""
        labels = np.repeat([0, 1, 2, 3], [700, 100, 100, 7])
        idx = ClassIndex(labels)
        s = PairSampler(idx, batch_size=250, seed=1, positive_fraction=0.0, pairs_per_epoch=24_000, balance="classes")
        pairs = epoch_of(s, 0)
        left, right = idx.class_of[pairs[:, 0]], idx.class_of[pairs[:, 1]]
        assert np.bincount(left).tolist() == [6000] * 4
        counts = np.zeros((4, 4))
        np.add.at(counts, (left, right), 1)
        off_diagonal = counts[~np.eye(4, dtype=bool)] / len(pairs)
        assert np.allclose(off_diagonal, 1 / 12, atol=0.01)

    def test_class_balance_uses_the_rows_of_a_class_evenly(self):
        """The 7 rows of a small class share its 6000 left turns: 857 or 858 each."""
        idx = ClassIndex(np.repeat([0, 1, 2, 3], [700, 100, 100, 7]))
        s = PairSampler(idx, batch_size=250, seed=1, pairs_per_epoch=24_000, balance="classes")
        uses = np.bincount(epoch_of(s, 0)[:, 0], minlength=907)
        assert set(uses[idx.members(3)].tolist()) == {857, 858}
        assert set(uses[idx.members(0)].tolist()) == {8, 9}

    def test_class_balance_with_pk_is_refused(self):
        with pytest.raises(StructureError, match="no effect with classes_per_batch"):
            PairSampler(ClassIndex(labels_for(40, 4)), batch_size=8, seed=0, classes_per_batch=2, balance="classes")

    def test_same_seed_same_pairs(self):
        a = PairSampler(ClassIndex(labels_for(50, 3)), batch_size=7, seed=11)
        b = PairSampler(ClassIndex(labels_for(50, 3)), batch_size=7, seed=11)
        assert np.array_equal(epoch_of(a, 2), epoch_of(b, 2))

    def test_epochs_differ(self):
        s = PairSampler(ClassIndex(labels_for(50, 3)), batch_size=7, seed=11)
        assert not np.array_equal(epoch_of(s, 0), epoch_of(s, 1))

    def test_no_reshuffle_repeats_the_pairs(self):
        s = PairSampler(ClassIndex(labels_for(50, 3)), batch_size=7, seed=11, reshuffle=False)
        assert np.array_equal(epoch_of(s, 0), epoch_of(s, 5))

    def test_any_batch_in_any_order(self):
        """A fresh sampler asked for batches backwards, across epochs, gives the same pairs."""
        s = PairSampler(ClassIndex(labels_for(60, 4)), batch_size=9, seed=5)
        in_order = {(e, b): s.indices(e, b) for e in range(2) for b in range(len(s))}
        fresh = PairSampler(ClassIndex(labels_for(60, 4)), batch_size=9, seed=5)
        for key in reversed(list(in_order)):
            assert np.array_equal(fresh.indices(*key), in_order[key])

    def test_golden_pairs(self):
        """The pairs for (seed=0, epoch=0) are pinned: changing them silently changes every user's runs."""
        s = PairSampler(ClassIndex(np.array([0, 0, 1, 1, 2, 2])), batch_size=6, seed=0)
        assert s.indices(0, 0).tolist() == GOLDEN_PAIRS

    @pytest.mark.parametrize("fraction", [-0.1, 1.5, True, "0.5"])
    def test_bad_positive_fraction(self, fraction):
        with pytest.raises(StructureError, match=r"positive_fraction must be a number in \[0, 1\]"):
            PairSampler(ClassIndex(labels_for(10, 2)), batch_size=4, seed=0, positive_fraction=fraction)

    def test_one_class_has_no_negatives(self):
        with pytest.raises(StructureError, match=r"one class only \(\[3\]\).*positive_fraction=1.0"):
            PairSampler(ClassIndex(np.full(10, 3)), batch_size=4, seed=0)

    def test_one_class_with_positives_only_is_allowed(self):
        pairs = PairSampler(ClassIndex(np.full(10, 3)), batch_size=4, seed=0, positive_fraction=1.0).indices(0, 0)
        assert (pairs[:, 0] != pairs[:, 1]).all()


GOLDEN_PAIRS = [[0, 4], [2, 3], [5, 4], [3, 2], [4, 2], [1, 4]]


@pytest.mark.portable
class TestPK:
    def test_each_batch_holds_p_classes_of_k_rows(self):
        idx = ClassIndex(labels_for(200, 10))
        s = PairSampler(idx, batch_size=12, classes_per_batch=4, seed=0)
        for b in range(len(s)):
            left = s.indices(0, b)[:, 0]
            counts = np.bincount(idx.class_of[left], minlength=10)
            assert sorted(counts[counts > 0].tolist()) == [3, 3, 3, 3]
            assert len(set(left.tolist())) == 12

    def test_partners_come_from_the_block(self):
        """Right rows are rows of the batch's own P x K block, so one read covers the batch."""
        s = PairSampler(ClassIndex(labels_for(200, 10)), batch_size=12, classes_per_batch=4, seed=1)
        for b in range(len(s)):
            pairs = s.indices(2, b)
            assert set(pairs[:, 1].tolist()) <= set(pairs[:, 0].tolist())

    def test_small_class_repeats_rows_but_never_pairs_a_row_with_itself(self):
        idx = ClassIndex(np.repeat([0, 1], [2, 50]))
        s = PairSampler(idx, batch_size=10, classes_per_batch=2, seed=0, positive_fraction=1.0)
        for b in range(len(s)):
            pairs = s.indices(0, b)
            assert np.bincount(idx.class_of[pairs[:, 0]]).tolist() == [5, 5]
            assert (pairs[:, 0] != pairs[:, 1]).all()
            assert (idx.class_of[pairs[:, 0]] == idx.class_of[pairs[:, 1]]).all()

    @pytest.mark.parametrize(
        ("batch_size", "p", "match"),
        [(10, 4, "divisible by classes_per_batch"), (8, 8, "has only 5 classes"), (4, 4, "K=1 row per class"),
         (4, 1, "no other class")],
    )
    def test_layouts_that_do_not_fit(self, batch_size, p, match):
        with pytest.raises(StructureError, match=match):
            PairSampler(ClassIndex(labels_for(50, 5)), batch_size=batch_size, classes_per_batch=p, seed=0)

    def test_pk_sampler_gives_single_rows_grouped_by_class(self):
        idx = ClassIndex(labels_for(90, 9))
        s = PKSampler(idx, batch_size=8, classes_per_batch=4, seed=3)
        rows = s.indices(0, 0)
        assert rows.shape == (8,)
        assert idx.class_of[rows].reshape(4, 2).tolist() == [[c, c] for c in idx.class_of[rows][::2].tolist()]
        assert len(s) == 12  # ceil(90 / 8): every batch full


@pytest.mark.portable
class TestTripletSampler:
    @settings(max_examples=40, deadline=None)
    @given(n=st.integers(6, 150), classes=st.integers(2, 6), batch=st.integers(1, 40),
           seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(MODES), epoch=st.integers(0, 20))
    def test_positive_shares_the_class_but_not_the_row_and_negative_never_shares_it(
        self, n, classes, batch, seed, mode, epoch
    ):
        idx = ClassIndex(labels_for(n, min(classes, n // 2), seed % 100))
        kwargs = mode_kwargs(mode, batch)
        t = epoch_of(TripletSampler(idx, seed=seed, **kwargs), epoch)
        anchor, positive, negative = (idx.class_of[t[:, j]] for j in range(3))
        assert (t[:, 0] != t[:, 1]).all()
        assert (anchor == positive).all()
        assert (anchor != negative).all()

    def test_anchors_cover_every_row_once(self):
        t = epoch_of(TripletSampler(ClassIndex(labels_for(77, 3)), batch_size=10, seed=2), 0)
        assert sorted(t[:, 0].tolist()) == list(range(77))


@pytest.mark.portable
class TestSiamesePairDataset:
    def test_x_is_named_by_side_and_y_says_same_class(self):
        data = clusters()
        ds = SiamesePairDataset(data, batch_size=16, seed=0)
        x, y = ds[0]
        assert sorted(x) == ["left", "right"]
        assert x["left"].shape == (16, 4)
        assert y.dtype == np.float32
        left = [np.flatnonzero((data["x"] == row).all(axis=1))[0] for row in x["left"]]
        right = [np.flatnonzero((data["x"] == row).all(axis=1))[0] for row in x["right"]]
        assert y.tolist() == (data["label"][left] == data["label"][right]).astype(float).tolist()
        assert y.sum() == 8

    def test_same_label_zero_flips_the_target(self):
        """keras.io's contrastive loss wants 0 for similar pairs: same_label=0 gives exactly the complement."""
        one = SiamesePairDataset(clusters(), batch_size=16, seed=3)
        zero = SiamesePairDataset(clusters(), batch_size=16, seed=3, same_label=0)
        assert np.array_equal(one[1][1], 1 - zero[1][1])
        assert np.array_equal(one[1][0]["left"], zero[1][0]["left"])

    def test_target_name_gives_a_dict(self):
        _, y = SiamesePairDataset(clusters(), batch_size=8, seed=0, target_name="similar")[0]
        assert list(y) == ["similar"]

    def test_several_fields_are_suffixed_by_side(self):
        data = {**clusters(), "meta": np.arange(120)}
        ds = SiamesePairDataset(data, batch_size=8, seed=0)
        x, _ = ds[0]
        assert sorted(x) == ["meta_left", "meta_right", "x_left", "x_right"]
        assert np.array_equal(data["x"][x["meta_left"]], x["x_left"])

    def test_dataframe_with_string_labels(self):
        df = pd.DataFrame({"v": np.arange(12.0), "kind": list("aabbcc") * 2})
        ds = SiamesePairDataset(df, label="kind", batch_size=6, seed=0, positive_fraction=1 / 3)
        x, y = ds[0]
        kinds = df["kind"].to_numpy()
        same = kinds[x["left"].astype(int)] == kinds[x["right"].astype(int)]
        assert y.tolist() == same.astype(float).tolist()
        assert y.sum() == 2

    def test_reads_only_each_sides_rows_from_a_memmap(self, tmp_path):
        """The label is read once, at construction; a batch then reads each side's rows of x, nothing else."""
        data = clusters(n=200)
        x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype="float32", shape=data["x"].shape)
        x[:] = data["x"]
        source = RecordingSource({"x": x, "label": data["label"]})
        ds = SiamesePairDataset(source, batch_size=16, seed=0)
        assert [f for _, f in source.reads] == [["label"]]
        source.reads.clear()
        pairs = ds.sampler.indices(ds.epoch, 4)
        x_batch, _ = ds[4]
        assert [(rows.tolist(), fields) for rows, fields in source.reads] == [
            (pairs[:, 0].tolist(), ["x"]), (pairs[:, 1].tolist(), ["x"])
        ]
        assert np.array_equal(x_batch["right"], data["x"][pairs[:, 1]])

    def test_other_sources_are_read_once_per_batch_at_the_sorted_union(self):
        """A P x K batch names each block row on both sides; a file-backed source reads each row once."""
        data = clusters(n=120, classes=6)
        source = RecordingFileSource(data)
        ds = TripletDataset(source, batch_size=12, classes_per_batch=3, seed=0)
        source.reads.clear()
        triplets = ds.sampler.indices(ds.epoch, 2)
        (x,) = ds[2]
        (rows, fields), = source.reads
        assert fields == ["x"]
        assert rows.tolist() == sorted(set(triplets.ravel().tolist()))
        assert len(rows) == 12
        assert np.array_equal(x["negative"], data["x"][triplets[:, 2]])

    @pytest.mark.parametrize("layout", ["contiguous", "chunked+gzip"])
    def test_hdf5_file_gives_the_same_pairs_as_memory(self, tmp_path, layout):
        """From an HDF5 path (memory-mapped or read in chunks), batches equal those of the same arrays in memory."""
        data = clusters(n=64)
        options = {"chunks": (8, 4), "compression": "gzip"} if layout == "chunked+gzip" else {}
        with h5py.File(tmp_path / "pairs.h5", "w") as f:
            f.create_dataset("x", data=data["x"], **options)
            f.create_dataset("label", data=data["label"])
        ds = SiamesePairDataset(str(tmp_path / "pairs.h5"), batch_size=8, seed=0)
        in_memory = SiamesePairDataset(data, batch_size=8, seed=0)
        assert isinstance(ds.source, HDF5Source)
        for b in range(len(ds)):
            got, want = ds[b], in_memory[b]
            assert np.array_equal(got[0]["left"], want[0]["left"])
            assert np.array_equal(got[0]["right"], want[0]["right"])
            assert np.array_equal(got[1], want[1])

    def test_shuffle_false_gives_the_same_pairs_every_epoch(self):
        ds = SiamesePairDataset(clusters(), batch_size=16, shuffle=False, seed=0)
        first = ds[2][0]["right"]
        ds.on_epoch_end()
        assert np.array_equal(ds[2][0]["right"], first)

    def test_pickle_keeps_seed_epoch_and_pairs(self):
        ds = SiamesePairDataset(clusters(), batch_size=16, seed=4)
        ds.on_epoch_end()
        clone = pickle.loads(pickle.dumps(ds))
        assert clone.epoch == 1
        assert np.array_equal(clone[3][0]["right"], ds[3][0]["right"])

    def test_pk_batches_through_the_dataset(self):
        data = clusters(n=120, classes=6)
        ds = SiamesePairDataset(data, batch_size=12, classes_per_batch=3, seed=0)
        x, y = ds.get_batch(0)
        rows = [np.flatnonzero((data["x"] == r).all(axis=1))[0] for r in x["left"]]
        assert sorted(np.bincount(data["label"][rows], minlength=6).tolist()) == [0, 0, 0, 4, 4, 4]
        assert y.sum() == 6

    def test_singleton_error_names_classes_and_offers_the_option(self):
        data = {"x": np.zeros((7, 2)), "label": np.array([0, 0, 1, 1, 5, 2, 2])}
        with pytest.raises(StructureError, match=r"Class\(es\) \[5\].*drop_singletons=True"):
            SiamesePairDataset(data, batch_size=2)
        ds = SiamesePairDataset(data, batch_size=2, drop_singletons=True, seed=0)
        lefts = np.concatenate([ds.sampler.indices(0, b)[:, 0] for b in range(len(ds))])
        assert sorted(lefts.tolist()) == [0, 1, 2, 3, 5, 6]

    def test_singletons_are_fine_without_positives(self):
        data = {"x": np.zeros((5, 2)), "label": np.array([0, 1, 2, 3, 3])}
        _, y = SiamesePairDataset(data, batch_size=5, positive_fraction=0.0, seed=0)[0]
        assert y.tolist() == [0.0] * 5

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"label": "digit"}, r"label names field\(s\) \['digit'\] .* Expected fields from \['label', 'x'\]"),
            ({"positive_fraction": 2}, r"positive_fraction must be a number in \[0, 1\]"),
            ({"same_label": 2}, r"same_label must be an integer in \[0, 1\]. Received same_label=2. 1: same class"),
            ({"fields": ["nope"]}, r"fields names field\(s\) \['nope'\]"),
            ({"input_names": ("a", "a")}, "2 distinct non-empty names"),
            ({"balance": "samples"}, "balance must be one of 'rows', 'classes'. Received balance='samples'"),
            ({"balance": "classes", "classes_per_batch": 2}, "no effect with classes_per_batch"),
        ],
    )
    def test_bad_arguments_fail_at_construction(self, kwargs, match):
        with pytest.raises(StructureError, match=match):
            SiamesePairDataset(clusters(), **kwargs)

    def test_labels_of_the_wrong_shape(self):
        data = {"x": np.zeros((4, 2)), "label": np.eye(2)[[0, 1, 0, 1]]}
        with pytest.raises(StructureError, match=r"Received shape \(4, 2\)"):
            SiamesePairDataset(data)

    def test_one_class_only(self):
        with pytest.raises(StructureError, match="one class only"):
            SiamesePairDataset({"x": np.zeros((6, 2)), "label": np.zeros(6, int)})


@pytest.mark.portable
class TestTripletDataset:
    def test_triplet_invariants_hold_in_every_batch(self):
        data = clusters(n=90, classes=5)
        ds = TripletDataset({**data, "row": np.arange(90)}, fields=["row"], batch_size=16, seed=0)
        for b in range(len(ds)):
            (x,) = ds[b]
            a, p, n = (x[k] for k in ("anchor", "positive", "negative"))
            assert (a != p).all()
            assert (data["label"][a] == data["label"][p]).all()
            assert (data["label"][a] != data["label"][n]).all()

    @pytest.mark.parametrize(("targets", "expected"), [("zeros", "zeros"), ("labels", "labels")])
    def test_targets(self, targets, expected):
        data = clusters(n=40)
        x, y = TripletDataset({**data, "row": np.arange(40)}, fields="row", batch_size=8, seed=0, targets=targets)[0]
        want = np.zeros(8) if expected == "zeros" else data["label"][x["anchor"]]
        assert np.array_equal(y, want)

    def test_singletons_are_refused_even_at_the_default(self):
        with pytest.raises(StructureError, match=r"Class\(es\) \[9\]"):
            TripletDataset({"x": np.zeros((5, 1)), "label": np.array([0, 0, 1, 1, 9])})


class TestWorkers:
    """Not portable: under JAX worker processes start by forkserver and re-import JAX (seconds)."""

    def test_worker_processes_give_the_same_pairs_as_inline(self):
        """Pairs are a pure function of (seed, epoch, batch): two worker processes reproduce them exactly."""
        inline = SiamesePairDataset(clusters(n=200), batch_size=16, seed=0)
        with SiamesePairDataset(clusters(n=200), batch_size=16, seed=0, workers=2, use_multiprocessing=True) as pooled:
            for _ in range(2):
                for i in range(len(pooled)):
                    (got, y_got), (want, y_want) = pooled[i], inline[i]
                    assert np.array_equal(got["left"], want["left"])
                    assert np.array_equal(got["right"], want["right"])
                    assert np.array_equal(y_got, y_want)
                pooled.on_epoch_end()
                inline.on_epoch_end()


def siamese_model(dim=4, structure="dict"):
    """A shared tower; the output is P(same class) from the absolute difference of the embeddings."""
    tower = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)])
    left, right = keras.Input((dim,), name="left"), keras.Input((dim,), name="right")
    diff = keras.layers.Lambda(lambda t: keras.ops.abs(t[0] - t[1]))([tower(left), tower(right)])
    out = keras.layers.Dense(1, activation="sigmoid", name="same")(diff)
    model = keras.Model({"left": left, "right": right} if structure == "dict" else [left, right], out)
    model.compile(keras.optimizers.Adam(0.02), "binary_crossentropy", metrics=["binary_accuracy"])
    return model


class TestFit:
    @pytest.mark.portable
    def test_a_siamese_network_learns_to_tell_pairs_apart(self):
        keras.utils.set_random_seed(0)
        train = SiamesePairDataset(clusters(n=160, seed=1), batch_size=16, seed=0)
        held_out = SiamesePairDataset(clusters(n=80, seed=2), batch_size=40, shuffle=False, seed=2)  # unseen rows
        model = siamese_model()
        model.fit(train, epochs=12, verbose=0)
        assert model.evaluate(held_out, verbose=0, return_dict=True)["binary_accuracy"] > 0.9

    def test_list_built_model_after_check_and_new_pairs_every_epoch(self):
        """Through ds.for_model() a list-built model trains on the named pairs; each training epoch pairs rows anew."""
        seen = {}

        class Recording(SiamesePairDataset):
            def read_rows(self, indices):
                epoch, index = self.batch_position()  # a batch read twice (Keras's peek, then training) is one
                seen.setdefault(epoch, {})[index] = indices.copy()
                return super().read_rows(indices)

        ds = Recording(clusters(n=64), batch_size=16, seed=0)
        model = siamese_model(structure="list")
        view = ds.for_model(model)
        assert "x dict ['left', 'right'] must be passed as a tuple" in str(view.report)
        hist = model.fit(view, epochs=3, verbose=0)
        assert np.isfinite(hist.history["loss"]).all()
        trained = [np.concatenate([v[i] for i in sorted(v)]) for v in seen.values() if len(v) == len(ds)]
        assert len(trained) >= 3
        assert all(sorted(t[:, 0].tolist()) == list(range(64)) for t in trained)
        assert len({tuple(map(tuple, t[np.argsort(t[:, 0])].tolist())) for t in trained}) == len(trained)


def unnamed_siamese_model(dim=4):
    """The keras.io contrastive example's pattern: two unnamed Inputs in a list, a shared tower, a distance."""
    tower = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)])
    left, right = keras.Input((dim,)), keras.Input((dim,))
    diff = keras.layers.Lambda(lambda t: keras.ops.abs(t[0] - t[1]))([tower(left), tower(right)])
    model = keras.Model([left, right], keras.layers.Dense(1, activation="sigmoid")(diff))
    model.compile(keras.optimizers.Adam(0.02), "binary_crossentropy", metrics=["binary_accuracy"])
    return model


class TestUnnamedInputs:
    """Issue 24, items 1 and 2: a list of unnamed Inputs, as the keras.io Siamese example builds it."""

    @pytest.mark.portable
    def test_left_and_right_feed_the_inputs_by_position_and_train(self):
        keras.utils.set_random_seed(0)
        train = SiamesePairDataset(clusters(n=160, seed=1), batch_size=16, seed=0)
        held_out = SiamesePairDataset(clusters(n=80, seed=2), batch_size=40, shuffle=False, seed=2)
        model = unnamed_siamese_model()
        view = train.for_model(model)
        first, second = (layer.name for layer in model.layers[:2])
        assert f"x by position ('left' -> '{first}', 'right' -> '{second}')" in str(view.report)
        model.fit(view, epochs=12, verbose=0)
        assert model.evaluate(held_out.for_model(model), verbose=0, return_dict=True)["binary_accuracy"] > 0.9

    def test_the_order_is_the_declared_one(self):
        """input_names=("right", "left") puts the right rows in the model's first Input."""
        ds = SiamesePairDataset(clusters(n=32), batch_size=8, seed=0, input_names=("right", "left"))
        view = ds.for_model(unnamed_siamese_model())
        (first, second), _ = view[0]
        x, _ = ds.get_batch(0)
        assert np.array_equal(first, x["right"])
        assert np.array_equal(second, x["left"])

    def test_error_suggests_input_names_and_the_summary_names(self):
        """A model with names of its own: the fix is input_names= (what the class takes), named as in the summary."""
        ds = SiamesePairDataset(clusters(n=32), batch_size=8, seed=0)
        a, b = keras.Input((4,), name="query"), keras.Input((4,), name="candidate")
        model = keras.Model([a, b], keras.layers.Concatenate()([a, b]))
        with pytest.raises(StructureError) as e:
            ds.check(model)
        assert str(e.value) == (
            "Model input(s) ['query', 'candidate'] have no field in this dataset. Expected inputs ['query', "
            "'candidate'] (as model.summary() shows them). Received inputs ['left', 'right']. "
            "Pass input_names=('query', 'candidate') to SiamesePairDataset (one name per side, in order), or name "
            "the model's Inputs ['left', 'right']: keras.Input(..., name='left')."
        )

    def test_three_unnamed_inputs_for_a_pair_name_the_summary_names(self):
        ds = SiamesePairDataset(clusters(n=32), batch_size=8, seed=0)
        inputs = [keras.Input((4,)) for _ in range(3)]
        model = keras.Model(inputs, keras.layers.Concatenate()(inputs))
        with pytest.raises(StructureError) as e:
            ds.check(model)
        names = [layer.name for layer in model.layers[:3]]
        assert f"Expected inputs {names}" in str(e.value)
        assert "keras_tensor" not in str(e.value)
        assert "Name the model's Inputs like this SiamesePairDataset's keys ['left', 'right']" in str(e.value)

    def test_triplets_feed_anchor_positive_negative_in_order(self):
        data = clusters(n=32)
        ds = TripletDataset(data, batch_size=8, seed=0, targets="zeros")
        inputs = [keras.Input((4,)) for _ in range(3)]
        model = keras.Model(inputs, keras.layers.Concatenate()(inputs))
        view = ds.for_model(model)
        x, _ = ds.get_batch(0)
        got = model.predict_on_batch(view[0][0])
        np.testing.assert_allclose(got, np.concatenate([x["anchor"], x["positive"], x["negative"]], axis=1))
