"""shard=: one process's slice of every global batch (NOTE [ shards of a global batch ])."""

import json
import sys

import h5py
import keras
import numpy as np
import pytest

from kseq import (
    CaptionDataset,
    Dataset,
    HDF5Source,
    MultiInputDataset,
    SiamesePairDataset,
    StatefulSequenceDataset,
    StructureError,
    TripletDataset,
)
from kseq.samplers.shard import Shard, _from_tf_config, resolve_shard

pytestmark = pytest.mark.portable


def make(cls, shard=None, **kwargs):
    rng = np.random.default_rng(0)
    if cls is CaptionDataset:
        caps = [[[1, *rng.integers(2, 9, rng.integers(1, 6)).tolist(), 9] for _ in range(2)] for _ in range(21)]
        return cls(rng.normal(size=(21, 4)), caps, batch_size=8, seed=1, shard=shard, bucket_by_length=True,
                   **kwargs)
    if cls is StatefulSequenceDataset:
        return cls([rng.normal(size=30), rng.normal(size=17), rng.normal(size=9)], batch_size=4, timesteps=4,
                   shard=shard, **kwargs)
    data = {"x": rng.normal(size=(43, 3)), "label": np.arange(43) % 4}
    if cls is MultiInputDataset:
        return cls(data, inputs="x", targets="label", batch_size=8, seed=1, shard=shard, **kwargs)
    return cls(data, batch_size=8, seed=1, shard=shard, **kwargs)


FAMILY = [Dataset, MultiInputDataset, CaptionDataset, SiamesePairDataset, TripletDataset, StatefulSequenceDataset]


def leaves(part):
    return [part[k] for k in sorted(part)] if isinstance(part, dict) else [part]


@pytest.mark.parametrize("cls", FAMILY)
def test_the_shards_of_a_full_global_batch_are_that_batch(cls):
    """Process p of n takes rows [p*B/n, (p+1)*B/n) of global batch k: together, exactly batch k."""
    whole = make(cls)
    shards = [make(cls, shard=(p, 2)) for p in range(2)]
    assert {len(s) for s in shards} == {len(whole)}
    full = [i for i in range(len(whole)) if len(leaves(whole.get_batch(i, 1)[0])[0]) == whole.batch_size]
    assert full
    for i in full:
        parts = [s.get_batch(i, 1) for s in shards]
        for j, part in enumerate(whole.get_batch(i, 1)):
            for k, array in enumerate(leaves(part)):
                joined = np.concatenate([leaves(p[j])[k] for p in parts])
                np.testing.assert_array_equal(joined, array)


@pytest.mark.parametrize("cls", [MultiInputDataset, CaptionDataset, SiamesePairDataset])
def test_a_short_last_global_batch_is_padded_to_equal_shapes_with_zero_weight(cls):
    whole = make(cls)
    last = len(whole) - 1
    real = len(leaves(whole.get_batch(last, 0)[1])[0])
    assert real < whole.batch_size  # 43 rows, or 42 captions, in batches of 8
    parts = [make(cls, shard=(p, 2)).get_batch(last, 0) for p in range(2)]
    for p, part in enumerate(parts):
        assert len(part) == 3
        for array in leaves(part[0]) + leaves(part[1]) + leaves(part[2]):
            assert len(array) == 4
        weights = leaves(part[2])[0]
        mine = min(max(real - 4 * p, 0), 4)
        per_row = weights.reshape(4, -1).max(axis=1)
        assert (per_row[mine:] == 0).all()
        assert (per_row[:mine] > 0).all()


def test_padding_keeps_the_unsharded_loss_of_the_last_batch():
    """Keras's sum_over_batch_size loss: the mean over processes equals the unsharded last batch's loss."""
    data = {"x": np.arange(13.0)[:, None], "y": np.linspace(-1, 1, 13)}
    loss = keras.losses.MeanSquaredError()
    whole = MultiInputDataset(data, inputs="x", targets="y", batch_size=8, shuffle=False)
    (_x, y) = whole.get_batch(1)
    expected = float(loss(y[:, None], np.zeros((len(y), 1))))
    losses = []
    for p in range(4):
        _x, y, w = MultiInputDataset(data, inputs="x", targets="y", batch_size=8, shuffle=False,
                                    shard=(p, 4)).get_batch(1)
        losses.append(float(loss(y[:, None], np.zeros((len(y), 1)), sample_weight=w)))
    np.testing.assert_allclose(np.mean(losses), expected, rtol=1e-6)


