"""Validation through fit on TensorFlow: a kseq dataset as ``validation_data`` against arrays (issue 24, item 9).

A small Siamese model in the pattern of the keras.io contrastive example (two 28 x 28 inputs, a shared
conv tower, a distance, a sigmoid), trained on a ``SiamesePairDataset`` in every variant; only the
validation data differs:

* ``arrays``: fixed validation pairs as numpy arrays ``([left, right], y)``;
* ``kseq``: a ``SiamesePairDataset(shuffle=False)`` over the validation rows, through ``for_model``;
* ``allarrays``: the program without kseq: training pairs drawn once (``kseq.take``) and fed as arrays too;
* ``...+tune``: the same after ``kseq.tune_malloc()``.

Each run is a fresh Python process (TF's allocator settings are per process), variants alternate, and
each reports wall time, user and system CPU time and minor page faults of its ``fit`` call. Run:
``PYTHONPATH=$PWD KERAS_BACKEND=tensorflow python -m benchmarks.bench_validation [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

N_TRAIN, N_VAL, BATCH, EPOCHS = 2000, 2000, 16, 3


def _model():
    import keras

    def tower() -> keras.Model:
        x = inp = keras.Input((28, 28, 1))
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Conv2D(4, 5, activation="tanh")(x)
        x = keras.layers.AveragePooling2D(2)(x)
        x = keras.layers.Conv2D(16, 5, activation="tanh")(x)
        x = keras.layers.AveragePooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        return keras.Model(inp, keras.layers.Dense(10, activation="tanh")(x))

    shared = tower()
    left, right = keras.Input((28, 28, 1), name="left"), keras.Input((28, 28, 1), name="right")
    a, b = shared(left), shared(right)
    distance = keras.ops.sqrt(keras.ops.maximum(keras.ops.sum(keras.ops.square(a - b), 1, keepdims=True), 1e-7))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.BatchNormalization()(distance))
    model = keras.Model([left, right], out)
    model.compile(loss="binary_crossentropy", optimizer="rmsprop")
    return model


def _child(variant: str) -> dict[str, float]:
    import keras
    import numpy as np

    import kseq

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.random((N_TRAIN + N_VAL, 28, 28, 1), dtype=np.float32)
    labels = np.arange(N_TRAIN + N_VAL) % 10
    train = kseq.SiamesePairDataset({"image": images[:N_TRAIN], "label": labels[:N_TRAIN]},
                                    batch_size=BATCH, seed=0)
    val_ds = kseq.SiamesePairDataset({"image": images[N_TRAIN:], "label": labels[N_TRAIN:]},
                                     batch_size=BATCH, seed=1, shuffle=False)
    model = _model()
    validation = None
    if variant.startswith("kseq"):
        validation = val_ds.for_model(model)
    elif variant.startswith(("arrays", "allarrays")):
        x, y = kseq.take(val_ds) if hasattr(kseq, "take") else _epoch(val_ds)
        validation = ((x["left"], x["right"]), y)
    if variant.endswith("+tune"):
        kseq.tune_malloc()
    split = _Split()
    fit_data: dict = {"x": train.for_model(model)}
    if variant.startswith("allarrays"):  # the program without kseq: pairs drawn once, arrays throughout
        x, y = kseq.take(train)
        fit_data = {"x": (x["left"], x["right"]), "y": y, "batch_size": BATCH}
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    model.fit(**fit_data, validation_data=validation, epochs=EPOCHS, verbose=0, callbacks=[split])
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt, "val_wall": split.wall, "val_sys": split.sys,
            "val_faults": split.faults}


class _Split:
    """Wall time, system time and minor faults spent inside fit's validation runs."""

    def __new__(cls):
        import keras

        class Split(keras.callbacks.Callback):
            wall = sys = faults = 0.0

            def on_test_begin(self, logs=None):  # noqa: ARG002 - Keras signature
                self._at = (time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF))

            def on_test_end(self, logs=None):  # noqa: ARG002 - Keras signature
                t, r = self._at
                now = resource.getrusage(resource.RUSAGE_SELF)
                self.wall += time.perf_counter() - t
                self.sys += now.ru_stime - r.ru_stime
                self.faults += now.ru_minflt - r.ru_minflt

        return Split()


def _epoch(ds):
    import numpy as np

    batches = [ds.get_batch(i) for i in range(len(ds))]
    x = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    return x, np.concatenate([b[1] for b in batches])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="arrays,kseq")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child)))
        return
    variants = args.variants.split(",")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for _ in range(args.repeats):
        for v in variants:  # alternate, so that load on a shared machine falls on every variant
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_validation", "--child", v],
                                 capture_output=True, text=True, env=env, check=False)
            if out.returncode:
                sys.exit(out.stderr)
            runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(v, runs[v][-1], flush=True)
    for v, rs in runs.items():
        cols = {k: [r[k] for r in rs] for k in ("wall", "user", "sys", "faults", "val_wall", "val_sys", "val_faults")}
        print(f"{v:<8} " + "  ".join(
            f"{k} {statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})" for k, xs in cols.items()))


if __name__ == "__main__":
    main()
