"""Callbacks' ``on_train_begin`` before a legacy generator is first read, as Keras 2 ordered them.

# NOTE [ on_train_begin before the first read ]
Keras 2's ``fit_generator`` called ``set_model``, ``set_params`` and then
``on_train_begin`` on every callback before its enqueuer read the first batch.
Programs rely on it: a generator that is also a callback (keras' old
``image_ocr.py``) builds the data it yields in ``on_train_begin``. Keras 3.15 reads
first: on TensorFlow ``fit`` reads batches 0 and 1 to infer its tf.data signature
when it builds its epoch iterator, and an unbuilt model reads one batch to build
itself, all before ``on_train_begin``.

So ``fit_generator`` runs the callbacks' ``on_train_begin`` itself, before it
reads anything or calls ``fit`` (:class:`TrainBegun`), and lets Keras's own call
through to each of those callbacks as a no-op, once. The callbacks see what they
saw in Keras 2: their model and params are set, and nothing was read yet. What
differs from a plain Keras 3 ``fit``: ``model.stop_training`` set in
``on_train_begin`` is reset by ``fit`` before its first epoch.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

__all__ = ["TrainBegun"]


class TrainBegun:
    """A context that runs ``on_train_begin`` on ``callbacks`` on entry; Keras's next call is then skipped.

    Args:
        callbacks: the Keras callbacks to begin (a list, as passed to ``fit``).
        model: the model they are set to.
        params: what Keras would pass to ``set_params`` (``verbose``, ``epochs``, ``steps``).

    Example:
        >>> import keras
        >>> class Count(keras.callbacks.Callback):
        ...     calls = 0
        ...     def on_train_begin(self, logs=None):
        ...         Count.calls += 1
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> cb = Count()
        >>> with TrainBegun([cb], model, {"verbose": 0, "epochs": 1, "steps": 1}):
        ...     begun = Count.calls
        ...     _ = model.fit(keras.ops.ones((2, 1)), keras.ops.ones((2, 1)), callbacks=[cb], verbose=0)
        >>> begun, Count.calls
        (1, 1)
    """

    def __init__(self, callbacks: Sequence[Any], model: Any, params: dict[str, Any]) -> None:
        self.callbacks = list(callbacks)
        self.model = model
        self.params = params
        self._skipping: list[Any] = []

    def __enter__(self) -> TrainBegun:
        for callback in self.callbacks:
            callback.set_model(self.model)
            callback.set_params(self.params)
            callback.on_train_begin()
            if "on_train_begin" not in vars(callback):  # an instance attribute already there is left alone
                callback.on_train_begin = types.MethodType(_skip_once, callback)
                self._skipping.append(callback)
        return self

    def __exit__(self, *exc: object) -> None:
        for callback in self._skipping:
            vars(callback).pop("on_train_begin", None)
        self._skipping = []


def _skip_once(callback: Any, logs: dict | None = None) -> None:  # noqa: ARG001 - Keras's signature
    """Keras's own ``on_train_begin``: already run; later ``fit`` calls reach the callback's method again."""
    vars(callback).pop("on_train_begin", None)
