"""The subclass contract of kseq.Dataset: one construction order, read_rows -> build_batch for every dataset.

NOTE [ construction order ] in kseq/datasets/base.py.
"""

import warnings

import numpy as np
import pytest

from kseq import (
    CaptionDataset,
    Dataset,
    MultiInputDataset,
    SiamesePairDataset,
    StatefulSequenceDataset,
    StructureError,
    TripletDataset,
)
from kseq.samplers import SequentialSampler
from kseq.sources import ArraySource

pytestmark = pytest.mark.portable

FAMILY = [CaptionDataset, MultiInputDataset, SiamesePairDataset, StatefulSequenceDataset, TripletDataset]


def noisy(cls):
    """``cls`` with a build_batch that adds noise from batch_rng(): the batch's own generator."""

    class Noisy(cls):
        def build_batch(self, rows):
            batch = super().build_batch(rows)
            x = batch[0]
            noise = lambda a: a + self.batch_rng().normal(size=a.shape)  # noqa: E731
            x = {k: noise(v) for k, v in x.items()} if isinstance(x, dict) else noise(x)
            return (x, *batch[1:])

    Noisy.__qualname__ = Noisy.__name__ = f"Noisy{cls.__name__}"
    return Noisy


def make(cls, **kwargs):
    rng = np.random.default_rng(0)
    if issubclass(cls, CaptionDataset):
        caps = [[[1, *rng.integers(2, 9, rng.integers(1, 6)).tolist(), 9] for _ in range(2)] for _ in range(20)]
        return cls(rng.normal(size=(20, 4)), caps, batch_size=6, seed=1, **kwargs)
    if issubclass(cls, StatefulSequenceDataset):
        return cls([rng.normal(size=30), rng.normal(size=17)], batch_size=2, timesteps=4, seed=1, **kwargs)
    data = {"x": rng.normal(size=(40, 3)), "label": np.arange(40) % 4}
    if issubclass(cls, MultiInputDataset):
        return cls(data, inputs="x", targets="label", batch_size=8, seed=1, **kwargs)
    return cls(data, batch_size=8, seed=1, **kwargs)


@pytest.mark.parametrize("cls", FAMILY)
def test_no_dataset_of_the_family_replaces_get_batch(cls):
    """get_batch is the base's: build_batch(read_rows(sampler.indices(epoch, index))) for every kseq dataset."""
    assert cls.get_batch is Dataset.get_batch
    ds = make(cls)
    indices = ds.sampler.indices(1, 1)
    with_rows = ds.get_batch(1, 1)
    rebuilt = ds.build_batch(ds.read_rows(indices)) if cls is not CaptionDataset else None
    if rebuilt is not None:
        for got, want in zip(with_rows, rebuilt, strict=True):
            for a, b in zip(_arrays(got), _arrays(want), strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", FAMILY)
@pytest.mark.parametrize("pool", [{"workers": 2}, {"workers": 2, "use_multiprocessing": True, "start_method": "fork"}])
def test_batch_rng_in_build_batch_is_the_same_inline_and_in_workers(cls, pool):
    """A random transform drawn from batch_rng() gives the same batches inline, in threads and in processes."""
    Noisy = noisy(cls)
    inline = make(Noisy)
    with make(Noisy, **pool) as pooled:
        for epoch in range(2):
            for i in range(len(inline)):
                for got, want in zip(pooled[i], inline.get_batch(i, epoch), strict=True):
                    for a, b in zip(_arrays(got), _arrays(want), strict=True):
                        np.testing.assert_array_equal(a, b)
            pooled.on_epoch_end()
    assert not np.array_equal(_arrays(inline.get_batch(0, 0)[0])[0], _arrays(make(cls).get_batch(0, 0)[0])[0])


def test_a_subclass_make_sampler_can_use_everything_its_constructor_set():
    """make_sampler runs after the whole constructor: a MultiInputDataset subclass may read self.targets there."""

    class LabelOrder(MultiInputDataset):
        def make_sampler(self):
            self.seen_targets = dict(self.targets)
            return SequentialSampler(len(self.source), batch_size=self.batch_size)

    data = {"x": np.arange(10.0), "y": np.arange(10) % 2}
    ds = LabelOrder(data, inputs="x", targets="y", batch_size=4)
    assert ds[2][0]["x"].tolist() == [8.0, 9.0]
    assert ds.seen_targets == {"y": "y"}


def test_the_base_sampler_is_built_and_checked_at_construction():
    with pytest.raises(StructureError, match="has no batches: 3 rows, batch_size=4, drop_remainder=True"):
        Dataset({"x": np.arange(3)}, batch_size=4, drop_remainder=True)


@pytest.mark.parametrize("cls", [CaptionDataset, SiamesePairDataset, TripletDataset])
def test_a_dataset_with_its_own_order_refuses_block_shuffle_at_construction(cls):
    with pytest.raises(StructureError, match='draws its own order and has no block shuffle'):
        make(cls, shuffle="block")


def test_batch_position_is_the_batch_being_built():
    class Positions(Dataset):
        def build_batch(self, rows):
            return ({"x": rows["x"], "at": np.array([self.batch_position()] * len(rows["x"]))},)

    ds = Positions({"x": np.arange(10)}, batch_size=4, seed=0)
    assert ds.get_batch(2, 5)[0]["at"].tolist() == [[5, 2]] * 2
    with pytest.raises(StructureError, match="must be called while a batch is being built"):
        ds.batch_position()


class CountingSource(ArraySource):
    """A real Source that records the indices of every read; cheap_row_reads as the test sets it."""

    def __init__(self, fields, *, cheap):
        super().__init__(fields)
        self.cheap_row_reads = cheap
        self.reads = []

    def read(self, indices, fields=None):
        self.reads.append(np.asarray(indices).copy())
        return super().read(indices, fields)


@pytest.mark.parametrize("cheap", [True, False])
def test_pairs_read_by_the_sources_capability(cheap):
    """Cheap row reads: one read per side. Otherwise: one read of the sorted unique rows. Same batch either way."""
    data = {"x": np.arange(40.0)[:, None], "label": np.arange(40) % 4}
    source = CountingSource(data, cheap=cheap)
    ds = SiamesePairDataset(source, batch_size=8, seed=2)
    source.reads.clear()
    x, y = ds.get_batch(0)
    if cheap:
        assert len(source.reads) == 2
    else:
        (read,) = source.reads
        assert read.tolist() == sorted(set(read.tolist()))
    reference = SiamesePairDataset(data, batch_size=8, seed=2).get_batch(0)
    np.testing.assert_array_equal(x["left"], reference[0]["left"])
    np.testing.assert_array_equal(x["right"], reference[0]["right"])
    np.testing.assert_array_equal(y, reference[1])


def test_caption_sample_weight_is_a_deprecated_name_of_weighting():
    with pytest.warns(DeprecationWarning, match=r"sample_weight=\.\.\.\) is now weighting="):
        old = make(CaptionDataset, sample_weight="mask")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = make(CaptionDataset, weighting="mask")
    for a, b in zip(old.get_batch(0), new.get_batch(0), strict=True):
        for u, v in zip(_arrays(a), _arrays(b), strict=True):
            np.testing.assert_array_equal(u, v)
    with pytest.warns(DeprecationWarning, match="now .weighting"):
        assert old.sample_weight_mode == "mask"


def _arrays(part):
    return [part[k] for k in sorted(part)] if isinstance(part, dict) else [part]
