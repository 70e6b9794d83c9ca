"""Batch assembly in memory: MultiInputDataset vs numpy fancy indexing, numpy ``take`` (the gather kseq's
ArraySource uses, so the ratio to it is kseq's own cost per batch), a per-sample PyDataset and tf.data;
and `model.fit` steps/s fed by MultiInputDataset vs numpy arrays, with glibc's malloc as TensorFlow leaves it
and after ``kseq.tune_malloc()``.

Data: a 512-float feature vector and 31 int32 tokens per sample, plus an int label; batch 256.

The fit variants are timed in turns (best of 3). ``tune_malloc`` changes the whole process, so before each
variant's turn its malloc setting is applied: ``tune_malloc()`` for the tuned variant, and for every other
variant the thresholds TensorFlow leaves (NOTE [ malloc thresholds ] in kseq/workers/malloc.py: TF sets
``M_TRIM_THRESHOLD`` to 128 KiB, which freezes glibc's mmap threshold at its 128 KiB start). Minor page faults
per step are reported beside the rates: they show which setting each turn ran under.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import keras
import numpy as np

from benchmarks.common import Result, best_in_turns, in_turns, rate
from kseq import MultiInputDataset, tune_malloc

BATCH = 256
AS_TF_LEAVES_IT = {"mmap_threshold": 128 * 2**10, "trim_threshold": 128 * 2**10}  # glibc after TF's patch
TUNED: dict[str, int] = {}  # tune_malloc()'s defaults


def _data(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "features": rng.normal(size=(n, 512)).astype("float32"),
        "tokens": rng.integers(1, 5000, size=(n, 31), dtype="int32"),
        "label": rng.integers(0, 10, size=n).astype("int64"),
    }


class PerSampleDataset(keras.utils.PyDataset):
    """The pattern most tutorials copy: a Python loop over the samples of each batch."""

    def __init__(self, data: dict[str, np.ndarray], batch_size: int) -> None:
        super().__init__()
        self.data, self.batch_size = data, batch_size
        self.order = np.random.default_rng(0).permutation(len(data["label"]))

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, i: int) -> tuple:
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        x = {
            "features": np.stack([self.data["features"][j] for j in idx]),
            "tokens": np.stack([self.data["tokens"][j] for j in idx]),
        }
        return x, np.array([self.data["label"][j] for j in idx])


class Precomputed(keras.utils.PyDataset):
    """Batches built beforehand: what Keras's PyDataset path costs with no loading at all."""

    def __init__(self, batches: list) -> None:
        super().__init__()
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple:
        return self.batches[i]


def _order_slices(data: dict[str, np.ndarray], epoch: list[int]) -> list[np.ndarray]:
    """The batches' row indices of the next epoch (a new order each epoch, as kseq's shuffle), drawn up front."""
    n = len(data["label"])
    order = np.random.default_rng([0, epoch[0]]).permutation(n)
    epoch[0] += 1
    return [order[start : start + BATCH] for start in range(0, n, BATCH)]


def _epoch_numpy(data: dict[str, np.ndarray], epoch: list[int]) -> None:
    for idx in _order_slices(data, epoch):
        ({"features": data["features"][idx], "tokens": data["tokens"][idx]}, data["label"][idx])


def _epoch_take(data: dict[str, np.ndarray], epoch: list[int]) -> None:
    """As :func:`_epoch_numpy`, gathering rows with ``ndarray.take`` as kseq's ArraySource does."""
    for idx in _order_slices(data, epoch):
        ({"features": data["features"].take(idx, 0), "tokens": data["tokens"].take(idx, 0)}, data["label"][idx])


def _epoch_dataset(ds: keras.utils.PyDataset) -> None:
    for i in range(len(ds)):
        ds[i]
    ds.on_epoch_end()


def _tf_data(data: dict[str, np.ndarray]):
    import tensorflow as tf

    x = {"features": data["features"], "tokens": data["tokens"]}
    ds = tf.data.Dataset.from_tensor_slices((x, data["label"]))
    ds = ds.shuffle(len(data["label"]), seed=0).batch(BATCH).prefetch(tf.data.AUTOTUNE)

    def epoch() -> None:
        for _ in ds:
            pass

    return epoch