def test_1001_rows_on_two_processes_give_equal_batches_and_every_row_once():
    data = {"x": np.arange(1001), "y": np.ones(1001, "float32")}
    seen, shapes = [], set()
    for p in range(2):
        ds = MultiInputDataset(data, inputs="x", targets="y", batch_size=64, seed=5, shard=(p, 2))
        for i in range(len(ds)):
            x, y, *w = ds.get_batch(i)
            shapes.add((len(ds), x["x"].shape))
            weights = w[0] if w else np.ones(len(y))
            seen += x["x"][weights > 0].tolist()
    assert shapes == {(16, (32,))}
    assert sorted(seen) == list(range(1001))


def test_drop_remainder_leaves_the_last_global_batch_out_on_every_process():
    data = {"x": np.arange(1001)}
    lengths = {len(Dataset(data, batch_size=64, drop_remainder=True, shard=(p, 2))) for p in range(2)}
    assert lengths == {1001 // 64}


def test_each_process_reads_only_its_own_rows_from_hdf5(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(200, dtype="int64")

    class Counting(HDF5Source):
        def read(self, indices, fields=None):
            self.rows.extend(np.asarray(indices).tolist())
            return super().read(indices, fields)

    read = []
    for p in range(2):
        source = Counting(path)
        source.rows = []
        ds = Dataset(source, batch_size=20, seed=3, shard=(p, 2))
        for i in range(len(ds)):
            ds.get_batch(i)
        assert len(source.rows) == 100
        read.append(set(source.rows))
    assert read[0].isdisjoint(read[1])
    assert read[0] | read[1] == set(range(200))


def test_siamese_positive_fraction_is_exact_per_global_batch():
    y = [make(SiamesePairDataset, shard=(p, 2), positive_fraction=0.25).get_batch(0, 2)[1] for p in range(2)]
    assert int(np.concatenate(y).sum()) == 2  # floor(0.25 * 8 + 0.5)


def test_stateful_streams_go_whole_to_one_process():
    whole = make(StatefulSequenceDataset)
    for p in range(2):
        shard = make(StatefulSequenceDataset, shard=(p, 2))
        assert shard.keras_input().shape[0] == 2
        for i in range(len(whole)):
            np.testing.assert_array_equal(shard.get_batch(i)[0], whole.get_batch(i)[0][2 * p : 2 * p + 2])
            np.testing.assert_array_equal(shard.starts(i), whole.starts(i)[2 * p : 2 * p + 2])
    with pytest.raises(StructureError, match="to_series needs the predictions of every stream"):
        make(StatefulSequenceDataset, shard=(1, 2)).to_series(np.zeros((10, 4, 1)))


def test_worker_processes_serve_the_same_shard_as_inline():
    inline = make(MultiInputDataset, shard=(1, 2))
    with make(MultiInputDataset, shard=(1, 2), workers=2, use_multiprocessing=True, start_method="fork") as pooled:
        for i in range(len(inline)):
            for got, want in zip(pooled[i], inline.get_batch(i), strict=True):
                for a, b in zip(leaves(got), leaves(want), strict=True):
                    np.testing.assert_array_equal(a, b)


def test_a_batch_size_that_does_not_split_is_refused_with_the_fix():
    with pytest.raises(StructureError, match=r"multiple of the process count.*batch_size=30\. Pass batch_size=32"):
        Dataset({"x": np.arange(100)}, batch_size=30, shard=(0, 4))


@pytest.mark.parametrize(("shard", "match"), [((2, 2), "shard index must be an integer in \\[0, 1\\]"),
                                              ((0, 0), "shard count must be an integer >= 1"),
                                              ("all", "shard must be None")])
def test_bad_shards_are_refused(shard, match):
    with pytest.raises(StructureError, match=match):
        Dataset({"x": np.arange(10)}, batch_size=2, shard=shard)


def test_auto_is_one_process_without_an_engine_and_refuses_tf_multi_worker(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    # JAX or torch may be imported here, never initialised for several processes (tests/test_distributed.py
    # starts its own): one process, with the engines as they are and with neither imported.
    assert resolve_shard("auto") == Shard(0, 1)
    for engine in ("jax", "torch"):
        monkeypatch.delitem(sys.modules, engine, raising=False)
    assert resolve_shard("auto") == Shard(0, 1)
    config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]}, "task": {"type": "worker",
                                                                                            "index": 2}}
    with pytest.raises(StructureError, match=r"MultiWorkerMirroredStrategy.*JAX backend.*shard=\(2, 3\)"):
        _from_tf_config(json.dumps(config))
    assert _from_tf_config(json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"index": 0}})) == Shard(0, 1)
    with pytest.raises(StructureError, match="TF_CONFIG is not the JSON"):
        _from_tf_config("{not json")


