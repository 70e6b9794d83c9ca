"""Keras 2 migration: ``fit_generator`` and friends on Keras 3, and generators as PyDatasets.

``fit_generator(model, ...)`` replaces ``model.fit_generator(...)`` (removed in
Keras 3) argument for argument; :class:`GeneratorDataset` turns a generator into a
PyDataset to pass to ``model.fit`` yourself; :class:`SequenceAdapter` does the same
for a Keras 2 ``Sequence``. See docs/migration.md.

Example:
    >>> import keras, numpy as np
    >>> from kseq.legacy import fit_generator
    >>> x = keras.Input((4,), name="x")
    >>> model = keras.Model(x, keras.layers.Dense(1)(x))
    >>> model.compile("sgd", "mse")
    >>> def batches():
    ...     while True:
    ...         yield np.ones((8, 4)), np.ones((8, 1))
    >>> fit_generator(model, batches(), steps_per_epoch=3, epochs=1, verbose=0).epoch
    [0]
"""

from kseq.legacy.batches import BatchNormaliser
from kseq.legacy.fit import evaluate_generator, fit_generator, predict_generator
from kseq.legacy.generator import EpochMarker, GeneratorDataset
from kseq.legacy.sequence import SequenceAdapter

__all__ = [
    "BatchNormaliser",
    "EpochMarker",
    "GeneratorDataset",
    "SequenceAdapter",
    "evaluate_generator",
    "fit_generator",
    "predict_generator",
]
