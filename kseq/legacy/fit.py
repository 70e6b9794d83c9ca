"""``fit_generator``, ``evaluate_generator``, ``predict_generator``: Keras 2 calls, run on Keras 3.

Every Keras 2 argument is honoured or refused with the replacement; see each
function's Args. The choices that differ from a plain ``model.fit(generator)``:

* A generator is wrapped in a :class:`~kseq.legacy.GeneratorDataset` (yields read
  as Keras 2 read them, batches trained in the generator's order, reads locked so
  ``workers > 1`` threads are safe). ``use_multiprocessing=True`` is refused for a
  generator: a generator lives in one process, and Keras 2's forked copies each
  replayed the same data. It is honoured for a ``Sequence``, which any process can
  index (:class:`~kseq.legacy.SequenceAdapter`).
* ``class_weight`` is applied per batch, vectorised, per output by name, and
  multiplied with yielded sample weights (tf.keras 2), where Keras 3 refuses
  both together and fails on multi-output models.
* A stateful model refuses what would reorder its batches: ``workers > 1`` on a
  generator, ``shuffle=True`` on a Sequence.
"""

from __future__ import annotations

import contextlib
import operator
import re
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from kseq import _tf_exit
from kseq.callbacks import stateful_layers, track_states
from kseq.datasets import Dataset, ModelView
from kseq.errors import StructureError
from kseq.legacy.batches import BatchNormaliser
from kseq.legacy.begin import TrainBegun
from kseq.legacy.generator import EpochMarker, GeneratorDataset, check_steps
from kseq.legacy.sequence import SequenceAdapter
from kseq.structure import ModelStructure
from kseq.torch_states import use_generic_rnn_path

__all__ = ["evaluate_generator", "fit_generator", "predict_generator"]

# What tf.data says when a batch does not fit the signature Keras built from batches 0 and 1.
SIGNATURE_TRAP = re.compile(r"yielded an element of shape (\(.*?\)) where an element of shape (\(.*?\)) was expected")

# Keras 1 spellings, still in old tutorials, and what replaced them.
KERAS1 = {
    "samples_per_epoch": "steps_per_epoch (batches, not samples: samples_per_epoch // batch_size)",
    "nb_epoch": "epochs",
    "nb_val_samples": "validation_steps (batches, not samples: nb_val_samples // batch_size)",
    "nb_worker": "workers",
    "pickle_safe": "use_multiprocessing",
    "val_samples": "steps (batches, not samples)",
}


