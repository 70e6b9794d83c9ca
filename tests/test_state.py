"""Dataset state: get_state()/set_state() (NOTE [ dataset state ])."""

import json
import warnings

import numpy as np
import pytest

from kseq import (
    CaptionDataset,
    Dataset,
    KseqError,
    MultiInputDataset,
    SiamesePairDataset,
    StatefulSequenceDataset,
    TripletDataset,
)

pytestmark = pytest.mark.portable

FAMILY = [Dataset, MultiInputDataset, CaptionDataset, SiamesePairDataset, TripletDataset, StatefulSequenceDataset]


def make(cls, **kwargs):
    rng = np.random.default_rng(0)
    if cls is CaptionDataset:
        caps = [[[1, *rng.integers(2, 9, rng.integers(1, 6)).tolist(), 9] for _ in range(2)] for _ in range(21)]
        return cls(rng.normal(size=(21, 4)), caps, **{"batch_size": 8, "seed": 1, **kwargs})
    if cls is StatefulSequenceDataset:
        return cls([rng.normal(size=30), rng.normal(size=17)], **{"batch_size": 2, "timesteps": 4, "seed": 1,
                                                                 **kwargs})
    data = {"x": rng.normal(size=(43, 3)), "label": np.arange(43) % 4}
    if cls is MultiInputDataset:
        return cls(data, inputs="x", targets="label", **{"batch_size": 8, "seed": 1, **kwargs})
    return cls(data, **{"batch_size": 8, "seed": 1, **kwargs})


def same(a, b):
    for u, v in zip(a, b, strict=True):
        for x, y in zip(*(([p[k] for k in sorted(p)] if isinstance(p, dict) else [p]) for p in (u, v)), strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("cls", FAMILY)
def test_a_state_through_json_puts_a_new_dataset_at_the_same_batch(cls):
    ds = make(cls)
    ds.set_epoch(2)
    for i in range(2):
        ds[i]
    saved = json.loads(json.dumps(ds.get_state()))
    assert (saved["epoch"], saved["batch"]) == (2, 2)
    again = make(cls)
    again.set_state(saved)
    assert (again.epoch, again.position) == (2, 2)
    same(again[2], ds.get_batch(2))
    again.on_epoch_end()  # after part of an epoch: a request for a batch already served starts the next one
    same(again[0], ds.get_batch(0, 3))
    assert again.epoch == 3


def test_the_state_does_not_depend_on_workers():
    with make(MultiInputDataset, workers=2, use_multiprocessing=True, start_method="fork") as pooled:
        pooled.set_epoch(1)
        for i in range(3):
            pooled[i]
        state = pooled.get_state()
        inline = make(MultiInputDataset)
        inline.set_state(state)
        same(inline[3], pooled[3])


def test_a_state_saved_on_two_processes_restores_on_one_at_the_same_global_batch():
    """Elastic restart: the position is global; the shard is a slice of each global batch."""
    shards = [make(MultiInputDataset, shard=(p, 2)) for p in range(2)]
    for ds in shards:
        ds.set_epoch(1)
        ds[0]
        ds[1]
    state = shards[1].get_state()
    assert state["shard"] == [1, 2]
    one = make(MultiInputDataset)
    one.set_state(state)
    whole = one[2]
    parts = [ds[2] for ds in shards]
    np.testing.assert_array_equal(np.concatenate([p[0]["x"] for p in parts]), whole[0]["x"])


@pytest.mark.parametrize(
    ("other", "names"),
    [
        ({"batch_size": 4}, ["batch_size: 8 in the state, 4 here", "batches:"]),
        ({"seed": 2}, ["seed: 1 in the state, 2 here", "order:"]),
        ({"shuffle": False}, ["shuffle: True in the state, False here", "sampler:"]),
    ],
)
def test_a_state_of_another_dataset_is_refused_naming_each_difference(other, names):
    state = make(MultiInputDataset).get_state()
    with pytest.raises(KseqError, match="This state is from another dataset") as raised:
        make(MultiInputDataset, **other).set_state(state)
    for name in names:
        assert name in str(raised.value)


def test_other_rows_and_sampler_settings_are_named():
    state = make(SiamesePairDataset).get_state()
    data = {"x": np.zeros((44, 3)), "label": np.arange(44) % 4}
    with pytest.raises(KseqError, match="rows: 43 in the state, 44 here") as raised:
        SiamesePairDataset(data, batch_size=8, seed=1).set_state(state)
    assert "positive_fraction" not in str(raised.value)
    with pytest.raises(KseqError, match=r"sampler: .*'positive_fraction': 0\.5.*'positive_fraction': 0\.25"):
        make(SiamesePairDataset, positive_fraction=0.25).set_state(state)


@pytest.mark.parametrize("bad", [None, {"epoch": 1}, {**{"format": "other"}}, "state"])
def test_what_is_not_a_state_is_refused(bad):
    with pytest.raises(KseqError, match="expects a state from get_state"):
        make(Dataset).set_state(bad)


def test_a_position_past_the_epoch_is_refused():
    ds = make(Dataset)
    state = {**ds.get_state(), "batch": len(ds) + 1}
    with pytest.raises(KseqError, match=r"batch in \[0, 6\]. Received epoch=0, batch=7"):
        ds.set_state(state)


def test_a_pooled_dataset_restored_mid_epoch_serves_in_order_without_a_warning():
    """set_state tells the worker pool where the epoch resumes: the next batch is in order, prefetched from there."""
    reference = make(MultiInputDataset)
    reference.set_epoch(1)
    reference[0], reference[1]
    with make(MultiInputDataset, workers=2, use_multiprocessing=True, start_method="fork") as pooled:
        pooled[0]  # the pool is up, at epoch 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pooled.set_state(reference.get_state())
            for i in (2, 3):
                same(pooled[i], reference.get_batch(i))
        assert [f"{w.category.__name__}: {w.message}" for w in caught] == []  # names any warning, if one comes
