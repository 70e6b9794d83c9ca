"""Siamese pairs and triplets: SiamesePairDataset vs keras.io's `make_pairs`, on the same data.

Data: MNIST-shaped float32 images (28 x 28), 10 balanced classes. One epoch is ``2 n`` pairs (what
`make_pairs` builds: one positive and one negative per sample), in batch-ready arrays of 256 pairs.

* keras.io make_pairs: the Siamese contrastive example's function, verbatim but with a seeded
  ``random.Random`` instead of the global one: a Python loop over samples, ``np.array`` of the pair list,
  then ``pairs[:, 0]`` / ``pairs[:, 1]``. It builds the pairs once (the example reuses them every epoch);
  here it is timed per epoch, as it would cost to draw new pairs each epoch.
* numpy gather of precomputed pairs: fancy indexing of fixed random pair indices, batch by batch; the
  floor of any loader that copies rows.
* kseq: every batch of an epoch via ``ds[i]`` (new pairs each epoch, exact positives per batch).
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from benchmarks.common import Result, rate, ratios
from kseq.datasets.siamese import SiamesePairDataset, TripletDataset

BATCH = 256


def _data(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"image": rng.random((n, 28, 28), dtype=np.float32), "label": np.arange(n) % 10}


def make_pairs(x: np.ndarray, y: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """keras.io/examples/vision/siamese_contrastive (Keras 3 version), with ``rng`` for ``random``."""
    num_classes = max(y) + 1
    digit_indices = [np.where(y == i)[0] for i in range(num_classes)]
    pairs = []
    labels = []
    for idx1 in range(len(x)):
        x1 = x[idx1]
        label1 = y[idx1]
        idx2 = rng.choice(digit_indices[label1])
        x2 = x[idx2]
        pairs += [[x1, x2]]
        labels += [0]
        label2 = rng.randint(0, num_classes - 1)
        while label2 == label1:
            label2 = rng.randint(0, num_classes - 1)
        idx2 = rng.choice(digit_indices[label2])
        x2 = x[idx2]
        pairs += [[x1, x2]]
        labels += [1]
    return np.array(pairs), np.array(labels).astype("float32")


def _epoch_make_pairs(data: dict[str, np.ndarray], rng: random.Random) -> None:
    pairs, labels = make_pairs(data["image"], data["label"], rng)
    left, right = pairs[:, 0], pairs[:, 1]
    for start in range(0, len(labels), BATCH):
        ({"left": left[start : start + BATCH], "right": right[start : start + BATCH]}, labels[start : start + BATCH])


def _epoch_gather(x: np.ndarray, idx: np.ndarray, same: np.ndarray, roles: int) -> None:
    for start in range(0, len(idx), BATCH):
        rows = idx[start : start + BATCH]
        ([x[rows[:, j]] for j in range(roles)], same[start : start + BATCH])


def _epochs(ds: SiamesePairDataset | TripletDataset) -> Callable[[], None]:
    """One epoch per call: every batch via ``ds[i]``, then ``on_epoch_end`` (new pairs next call)."""

    def epoch() -> None:
        for i in range(len(ds)):
            ds[i]
        ds.on_epoch_end()

    return epoch


def _hdf5_file(data: dict[str, np.ndarray], folder: str) -> Path:
    """A contiguous, uncompressed HDF5 file (what kseq.pack writes): HDF5Source reads it through a memory map."""
    path = Path(folder) / "pairs.h5"
    with h5py.File(path, "w") as f:
        for name, array in data.items():
            f.create_dataset(name, data=array)
    return path


def run(quick: bool = False) -> list[Result]:
    n = 2000 if quick else 10000
    min_time = 0.3 if quick else 1.5
    data = _data(n)
    pairs = 2 * n
    fixed = np.random.default_rng(1).integers(0, n, size=(pairs, 3))
    same = (data["label"][fixed[:, 0]] == data["label"][fixed[:, 1]]).astype(np.float32)
    keras_io_rng = random.Random(0)
    kwargs = {"batch_size": BATCH, "seed": 0, "pairs_per_epoch": pairs}

    def timed(fn: Callable[[], None]) -> float:
        return rate(fn, count=pairs, min_time=min_time)

    rates = {
        "keras.io make_pairs (per epoch)": timed(lambda: _epoch_make_pairs(data, keras_io_rng)),
        "numpy gather of precomputed pairs": timed(lambda: _epoch_gather(data["image"], fixed, same, 2)),
        "kseq SiamesePairDataset": timed(_epochs(SiamesePairDataset(data, **kwargs))),
        "kseq SiamesePairDataset P x K (8 x 32)": timed(
            _epochs(SiamesePairDataset(data, classes_per_batch=8, **kwargs))
        ),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = _hdf5_file(data, folder)
        rates["kseq SiamesePairDataset on HDF5 (memmap)"] = timed(_epochs(SiamesePairDataset(path, **kwargs)))
    results = ratios("pairs", rates, "keras.io make_pairs (per epoch)", {"kseq SiamesePairDataset": ">= 2x"},
                     unit="pairs/s")
    triplets = {
        "numpy gather of precomputed triplets": timed(lambda: _epoch_gather(data["image"], fixed, same, 3)),
        "kseq TripletDataset": timed(
            _epochs(TripletDataset(data, batch_size=BATCH, seed=0, triplets_per_epoch=pairs))
        ),
    }
    return results + ratios("triplets", triplets, "numpy gather of precomputed triplets", unit="triplets/s")
