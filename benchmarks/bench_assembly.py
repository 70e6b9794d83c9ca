"""Batch assembly in memory: MultiInputDataset vs numpy fancy indexing, a per-sample PyDataset and tf.data;
and `model.fit` steps/s fed by MultiInputDataset vs numpy arrays.

Data: a 512-float feature vector and 31 int32 tokens per sample, plus an int label; batch 256.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from benchmarks.common import Result, rate, ratios
from kseq import MultiInputDataset

BATCH = 256


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


def _epoch_numpy(data: dict[str, np.ndarray], epoch: list[int]) -> None:
    n = len(data["label"])
    order = np.random.default_rng([0, epoch[0]]).permutation(n)
    epoch[0] += 1
    for start in range(0, n, BATCH):
        idx = order[start : start + BATCH]
        ({"features": data["features"][idx], "tokens": data["tokens"][idx]}, data["label"][idx])


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


def _fit_rates(variants: dict[str, dict], steps: int, epochs: int, repeats: int = 3) -> dict[str, float]:
    """Best of ``repeats`` fit rates per variant, the variants timed in turn so drift hits them alike."""
    models = {name: _model() for name in variants}
    for name, args in variants.items():
        models[name].fit(**args, epochs=1, verbose=0)  # trace and warm up
    best = dict.fromkeys(variants, 0.0)
    for _ in range(repeats):
        for name, args in variants.items():
            start = time.perf_counter()
            models[name].fit(**args, epochs=epochs, verbose=0)
            best[name] = max(best[name], steps * epochs / (time.perf_counter() - start))
    return best


def run(quick: bool = False) -> list[Result]:
    n = 8192 if quick else 51200
    min_time = 0.3 if quick else 1.5
    data = _data(n)
    batches = -(-n // BATCH)
    kseq_ds = MultiInputDataset(data, inputs=["features", "tokens"], targets="label", batch_size=BATCH, seed=0)
    rates = {
        "numpy fancy indexing": rate(lambda e=[0]: _epoch_numpy(data, e), count=batches, min_time=min_time),
        "kseq MultiInputDataset": rate(lambda: _epoch_dataset(kseq_ds), count=batches, min_time=min_time),
        "per-sample PyDataset": rate(lambda: _epoch_dataset(PerSampleDataset(data, BATCH)), count=batches,
                                     min_time=min_time),
    }
    if keras.backend.backend() == "tensorflow":
        rates["tf.data slices+shuffle+batch+prefetch"] = rate(_tf_data(data), count=batches, min_time=min_time)
    results = ratios("assembly", rates, "numpy fancy indexing", {"kseq MultiInputDataset": ">= 0.9x"})

    epochs = 2 if quick else 4
    x = {"features": data["features"], "tokens": data["tokens"]}
    fit_rates = _fit_rates(
        {
            "fit numpy arrays": {"x": x, "y": data["label"], "batch_size": BATCH},
            "fit kseq MultiInputDataset": {"x": kseq_ds, "shuffle": False},
            "fit PyDataset of precomputed batches (floor of the path)": {
                "x": Precomputed([kseq_ds[i] for i in range(len(kseq_ds))]),
                "shuffle": False,
            },
        },
        batches,
        epochs,
        repeats=1 if quick else 3,
    )
    results += ratios("fit", fit_rates, "fit numpy arrays", {"fit kseq MultiInputDataset": ">= 0.95x"},
                      unit="steps/s")
    return results
