"""Legacy adapters: per-batch cost of GeneratorDataset / SequenceAdapter, and fit_generator vs model.fit(generator).

Baselines measured in the same run: next() on the raw generator (reading), and Keras 3's own
generator path, model.fit(generator, steps_per_epoch=...) (training).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np

from benchmarks.common import Result, rate, ratios
from kseq.legacy import GeneratorDataset, SequenceAdapter, fit_generator


def _model(width_a, width_b):
    a = keras.Input((width_a,), name="a")
    b = keras.Input((width_b,), name="b")
    h = keras.layers.Concatenate()([a, keras.layers.Dense(16)(b)])
    model = keras.Model([a, b], keras.layers.Dense(1, name="score")(h))
    model.compile("sgd", "mse")
    return model


def _batches(batch, width_a, width_b, *, as_dict):
    rng = np.random.default_rng(0)
    pool = [(rng.normal(size=(batch, width_a)).astype("float32"), rng.normal(size=(batch, width_b)).astype("float32"),
             rng.normal(size=(batch, 1)).astype("float32")) for _ in range(8)]

    def generator():
        i = 0
        while True:
            a, b, y = pool[i % 8]
            i += 1
            yield ({"b": b, "a": a}, {"score": y}) if as_dict else ([a, b], y)

    class Seq:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            a, b, y = pool[i]
            return [a, b], y

    return generator, Seq()


def reading(quick: bool, batch: int, width_a: int, width_b: int) -> list[Result]:
    model = _model(width_a, width_b)
    gen, seq = _batches(batch, width_a, width_b, as_dict=True)
    n = 200 if quick else 2000
    min_time = 0.2 if quick else 1.0

    def raw():
        g = gen()
        for _ in range(n):
            next(g)

    def through(ds):
        def run():
            ds.on_epoch_begin()
            for i in range(n):
                ds[i]
            ds.on_epoch_end()
        return run

    plain = GeneratorDataset(gen, n)
    checked = GeneratorDataset(gen, n, model=model)
    adapter = SequenceAdapter(seq, model=model)

    def sequence():
        for i in range(n):
            adapter[i % 8]

    rates = {
        "next(generator) (baseline)": rate(raw, count=n, min_time=min_time),
        "GeneratorDataset, no model": rate(through(plain), count=n, min_time=min_time),
        "GeneratorDataset, model= (named, checked)": rate(through(checked), count=n, min_time=min_time),
        "SequenceAdapter, model= (named, checked)": rate(sequence, count=n, min_time=min_time),
    }
    suite = f"legacy B={batch}"
    return ratios(suite, rates, "next(generator) (baseline)")


def training(quick: bool) -> list[Result]:
    steps, epochs = (20, 2) if quick else (100, 4)
    model = _model(64, 32)
    gen, _ = _batches(32, 64, 32, as_dict=False)
    dict_gen, _ = _batches(32, 64, 32, as_dict=True)

    def tuple_gen():  # Keras 3 on TF refuses the Keras 2 list form [a, b]
        for x, y in gen():
            yield tuple(x), y


    def timed(fn):
        fn(1)  # compile
        best = 0.0
        for _ in range(1 if quick else 3):
            start = time.perf_counter()
            fn(epochs)
            best = max(best, steps * epochs / (time.perf_counter() - start))
        return best

    class Plain(keras.utils.PyDataset):  # Keras's own PyDataset path, no kseq code
        def __init__(self):
            super().__init__()
            self.g = tuple_gen()

        def __len__(self):
            return steps

        def __getitem__(self, i):
            return next(self.g)

    rates = {
        "model.fit(generator) (Keras 3, baseline)": timed(
            lambda e: model.fit(tuple_gen(), steps_per_epoch=steps, epochs=e, verbose=0, shuffle=False)),
        "model.fit(plain PyDataset) (Keras 3)": timed(
            lambda e: model.fit(Plain(), epochs=e, verbose=0, shuffle=False)),
        "fit_generator, list yields": timed(
            lambda e: fit_generator(model, gen(), steps_per_epoch=steps, epochs=e, verbose=0)),
        "fit_generator, dict yields (Keras 3 refuses)": timed(
            lambda e: fit_generator(model, dict_gen(), steps_per_epoch=steps, epochs=e, verbose=0)),
        "fit_generator, workers=4 threads": timed(
            lambda e: fit_generator(model, gen(), steps_per_epoch=steps, epochs=e, verbose=0, workers=4)),
    }
    return ratios("legacy fit", rates, "model.fit(generator) (Keras 3, baseline)", unit="steps/s")


def slow_generator(quick: bool) -> list[Result]:
    """A generator that waits 3 ms per batch (I/O): does workers > 1 overlap it with training?"""
    steps = 20 if quick else 60
    model = _model(64, 32)
    gen, _ = _batches(32, 64, 32, as_dict=False)

    def slow():
        for item in gen():
            time.sleep(0.003)
            yield item

    def timed(workers):
        fit_generator(model, slow(), steps_per_epoch=steps, verbose=0, workers=workers)  # compile
        start = time.perf_counter()
        fit_generator(model, slow(), steps_per_epoch=steps, epochs=2, verbose=0, workers=workers)
        return 2 * steps / (time.perf_counter() - start)

    rates = {"slow generator, workers=1": timed(1), "slow generator, workers=4": timed(4)}
    return ratios(f"legacy {keras.backend.backend()}", rates, "slow generator, workers=1", unit="steps/s")


def run(quick: bool) -> list[Result]:
    return [*reading(quick, 32, 64, 16), *reading(quick, 256, 1024, 64), *training(quick), *slow_generator(quick)]
