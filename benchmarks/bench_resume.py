"""resume: what a kseq.BackupAndRestore backup costs beyond Keras's own BackupAndRestore save.

Both callbacks back up the same compiled model (Adam, so the optimizer's variables are saved too) through their public
``on_epoch_end`` hook, in turns: Keras's writes the weights file and a JSON of the epoch; kseq's writes the
weights file, the non-trainable variables, a JSON with the dataset's state, fsyncs each, renames the directory
into place and removes the previous backup (NOTE [ atomic backups ] in kseq/resume.py). The dataset's own
share, ``ds.get_state()`` and its JSON, is timed on its own. Saves are timed one by one, the three callbacks
interleaved, and the extra time is the median of the paired differences within a turn. Two models: a small MLP
(about 10 KB of weights) and a 1024-wide one (about 13 MB with Adam's two slots).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable

import keras
import numpy as np

import kseq
from benchmarks.common import Result, best_in_turns


def _model(width: int) -> keras.Model:
    x = keras.Input((32,), name="x")
    h = keras.layers.Dense(width, activation="relu")(x)
    h = keras.layers.Dense(width, activation="relu")(h)
    model = keras.Model(x, keras.layers.Dense(1)(keras.layers.Dropout(0.1)(h)))
    model.compile(keras.optimizers.Adam(), "mse")
    model.train_on_batch(np.zeros((4, 32), "float32"), np.zeros((4, 1), "float32"))  # builds the optimizer
    return model


def _time(save: Callable[[], None]) -> float:
    start = time.perf_counter()
    save()
    return time.perf_counter() - start


def _paired(saves: dict[str, Callable[[], None]], repeats: int, count: int) -> dict[str, list[list[float]]]:
    """Seconds per save of each variant, ``count`` saves per turn, the variants interleaved save by save
    (so that the load of the machine, shared with other jobs, hits them alike)."""
    times: dict[str, list[list[float]]] = {name: [] for name in saves}
    for _ in range(repeats):
        turn: dict[str, list[float]] = {name: [] for name in saves}
        for _ in range(count):
            for name, save in saves.items():
                turn[name].append(_time(save))
        for name in saves:
            times[name].append(turn[name])
    return times


def run(quick: bool) -> list[Result]:
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(10_000, 32)).astype("float32"), "y": rng.normal(size=10_000).astype("float32")}
    ds = kseq.MultiInputDataset(data, inputs="x", targets="y", batch_size=32, seed=0)
    repeats, count = (2, 5) if quick else (5, 20)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, width in (("small MLP", 16), ("1024-wide MLP", 1024)):
            model = _model(width)
            callbacks = {
                "keras.callbacks.BackupAndRestore": keras.callbacks.BackupAndRestore(f"{tmp}/keras-{width}"),
                "kseq.BackupAndRestore": kseq.BackupAndRestore(f"{tmp}/kseq-{width}", ds, delete_checkpoint=False),
                "kseq.BackupAndRestore(fsync=False)": kseq.BackupAndRestore(
                    f"{tmp}/nosync-{width}", ds, delete_checkpoint=False, fsync=False),
            }
            for callback in callbacks.values():
                callback.set_model(model)
                callback.set_params({"epochs": 1, "steps": len(ds), "verbose": 0})
                callback.on_train_begin()
                callback.on_epoch_end(0)  # warm up
            times = _paired({name: (lambda cb=cb: cb.on_epoch_end(0)) for name, cb in callbacks.items()},
                            repeats, count)
            baseline = f"{label}: keras.callbacks.BackupAndRestore"
            rates = {f"{label}: {name}": [count / sum(turn) for turn in turns] for name, turns in times.items()}
            results += best_in_turns("resume", rates, baseline, unit="saves/s")
            keras_ms = np.array(times["keras.callbacks.BackupAndRestore"]) * 1000
            for name in list(callbacks)[1:]:
                extra = np.median(np.array(times[name]) * 1000 - keras_ms, axis=1)  # per turn: median paired difference
                results.append(Result("resume", f"{label}: {name} extra ms/save [{repeats} turns: "
                                      f"{extra.min():.1f}-{extra.max():.1f}]", float(np.median(extra)), "ms"))

        def state() -> None:
            for _ in range(1_000):
                json.dumps({**ds.get_state(), "epoch": 3, "batch": 17})

        micros = sorted(1e3 * turn[0] for turn in _paired({"state": state}, repeats, 1)["state"])  # per 1,000
        results.append(Result("resume", f"dataset state: get_state() + JSON, µs [{repeats} turns: "
                              f"{micros[0]:.1f}-{micros[-1]:.1f}]", micros[len(micros) // 2], "µs"))
    return results
