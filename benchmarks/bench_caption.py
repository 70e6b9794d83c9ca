"""Captions: CaptionDataset vs the widely copied captioning ``batch_generator``.

Data: ``n`` images with a 2048-float feature vector ("transfer values") and 5 captions each; caption
lengths follow a COCO-like spread (words ~ Gamma(8, 1.4) clipped to 3..45, plus start/end markers).
Batch 256.

* ``assembly``: batches/s of batch assembly, kseq vs the generator (a Python loop per sample to pick a
  caption, then ``keras.utils.pad_sequences``), which is the baseline.
* ``padding``: the share of decoder target positions that are padding over one epoch (lower is better),
  per-batch padding vs ``bucket_by_length`` and ``pad_to_multiple``; the ratio is to plain per-batch padding.
  Counted the same way for every loader: target positions holding the pad id 0, in the batches served.
* ``shapes``: distinct batch widths over 5 epochs (batch 64): the train-step compiles on JAX.
* ``fit``: steps/s of ``model.fit`` on a small GRU captioner, one model per variant, each warmed up by one
  epoch (TF traces once thanks to the variable signature), then the variants timed in turns, best of 3, with
  the spread of the turns (common.best_in_turns). On JAX a later epoch can still bring a width not
  seen in the warm-up, and its compile is timed: that is the cost ``pad_to_multiple`` bounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import keras
import numpy as np

from benchmarks.common import Result, best_in_turns, in_turns, rate, ratios
from kseq.datasets.caption import CaptionDataset

BATCH = 256
FEATURES = 2048
PER_IMAGE = 5
VOCAB = 5000


def _data(n: int, features: int = FEATURES) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    rng = np.random.default_rng(0)
    transfer_values = rng.normal(size=(n, features)).astype("float32")
    words = np.clip(np.rint(rng.gamma(8.0, 1.4, size=(n, PER_IMAGE))), 3, 45).astype(int)
    tokens = [[np.concatenate([[2], rng.integers(4, VOCAB, size=w), [3]]).astype("int32") for w in row]
              for row in words]
    return transfer_values, tokens


def batch_generator(transfer_values: np.ndarray, tokens_train: list, batch_size: int):
    """The captioning generator most tutorials copy (seeded here; the original uses the global RNG)."""
    rs = np.random.RandomState(0)
    num_images = len(tokens_train)

    def get_random_caption_tokens(idx):
        result = []
        for i in idx:
            j = rs.choice(len(tokens_train[i]))
            result.append(tokens_train[i][j])
        return result

    while True:
        idx = rs.randint(num_images, size=batch_size)
        tokens = get_random_caption_tokens(idx)
        max_tokens = np.max([len(t) for t in tokens])
        tokens_padded = keras.utils.pad_sequences(tokens, maxlen=max_tokens, padding="post", truncating="post")
        x_data = {"decoder_input": tokens_padded[:, 0:-1], "transfer_values_input": transfer_values[idx]}
        y_data = {"decoder_output": tokens_padded[:, 1:]}
        yield (x_data, y_data)


def _epoch(ds: CaptionDataset) -> None:
    for i in range(len(ds)):
        ds[i]
    ds.on_epoch_end()


def _served_padding(batches: Iterable[tuple]) -> float:
    """The share of target positions holding the pad id 0 in the batches served (``(x, y, ...)``; token ids
    start at 2, so 0 is always padding)."""
    padded = total = 0
    for batch in batches:
        target = batch[1]["decoder_output"]
        padded += int((target == 0).sum())
        total += target.size
    return padded / total


def _generator_padding(transfer_values: np.ndarray, tokens: list, batches: int) -> float:
    gen = batch_generator(transfer_values, tokens, BATCH)
    return _served_padding(next(gen) for _ in range(batches))


def _dataset_padding(ds: CaptionDataset) -> float:
    """Over epoch 0, from the batches ``ds`` serves (``padding_fraction`` reads lengths instead)."""
    return _served_padding(ds.get_batch(i, 0) for i in range(len(ds)))


def _distinct_widths(ds: CaptionDataset, epochs: int) -> int:
    """Distinct batch shapes over ``epochs``: the number of train-step compiles on JAX."""
    return len({ds.batch_width(i, e) for e in range(epochs) for i in range(len(ds))})


def _captioner(features: int) -> keras.Model:
    f = keras.Input((features,), name="transfer_values_input")
    t = keras.Input((None,), name="decoder_input", dtype="int32")
    state = keras.layers.Dense(64, activation="tanh")(f)
    h = keras.layers.GRU(64, return_sequences=True)(keras.layers.Embedding(VOCAB, 32)(t), initial_state=state)
    model = keras.Model([f, t], keras.layers.Dense(VOCAB, name="decoder_output")(h))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _fit_runs(datasets: dict[str, CaptionDataset], features: int, epochs: int, repeats: int
              ) -> dict[str, list[float]]:
    """Steps/s of ``epochs`` epochs per dataset in each of ``repeats`` turns, after a one-epoch warm-up each."""
    views = {}
    for name, ds in datasets.items():
        keras.utils.set_random_seed(0)
        model = _captioner(features)
        views[name] = (model, ds.for_model(model))  # built from lists: batches in its order (check only reads)
        model.fit(views[name][1], epochs=1, verbose=0)  # trace and warm up

    def turn(name: str) -> Callable[[], float]:
        def fit_once() -> float:
            model, view = views[name]
            start = time.perf_counter()
            model.fit(view, epochs=epochs, verbose=0)
            return len(view) * epochs / (time.perf_counter() - start)

        return fit_once

    return in_turns({name: turn(name) for name in datasets}, repeats)


def run(quick: bool = False) -> list[Result]:
    n = 2000 if quick else 10000
    min_time = 0.3 if quick else 1.5
    transfer_values, tokens = _data(n)
    batches = -(-n // BATCH)

    def dataset(**kwargs: object) -> CaptionDataset:
        return CaptionDataset(transfer_values, tokens, batch_size=BATCH, seed=0, **kwargs)  # type: ignore[arg-type]

    gen = batch_generator(transfer_values, tokens, BATCH)
    one, all_pairs = dataset(), dataset(captions_per_image="all")
    bucketed = dataset(captions_per_image="all", bucket_by_length=True)
    rates = {
        "batch_generator (widely copied)": rate(lambda: [next(gen) for _ in range(batches)], count=batches,
                                                min_time=min_time),
        "kseq CaptionDataset one": rate(lambda: _epoch(one), count=batches, min_time=min_time),
        "kseq CaptionDataset all": rate(lambda: _epoch(all_pairs), count=len(all_pairs), min_time=min_time),
        "kseq CaptionDataset all+bucket": rate(lambda: _epoch(bucketed), count=len(bucketed), min_time=min_time),
    }
    results = ratios("caption", rates, "batch_generator (widely copied)",
                     {"kseq CaptionDataset one": ">= 2x"})

    padding = {
        "per-batch longest (kseq one)": 100 * _dataset_padding(one),
        "batch_generator (widely copied)": 100 * _generator_padding(transfer_values, tokens, batches),
        "bucket_by_length": 100 * _dataset_padding(dataset(bucket_by_length=True)),
        "pad_to_multiple=8": 100 * _dataset_padding(dataset(pad_to_multiple=8)),
        "bucket_by_length + pad_to_multiple=8": 100 * _dataset_padding(dataset(bucket_by_length=True,
                                                                                pad_to_multiple=8)),
        "fixed_length (longest caption)": 100 * _dataset_padding(dataset(fixed_length=True)),
    }
    results += ratios("padding", padding, "per-batch longest (kseq one)", {"bucket_by_length": "<= 0.3x"},
                      unit="% padded")

    small, epochs = (1000, 1) if quick else (4000, 2)
    fit_values, fit_tokens = _data(small, features=256)

    def fit_dataset(**kwargs: object) -> CaptionDataset:
        return CaptionDataset(fit_values, fit_tokens, batch_size=64, seed=0, **kwargs)  # type: ignore[arg-type]

    configs = {
        "per-batch longest": {},
        "bucket_by_length": {"bucket_by_length": True},
        "bucket_by_length + pad_to_multiple=8": {"bucket_by_length": True, "pad_to_multiple": 8},
        "pad_to_multiple=8": {"pad_to_multiple": 8},
        "fixed_length": {"fixed_length": True},
    }
    shapes = {name: float(_distinct_widths(fit_dataset(**kwargs), epochs=5)) for name, kwargs in configs.items()}
    results += ratios("shapes", shapes, "per-batch longest", unit="widths/5ep")

    fit_runs = _fit_runs(
        {
            "fit per-batch longest": fit_dataset(),
            "fit bucket_by_length": fit_dataset(bucket_by_length=True),
            "fit bucket_by_length + pad_to_multiple=8": fit_dataset(bucket_by_length=True, pad_to_multiple=8),
            "fit fixed_length": fit_dataset(fixed_length=True),
        },
        256,
        epochs,
        repeats=1 if quick else 3,
    )
    backend = {"tensorflow": "tf"}.get(keras.backend.backend(), keras.backend.backend())
    results += best_in_turns(f"fit-{backend}", fit_runs, "fit per-batch longest")
    return results