@pytest.mark.parametrize("count", [2, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_every_batch_of_an_epoch_weighs_its_real_rows_b_over_b_prime_and_its_padding_0(count, weighted):
    """NOTE [ shards of a global batch ]: on every batch of two shuffled epochs, shard p's real rows (its slice
    of the B' real rows of global batch k) weigh B/B' (times their own sample weight) and its padding 0."""
    rows = 43  # in batches of 8: five full global batches and one of 3
    data = {"x": np.arange(rows, dtype="float32")[:, None], "y": np.ones(rows, "float32"),
            "w": np.linspace(0.5, 2.0, rows).astype("float32")}
    kwargs = {"inputs": "x", "targets": "y", "batch_size": 8, "seed": 4, **({"sample_weight": "w"} if weighted
                                                                             else {})}
    whole = MultiInputDataset(data, **kwargs)
    shards = [MultiInputDataset(data, **kwargs, shard=(p, count)) for p in range(count)]
    local = 8 // count
    short = 0
    for epoch in range(2):
        for k in range(len(whole)):
            x_whole, *_ = whole.get_batch(k, epoch)
            real = len(x_whole["x"])  # B'
            short += real < 8
            for p, shard in enumerate(shards):
                x, _y, w = shard.get_batch(k, epoch)
                mine = min(max(real - p * local, 0), local)
                ids = x_whole["x"][p * local : p * local + mine, 0].astype(int)
                np.testing.assert_array_equal(x["x"][:mine, 0], ids)
                own = data["w"][ids] if weighted else np.ones(mine, "float32")
                np.testing.assert_allclose(w[:mine], own * 8 / real, rtol=1e-6)
                assert (w[mine:] == 0).all()
                assert len(w) == local
    assert short == 2  # the short global batch was among them, once per epoch


def test_siamese_positive_fraction_is_exact_on_every_global_batch_of_an_epoch():
    """Under a shard, the positives of the real rows of every global batch of two epochs are those of the
    unsharded batch: round(fraction * B') of them, not one shard's rounding per process."""
    fraction = 0.3
    whole = make(SiamesePairDataset, positive_fraction=fraction)
    shards = [make(SiamesePairDataset, shard=(p, 2), positive_fraction=fraction) for p in range(2)]
    for epoch in range(2):
        for k in range(len(whole)):
            _x, y_whole = whole.get_batch(k, epoch)[:2]
            real = len(y_whole)
            positives = 0.0
            for shard in shards:
                _x, y, w = shard.get_batch(k, epoch)
                positives += float(y[w > 0].sum())
            assert positives == float(y_whole.sum()) == np.floor(fraction * real + 0.5), (epoch, k)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_the_sharded_sampler_s_processes_together_give_each_global_batch_in_order(count):
    """The shard lives in the sampler layer: n ShardedSamplers' rows of batch k, joined, are the sampler's batch k."""
    from kseq.samplers import ShardedSampler, ShuffleSampler

    sampler = ShuffleSampler(43, batch_size=8, seed=3, drop_remainder=False)
    shards = [ShardedSampler(sampler, Shard(p, count), 8) for p in range(count)]
    for epoch in (0, 1):
        for k in range(len(sampler)):
            joined = np.concatenate([s.indices(epoch, k) for s in shards])
            np.testing.assert_array_equal(joined, sampler.indices(epoch, k))
            assert {len(s) for s in shards} == {len(sampler)}


def test_a_caption_shard_s_width_and_mean_scale_come_from_the_whole_global_batch():
    """Each process pads to the global batch's width and weighs tokens by the global batch's real tokens."""
    whole = make(CaptionDataset, weighting="mean")
    parts = [make(CaptionDataset, shard=(p, 2), weighting="mean") for p in range(2)]
    out = whole.output_name
    full = [k for k in range(len(whole)) if len(whole.sampler.indices(0, k)) == whole.batch_size]
    assert len(full) >= 2
    for k in full:
        (_, y, w), halves = whole.get_batch(k, 0), [p.get_batch(k, 0) for p in parts]
        np.testing.assert_array_equal(np.concatenate([h[1][out] for h in halves]), y[out])
        np.testing.assert_allclose(np.concatenate([h[2][out] for h in halves]), w[out], rtol=1e-6)