def fit_generator(
    model: Any,
    generator: Any,
    steps_per_epoch: int | None = None,
    epochs: int = 1,
    verbose: int | str = 1,
    callbacks: list | None = None,
    validation_data: Any = None,
    validation_steps: int | None = None,
    validation_freq: int | list[int] = 1,
    class_weight: Mapping[Any, Any] | None = None,
    max_queue_size: int = 10,
    workers: int = 1,
    use_multiprocessing: bool = False,
    shuffle: bool = True,
    initial_epoch: int = 0,
    **legacy: Any,
) -> Any:
    """Keras 2's ``model.fit_generator(...)`` on Keras 3: ``fit_generator(model, ...)`` returns the History.

    Args:
        model: a compiled Keras 3 model.
        generator: a generator yielding ``(x, y[, sample_weight])``, a function
            returning a new generator each epoch, a ``keras.utils.Sequence`` (or any
            object with ``__getitem__``/``__len__``), or a kseq dataset.
        steps_per_epoch: batches per epoch; required for a generator. For a
            Sequence, at most ``len(sequence)`` (default: all of it).
        epochs, verbose, callbacks, validation_freq, initial_epoch: passed to ``fit``.
        validation_data: a generator, function or Sequence like ``generator``, or
            arrays ``(x, y[, sample_weight])`` with x a list in model order or a dict.
        validation_steps: batches per validation run; required for a validation
            generator. For arrays, at most that many batches of the training batch size.
        class_weight: ``{class_id: weight}``, or ``{output_name: {class_id: weight}}``
            for several outputs; multiplied with yielded sample weights.
        max_queue_size, workers, use_multiprocessing: read batches with threads
            (``workers > 1``) or, for a Sequence only, processes; see the module note.
            Threads cannot read a generator faster (it yields one batch at a time).
        shuffle: shuffle the batch order of a Sequence every epoch. As in Keras 2,
            it does not apply to a generator, whose batches keep their order.

    Returns:
        The ``keras.callbacks.History`` of ``model.fit``.

    Raises:
        StructureError: an argument Keras 3 cannot honour here, a batch that does not
            fit the model, or a generator that ends early (naming the epoch and step).
        TypeError: a Keras 1 argument (``nb_epoch``, ``samples_per_epoch``, ...),
            naming its replacement.

    Example:
        >>> import keras, numpy as np
        >>> a, b = keras.Input((3,), name="a"), keras.Input((5,), name="b")
        >>> model = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
        >>> model.compile("sgd", "mse")
        >>> def batches():
        ...     while True:
        ...         yield [np.zeros((8, 3)), np.ones((8, 5))], np.ones((8, 1))
        >>> history = fit_generator(model, batches(), steps_per_epoch=4, epochs=2, verbose=0)
        >>> len(history.history["loss"])
        2
    """
    _refuse_keras1(legacy, "fit_generator")
    _check_queue(workers, use_multiprocessing, max_queue_size)
    # Nothing is read before the callbacks' on_train_begin: NOTE [ on_train_begin before the first read ]
    train, steps = _dataset(model, generator, steps_per_epoch, "steps_per_epoch", class_weight=class_weight,
                            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size,
                            read_first=False)
    _refuse_short(generator, steps_per_epoch, epochs - initial_epoch)
    sequence = not isinstance(train, GeneratorDataset)
    if shuffle and sequence and stateful_layers(model):
        msg = (
            f"Model {model.name!r} has stateful layers, which need the batches in order, but shuffle=True "
            "reorders a Sequence's batches every epoch. Expected shuffle=False."
        )
        raise StructureError(msg)
    if isinstance(train, GeneratorDataset):
        train.set_epoch(initial_epoch)
    track_states(model)  # Keras 2 carried a stateful RNN's state from batch to batch; Keras 3.15 on JAX does not
    use_generic_rnn_path(stateful_layers(model))  # NOTE [ stateful LSTM/GRU on PyTorch in Keras 3.15 ]
    fit_args: dict[str, Any] = {}
    datasets = [train]
    validation_arrays = False
    if validation_data is not None:
        val, fit_args["validation_data"], val_steps = _validation(
            model, validation_data, validation_steps,
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if val_steps is not None:
            fit_args["validation_steps"] = val_steps
        if val is None:
            validation_arrays = True
        else:
            datasets.append(val)
        fit_args["validation_freq"] = validation_freq
    elif validation_steps is not None:
        _warn("validation_steps has no effect without validation_data", stacklevel=2)
    begun = []
    if isinstance(callbacks, (list, tuple)):
        params = {"verbose": verbose, "epochs": epochs, "steps": steps or len(train)}
        begun = [TrainBegun(callbacks, model, params)]
    with contextlib.ExitStack() as stack:
        for context in begun:
            stack.enter_context(context)
        if validation_arrays:  # read after on_train_begin too
            fit_args["validation_batch_size"] = _batch_size(train)
        return _run(datasets, ["train", "test"], model.fit, train, epochs=epochs, verbose=verbose,
                    callbacks=callbacks, shuffle=bool(shuffle) and sequence, initial_epoch=initial_epoch,
                    steps_per_epoch=steps, **fit_args)


def evaluate_generator(
    model: Any,
    generator: Any,
    steps: int | None = None,
    callbacks: list | None = None,
    max_queue_size: int = 10,
    workers: int = 1,
    use_multiprocessing: bool = False,
    verbose: int | str = 0,
    **legacy: Any,
) -> Any:
    """Keras 2's ``model.evaluate_generator(...)``: the loss (and metrics), as ``model.evaluate`` returns them.

    Arguments as for :func:`fit_generator`; ``steps`` is required for a generator.

    Example:
        >>> import keras, numpy as np
        >>> x = keras.Input((2,), name="x")
        >>> model = keras.Model(x, keras.layers.Dense(1, kernel_initializer="zeros")(x))
        >>> model.compile("sgd", "mse")
        >>> def batches():
        ...     while True:
        ...         yield np.ones((4, 2)), np.full((4, 1), 3.0)
        >>> float(evaluate_generator(model, batches(), steps=3))
        9.0
    """
    _refuse_keras1(legacy, "evaluate_generator")
    _check_queue(workers, use_multiprocessing, max_queue_size)
    data, steps = _dataset(model, generator, steps, "steps", workers=workers,
                           use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
    track_states(model)
    return _run([data], ["test"], model.evaluate, data, steps=steps, callbacks=callbacks, verbose=verbose)


def predict_generator(
    model: Any,
    generator: Any,
    steps: int | None = None,
    callbacks: list | None = None,
    max_queue_size: int = 10,
    workers: int = 1,
    use_multiprocessing: bool = False,
    verbose: int | str = 0,
    **legacy: Any,
) -> Any:
    """Keras 2's ``model.predict_generator(...)``: predictions in the generator's order.

    A yield is read as Keras 2 read it here: the first element of a 2- or 3-tuple,
    or else the whole yield as x (so a list is the model's inputs). Other arguments
    as for :func:`fit_generator`; ``steps`` is required for a generator.

    Example:
        >>> import keras, numpy as np
        >>> x = keras.Input((2,), name="x")
        >>> model = keras.Model(x, keras.layers.Dense(1, kernel_initializer="ones")(x))
        >>> def batches():
        ...     for i in range(3):
        ...         yield np.full((2, 2), i), None  # (x, y) with y unused
        >>> predict_generator(model, batches(), steps=3).ravel().tolist()
        [0.0, 0.0, 2.0, 2.0, 4.0, 4.0]
    """
    _refuse_keras1(legacy, "predict_generator")
    _check_queue(workers, use_multiprocessing, max_queue_size)
    data, steps = _dataset(model, generator, steps, "steps", x_only=True, workers=workers,
                           use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
    track_states(model)
    return _run([data], ["predict"], model.predict, data, steps=steps, callbacks=callbacks, verbose=verbose)


# -- helpers ---------------------------------------------------------------------


def _dataset(model: Any, data: Any, steps: int | None, argument: str, *, workers: int, use_multiprocessing: bool,
             max_queue_size: int, class_weight: Mapping[Any, Any] | None = None,
             x_only: bool = False, read_first: bool = True) -> tuple[Any, int | None]:
    """The PyDataset for ``data``, and the ``steps`` to pass on to Keras (``None``: the dataset's length).

    ``read_first=False``: an adapter made here reads no batch now (each is checked as it is read).
    """
    options = {"model": model, "class_weight": class_weight, "x_only": x_only, "workers": workers,
               "use_multiprocessing": use_multiprocessing, "max_queue_size": max_queue_size}
    if isinstance(data, (GeneratorDataset, SequenceAdapter, Dataset, ModelView)):
        return _prepared(model, data, steps, argument, options)
    options["read_first"] = read_first
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        adapter = SequenceAdapter(data, **options)
        return adapter, _sequence_steps(steps, len(adapter), argument)
    if hasattr(data, "__next__") or callable(data):
        if steps is None:
            msg = (
                f"A generator has no length: pass {argument}=<batches per epoch>. Keras 2 required it too "
                f"(for a keras.utils.Sequence, {argument} defaults to len(sequence))."
            )
            raise StructureError(msg)
        return GeneratorDataset(data, check_steps(steps, argument), **options), None
    msg = (
        f"Expected a generator, a function returning one, or a keras.utils.Sequence. Received "
        f"{type(data).__name__}. For arrays, call model.fit(x, y) directly."
    )
    raise StructureError(msg)


def _check_queue(workers: int, use_multiprocessing: bool, max_queue_size: int) -> None:
    if workers <= 1 and not use_multiprocessing and max_queue_size != 10:
        _warn(f"max_queue_size={max_queue_size} has no effect with workers={workers}: Keras 3 reads batches "
              "inline (tf.data prefetches on TensorFlow). Pass workers > 1 to read ahead into a queue", stacklevel=3)


def _prepared(model: Any, data: Any, steps: int | None, argument: str, options: dict) -> tuple[Any, int | None]:
    """A dataset built by the caller (kseq's, or a legacy adapter): its own reading options stand.

    A named kseq dataset is trained through a view for ``model`` (``ds.for_model``), and a view must have been
    made for a model of this structure; a legacy adapter adopts ``model`` unless it was built for one, which
    must then have this structure (NOTE [ named batches and model structure ] in kseq/structure.py).
    """
    defaults = {"class_weight": None, "workers": 1, "use_multiprocessing": False, "max_queue_size": 10}
    changed = sorted(k for k, default in defaults.items() if options[k] != default)
    if changed:
        name = type(data).__name__
        msg = (
            f"{name} was built with its own reading options, so {changed} given here would be ignored. "
            f"Pass them to {name}(...) instead."
        )
        raise StructureError(msg)
    if isinstance(data, (Dataset, ModelView)):
        data = data.for_model(model)
    elif data.model_structure is None:
        data.adopt(model)
    else:
        data.check(model, verbose=False)
    if isinstance(data, GeneratorDataset):
        if steps is not None and check_steps(steps, argument) != len(data):
            msg = f"{argument}={steps} differs from the GeneratorDataset's steps_per_epoch={len(data)}. Pass one."
            raise StructureError(msg)
        return data, None
    return data, _sequence_steps(steps, len(data), argument)


def _sequence_steps(steps: int | None, length: int, argument: str) -> int | None:
    if steps is None:
        return None
    steps = check_steps(steps, argument)
    if steps > length:
        msg = (
            f"{argument}={steps} is more than the {length} batches of this Sequence; Keras 3 stops an epoch at "
            f"the end of a Sequence instead of starting it again. Expected {argument} <= {length} (or None)."
        )
        raise StructureError(msg)
    return None if steps == length else steps


def _validation(model: Any, data: Any, steps: int | None, **options: Any) -> tuple[Any, Any, int | None]:
    """(the dataset, or None for arrays; what to pass as validation_data; the validation_steps to pass)."""
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        normaliser = BatchNormaliser(ModelStructure.of(model))
        arrays = normaliser(data, where="validation_data")
        return None, arrays, None if steps is None else check_steps(steps, "validation_steps")
    if steps is None and not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        msg = (
            "A validation generator has no length: pass validation_steps=<batches per validation run>. "
            "Keras 2 required it too."
        )
        raise StructureError(msg)
    dataset, val_steps = _dataset(model, data, steps, "validation_steps", read_first=False, **options)
    return dataset, dataset, val_steps


def _batch_size(dataset: Any) -> int:
    """Rows in the first training batch: Keras 2 evaluated validation arrays in the training batch size."""
    return int(np.shape(keras.tree.flatten(dataset.get_batch(0)[0])[0])[0])


def _run(datasets: list, roles: list, method: Any, data: Any, **kwargs: Any) -> Any:
    """Call ``method(data, ...)``; if Keras wrapped a dataset's own error, raise that one, with Keras's as cause.

    A GeneratorDataset among ``datasets`` (read in the pass its entry in ``roles`` names) gets an
    :class:`EpochMarker` among the callbacks, so Keras's build pass never counts as an epoch.
    """
    kwargs = {k: v for k, v in kwargs.items() if not (k in ("steps", "steps_per_epoch") and v is None)}
    pairs = zip(datasets, roles, strict=False)  # fit without validation_data has one dataset, two roles
    markers = [EpochMarker(d, role) for d, role in pairs if isinstance(d, GeneratorDataset)]
    callbacks = kwargs.get("callbacks")
    if markers and (callbacks is None or isinstance(callbacks, (list, tuple))):
        # A keras CallbackList cannot take one more: such datasets tell windows apart by size instead.
        kwargs["callbacks"] = [*(callbacks or []), *markers]
    else:
        markers = []
    try:
        with contextlib.ExitStack() as stack:
            for marker in markers:
                stack.enter_context(marker)
            return method(data, **kwargs)
    except Exception as e:
        _tf_exit.collect_now()  # the failed fit's tf.data iterator goes now: NOTE [ tf.data iterators at exit ]
        for dataset in datasets:
            own = getattr(dataset, "last_error", None)
            if own is not None and own is not e:
                dataset.last_error = None
                raise own from e
        shapes = SIGNATURE_TRAP.search(str(e))
        if shapes:
            msg = (
                f"A batch of shape {shapes[1]} does not fit the shape {shapes[2]} that Keras 3 fixed for it on "
                "TensorFlow: Keras reads only batches 0 and 1 to build its tf.data signature, and fixes every "
                "dimension in which those two agree. Expected every batch to have the same length: pad to one "
                "length (pad_sequences(..., maxlen=N)), or use kseq.CaptionDataset, which varies widths safely. "
                "See docs/migration.md."
            )
            raise StructureError(msg) from e
        raise


def _refuse_short(generator: Any, steps: Any, epochs: int) -> None:
    """Refuse, before training, an iterator that says it holds fewer than ``steps x epochs`` batches.

    Only an iterator that knows its length (``operator.length_hint``: a list's iterator, say) can be
    refused here; a Python generator does not know it, and ends with an error at the step it ran out.
    """
    if not (hasattr(generator, "__next__") and isinstance(steps, int) and not isinstance(steps, bool)):
        return
    left = operator.length_hint(generator, -1)
    needed = steps * max(epochs, 0)
    if 0 <= left < needed:
        msg = (
            f"The iterator passed as the generator holds {left} batches, but steps_per_epoch={steps} x "
            f"{epochs} epochs needs {needed}: fit would fail when it runs out. Expected at least {needed} "
            f"batches. Lower steps_per_epoch to {max(left // max(epochs, 1), 1)} or epochs, or pass a "
            "generator that never ends (a `while True:` loop), or a function that returns a new one per epoch."
        )
        raise StructureError(msg)


def _refuse_keras1(legacy: dict[str, Any], function: str) -> None:
    for name in legacy:
        if name in KERAS1:
            msg = f"{function}() got the Keras 1 argument {name}=. Use {KERAS1[name]} instead."
        else:
            msg = f"{function}() got an unexpected keyword argument {name!r}."
        raise TypeError(msg)


def _warn(message: str, *, stacklevel: int) -> None:
    warnings.warn(message + ".", UserWarning, stacklevel=stacklevel + 1)
