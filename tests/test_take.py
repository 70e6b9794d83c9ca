"""kseq.take: batches as arrays, for plotting or scikit-learn (issue 24, item 8)."""

import keras
import numpy as np
import pytest

import kseq
from kseq import StructureError

pytestmark = pytest.mark.portable


def pairs(n=40):
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(n, 3)).astype("float32"), "label": np.arange(n) % 4}


class TestTake:
    def test_a_whole_epoch_is_every_batch_in_order(self):
        ds = kseq.SiamesePairDataset(pairs(), batch_size=8, seed=0)
        x, y = kseq.take(ds)
        batches = [ds.get_batch(i) for i in range(len(ds))]
        assert sorted(x) == ["left", "right"]
        assert x["left"].shape == (40, 3)
        np.testing.assert_array_equal(x["right"], np.concatenate([b[0]["right"] for b in batches]))
        np.testing.assert_array_equal(y, np.concatenate([b[1] for b in batches]))

    def test_n_batches_of_a_given_epoch(self):
        ds = kseq.SiamesePairDataset(pairs(), batch_size=8, seed=0)
        x, y = kseq.take(ds, 2, epoch=3)
        assert y.shape == (16,)
        np.testing.assert_array_equal(x["left"][8:], ds.get_batch(1, 3)[0]["left"])
        assert not np.array_equal(x["left"], kseq.take(ds, 2)[0]["left"])  # epoch 0 pairs differently

    def test_the_dataset_does_not_move(self):
        ds = kseq.SiamesePairDataset(pairs(), batch_size=8, seed=0)
        kseq.take(ds)
        assert (ds.epoch, ds.position) == (0, 0)

    def test_weights_and_tuples_keep_their_structure(self):
        ds = kseq.StatefulSequenceDataset(np.arange(21.0), batch_size=2, timesteps=3)
        x, _, w = kseq.take(ds)
        assert x.shape == (len(ds) * 2, 3, 1)
        assert w.shape == (len(ds) * 2, 3)

    def test_a_plain_pydataset_is_read_by_index(self):
        class Plain(keras.utils.PyDataset):
            def __len__(self):
                return 3

            def __getitem__(self, i):
                return np.full((2, 1), i), np.full(2, i)

        x, _ = kseq.take(Plain())
        assert x[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
        with pytest.raises(StructureError, match="no get_batch"):
            kseq.take(Plain(), epoch=1)

    def test_too_many_batches_are_refused(self):
        ds = kseq.SiamesePairDataset(pairs(), batch_size=8, seed=0)
        with pytest.raises(StructureError, match="between 1 and len"):
            kseq.take(ds, 6)

    def test_batches_of_varying_width_are_refused_with_the_way_out(self):
        feats = np.zeros((3, 2), "float32")
        caps = [[[2, 5, 3]], [[2, 5, 6, 7, 8, 9, 3]], [[2, 3]]]
        ds = kseq.CaptionDataset(feats, caps, batch_size=1, shuffle=False)
        with pytest.raises(StructureError, match="fixed_length=True"):
            kseq.take(ds)
