"""``python -m kseq``: the command line (``demo``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import keras
import numpy as np

from kseq.datasets import MultiInputDataset

__all__ = ["main"]


def _digits() -> dict[str, np.ndarray]:
    """scikit-learn's digits (1,797 real 8x8 scans, shipped with the package) as named fields."""
    from sklearn.datasets import load_digits  # optional: the demo needs the test extra

    digits = load_digits()
    pixels = (digits.images / 16.0).astype("float32")[..., None]
    profile = np.concatenate([pixels.sum(axis=1), pixels.sum(axis=2)], axis=1).reshape(len(pixels), 16) / 8.0
    return {"pixels": pixels, "profile": profile.astype("float32"), "digit": digits.target.astype("int64")}


def _model() -> keras.Model:
    pixels = keras.Input((8, 8, 1), name="pixels")
    profile = keras.Input((16,), name="profile")
    h = keras.layers.Conv2D(16, 3, activation="relu")(pixels)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Concatenate()([h, keras.layers.Dense(16, activation="relu")(profile)])
    out = keras.layers.Dense(10, activation="softmax", name="digit")(h)
    model = keras.Model([pixels, profile], out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def demo(epochs: int = 8, batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Train a two-input digit classifier through MultiInputDataset and print a table."""
    keras.utils.set_random_seed(seed)
    data = _digits()
    order = np.random.default_rng(seed).permutation(len(data["digit"]))
    cut = int(0.8 * len(order))
    train = {k: v[order[:cut]] for k, v in data.items()}
    test = {k: v[order[cut:]] for k, v in data.items()}
    fields = {"inputs": ["pixels", "profile"], "targets": "digit", "batch_size": batch_size}
    train_ds = MultiInputDataset(train, seed=seed, **fields)
    test_ds = MultiInputDataset(test, shuffle=False, **fields)
    model = _model()
    train_ds.check(model)
    test_ds.check(model, verbose=False)
    print(f"kseq demo: digits, {cut} train / {len(order) - cut} test, inputs pixels (8,8,1) + profile (16,)")
    print(f"{'epoch':>5} {'batches/s':>10} {'loss':>8} {'train acc':>10} {'test acc':>9}")
    row: dict[str, float] = {}
    for epoch in range(epochs):
        start = time.perf_counter()
        hist = model.fit(train_ds, epochs=1, verbose=0, shuffle=False).history
        rate = len(train_ds) / (time.perf_counter() - start)
        test_acc = model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"]
        row = {"batches_per_s": rate, "loss": hist["loss"][-1], "accuracy": hist["accuracy"][-1], "test": test_acc}
        print(f"{epoch + 1:>5} {rate:>10.0f} {row['loss']:>8.4f} {row['accuracy']:>10.3f} {test_acc:>9.3f}")
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kseq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train a two-input model on scikit-learn's digits")
    p_demo.add_argument("--epochs", type=int, default=8)
    p_demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(epochs=args.epochs, seed=args.seed)
    return 0