def _model() -> keras.Model:
    features = keras.Input((512,), name="features")
    tokens = keras.Input((31,), name="tokens", dtype="int32")
    t = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(5000, 8)(tokens))
    h = keras.layers.Concatenate()([keras.layers.Dense(32, activation="relu")(features), t])
    model = keras.Model({"features": features, "tokens": tokens}, keras.layers.Dense(10, name="label")(h))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _fit_rates(variants: dict[str, dict], steps: int, epochs: int, repeats: int = 3
               ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Fit rates per variant in each of ``repeats`` turns (:func:`in_turns`).

    Each variant is ``{"malloc": thresholds for tune_malloc, **fit arguments}``; its thresholds are set
    before its warm-up and before each of its turns. Also returns the fewest minor page faults per step.
    """
    models = {name: _model() for name in variants}
    for name, args in variants.items():
        tune_malloc(**args["malloc"])
        models[name].fit(**_fit_args(args), epochs=1, verbose=0)  # trace and warm up
    faults = dict.fromkeys(variants, float("inf"))

    def turn(name: str) -> Callable[[], float]:
        def fit_once() -> float:
            tune_malloc(**variants[name]["malloc"])
            before, start = _minor_faults(), time.perf_counter()
            models[name].fit(**_fit_args(variants[name]), epochs=epochs, verbose=0)
            seconds = time.perf_counter() - start
            faults[name] = min(faults[name], (_minor_faults() - before) / (steps * epochs))
            return steps * epochs / seconds

        return fit_once

    rates = in_turns({name: turn(name) for name in variants}, repeats)
    tune_malloc(**AS_TF_LEAVES_IT)
    return rates, faults


def _fit_args(variant: dict) -> dict:
    return {k: v for k, v in variant.items() if k != "malloc"}


def run(quick: bool = False) -> list[Result]:
    n = 8192 if quick else 51200
    min_time = 0.3 if quick else 1.5
    data = _data(n)
    batches = -(-n // BATCH)
    kseq_ds = MultiInputDataset(data, inputs=["features", "tokens"], targets="label", batch_size=BATCH, seed=0)
    epochs = {
        "numpy fancy indexing": lambda e=[0]: _epoch_numpy(data, e),
        "numpy take (the gather kseq uses)": lambda e=[0]: _epoch_take(data, e),
        "kseq MultiInputDataset": lambda: _epoch_dataset(kseq_ds),
        "per-sample PyDataset": lambda: _epoch_dataset(PerSampleDataset(data, BATCH)),
    }
    if keras.backend.backend() == "tensorflow":
        epochs["tf.data slices+shuffle+batch+prefetch"] = _tf_data(data)
    # In turns (each loader for min_time s, once per turn), so that the machine's drift (its memory bandwidth moves
    # the numpy baseline by 20% from one minute to the next here) hits the baseline and kseq alike.
    turns = {name: (lambda fn=fn: rate(fn, count=batches, min_time=min_time, repeats=1)) for name, fn in epochs.items()}
    values = in_turns(turns, 2 if quick else 5)
    results = best_in_turns("assembly", values, "numpy fancy indexing", {"kseq MultiInputDataset": ">= 0.9x"},
                            unit="batches/s")
    # kseq's own cost: against numpy doing the same gathers (take), what is left is kseq's Python per batch.
    take = "numpy take (the gather kseq uses)"
    results += best_in_turns("assembly vs take", {k: values[k] for k in (take, "kseq MultiInputDataset")}, take,
                             unit="batches/s")[1:]

    epochs = 2 if quick else 4
    x = {"features": data["features"], "tokens": data["tokens"]}
    fit_rates, faults = _fit_rates(
        {
            "fit numpy arrays": {"x": x, "y": data["label"], "batch_size": BATCH, "malloc": AS_TF_LEAVES_IT},
            "fit kseq MultiInputDataset": {"x": kseq_ds, "shuffle": False, "malloc": AS_TF_LEAVES_IT},
            "fit kseq MultiInputDataset, tune_malloc()": {"x": kseq_ds, "shuffle": False, "malloc": TUNED},
            "fit PyDataset of precomputed batches (floor of the path)": {
                "x": Precomputed([kseq_ds[i] for i in range(len(kseq_ds))]),
                "shuffle": False,
                "malloc": AS_TF_LEAVES_IT,
            },
        },
        batches,
        epochs,
        repeats=1 if quick else 3,
    )
    targets = {"fit kseq MultiInputDataset": ">= 0.95x", "fit kseq MultiInputDataset, tune_malloc()": ">= 0.95x"}
    results += best_in_turns("fit", fit_rates, "fit numpy arrays", targets)
    results += [Result("faults", name, value, "faults/step") for name, value in faults.items()]
    return results
