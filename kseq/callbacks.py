"""Keras callbacks: :class:`ResetStates` for stateful RNNs fed by a stateful dataset.

# NOTE [ resetting some rows of a stateful layer ]
Keras 3.15 resets a stateful layer as a whole: ``layer.reset_state()`` sets the state
of every row to zero, and nothing calls it for you, not even between epochs. When
several sequences share the streams of a :class:`~kseq.datasets.stateful.StatefulSequenceDataset`,
a new sequence begins in one row while the others are mid-sequence, so a whole-layer
reset would cut them off. :class:`ResetStates` instead zeroes only the rows that start
a new sequence: it multiplies each state variable of each stateful layer by a 0/1 row
mask before that batch (``layer.states`` holds one variable per state, batch first).
Zero is exactly what ``reset_state()`` assigns, so a reset row and a fresh layer agree.

It runs in ``on_*_batch_begin``, between two steps: on TensorFlow the state variables
are read by the compiled step, on JAX reading ``self.model`` syncs the state to the
variables and the next step reads them back. With ``steps_per_execution > 1`` Keras
runs several batches per call, so a reset inside that group is impossible: refused.

# NOTE [ stateful RNNs on JAX in Keras 3.15 ]
Measured with Keras 3.15.1 and JAX 0.10: a stateful RNN does not carry its state from
one batch to the next in ``fit``, ``evaluate`` or ``predict`` on the JAX backend (an
eager ``model(x)`` does). The JAX trainer runs a stateless step that threads
``model.non_trainable_variables`` through and writes them back; ``RNN`` creates its
state variables untracked (``_create_state_variables`` is wrapped in
``no_automatic_dependency_tracking``), so they are not in that list and every step
starts from the value they had before ``fit``. :func:`track_states` lists each state
variable among the layer's variables (through the entry ``Layer.variables`` reads for
seed generators, which holds a ``.state`` variable), so the stateless steps carry it;
``model.weights``, ``get_weights`` and saving are unchanged. :class:`ResetStates` does
this when it is attached. TensorFlow and PyTorch need nothing: their steps update the
variables in place.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kseq.errors import StructureError

__all__ = ["ResetStates", "check_stateful_model", "stateful_layers", "track_states"]


def stateful_layers(model: Any) -> list[Any]:
    """Every built layer of ``model`` (nested models and wrappers included) with ``stateful=True``."""
    # _flatten_layers walks nested models and wrappers (Bidirectional's forward and backward
    # layers); Keras has no public recursive walk.
    layers = model._flatten_layers(include_self=False, recursive=True)
    return [layer for layer in layers if getattr(layer, "stateful", False) and getattr(layer, "states", None)]


def check_stateful_model(model: Any, batch_size: int) -> None:
    """Refuse a model whose stateful layers (or fixed input batch size) do not match ``batch_size`` streams."""
    rows = {layer.name: int(keras.tree.flatten(layer.states)[0].shape[0]) for layer in stateful_layers(model)}
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError, TypeError):  # not built yet: only its stateful layers can tell
        inputs = []
    rows |= {f"input {i}": int(t.shape[0]) for i, t in enumerate(inputs) if t.shape and t.shape[0] is not None}
    wrong = {name: n for name, n in rows.items() if n != batch_size}
    if wrong:
        msg = (
            f"The model is built for batches of {wrong} rows but the dataset has batch_size={batch_size}. "
            f"Expected one row per stream: build the model on ds.keras_input() "
            f"(keras.Input(batch_shape=({batch_size}, timesteps, features)))."
        )
        raise StructureError(msg)


def track_states(model: Any) -> int:
    """Make ``model``'s stateful layers carry their state across batches on JAX; returns how many it listed.

    A no-op on other backends and for states already listed. See
    NOTE [ stateful RNNs on JAX in Keras 3.15 ].
    """
    if keras.backend.backend() != "jax":
        return 0
    added = 0
    for layer in stateful_layers(model):
        listed = layer._seed_generators  # the list Layer.variables reads `.state` from
        for state in keras.tree.flatten(layer.states):
            if not any(getattr(entry, "state", None) is state for entry in listed):
                listed.append(_ListedState(state))
                added += 1
    return added


class _ListedState:
    """An entry of ``Layer._seed_generators``: ``Layer.variables`` reads only its ``state``."""

    def __init__(self, state: Any) -> None:
        self.state = state


class ResetStates(keras.callbacks.Callback):
    """Resets a model's stateful layers between epochs and wherever a stream starts a new sequence.

    All rows are reset before every epoch, after every epoch, and before ``evaluate`` and
    ``predict`` (also the validation run inside ``fit``). On JAX it also makes the state
    carry from batch to batch, which Keras 3.15 does not do there (see
    NOTE [ stateful RNNs on JAX in Keras 3.15 ] and :func:`track_states`). Given a dataset with a
    ``starts(batch)`` method, such as a
    :class:`~kseq.datasets.stateful.StatefulSequenceDataset`, it also resets, before each
    batch, the rows where a new sequence begins, and only those; see
    NOTE [ resetting some rows of a stateful layer ].

    Args:
        dataset: the dataset passed to ``fit`` (or to ``evaluate`` / ``predict``);
            ``None`` resets at epoch boundaries only.
        validation_data: the stateful dataset passed as ``fit(validation_data=...)``.
            Needed when ``fit`` validates: the validation streams start sequences at
            other batches than the training ones. Used only inside ``fit``: a separate
            ``evaluate`` call uses ``dataset``.

    Raises:
        StructureError: when training starts, a stateful layer's batch size differs from the
            dataset's, ``steps_per_execution > 1`` with resets inside an epoch, ``fit`` runs a
            different number of steps than the dataset has batches (likewise ``evaluate`` and
            ``predict``, when Keras knows their step count), or ``fit`` validates with no
            ``validation_data`` given here.

    Example:
        >>> import numpy as np, keras
        >>> from kseq.datasets.stateful import StatefulSequenceDataset
        >>> ds = StatefulSequenceDataset([np.ones(5), np.ones(3)], batch_size=1, timesteps=2)
        >>> ds.starts(2).tolist()  # the second series starts at batch 2 in the single stream
        [True]
        >>> rnn = keras.layers.SimpleRNN(2, stateful=True, return_sequences=True)
        >>> model = keras.Sequential([ds.keras_input(), rnn, keras.layers.Dense(1)])
        >>> model.predict(ds, callbacks=[ResetStates(ds)], verbose=0).shape
        (3, 2, 1)
    """

    def __init__(self, dataset: Any = None, *, validation_data: Any = None) -> None:
        super().__init__()
        self.dataset = _check_dataset(dataset, "dataset")
        self.validation_data = _check_dataset(validation_data, "validation_data")
        self._fitting = False

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        track_states(model)

    # -- fit --------------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        self._fitting = True
        track_states(self.model)
        self._check_model(self.dataset, "fit")
        steps = (self.params or {}).get("steps")
        if self.dataset is not None and steps is not None and steps != len(self.dataset):
            msg = (
                f"fit runs {steps} steps per epoch but ResetStates' dataset has {len(self.dataset)} batches. "
                "Expected the dataset passed to fit, with steps_per_epoch=None: a stateful epoch is the whole "
                "stream. Pass ResetStates(<the dataset given to fit>)."
            )
            raise StructureError(msg)

    def on_train_end(self, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        self._fitting = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        self.reset_all()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        self.reset_all()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:  # noqa: ARG002
        self._before(self.dataset, batch)

    # -- evaluate (and validation inside fit) --------------------------------------

    def on_test_begin(self, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        if self._fitting and self.dataset is not None and self.validation_data is None:
            msg = (
                "fit is validating, but ResetStates has no validation_data, so it cannot tell where the "
                "validation streams start new sequences. Expected ResetStates(train, validation_data=val) "
                "with the dataset passed as fit(validation_data=val)."
            )
            raise StructureError(msg)
        self._check_model(self._evaluated(), "evaluate")
        if not self._fitting:  # inside fit, params are fit's own (its training steps)
            self._check_steps(self._evaluated(), "evaluate")
        track_states(self.model)
        self.reset_all()

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:  # noqa: ARG002
        self._before(self._evaluated(), batch)

    # -- predict ----------------------------------------------------------------

    def on_predict_begin(self, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        self._check_model(self.dataset, "predict")
        self._check_steps(self.dataset, "predict")
        track_states(self.model)
        self.reset_all()

    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None:  # noqa: ARG002
        self._before(self.dataset, batch)

    # -- resets -----------------------------------------------------------------

    def reset_all(self) -> None:
        """Zero the state of every row of every stateful layer."""
        for layer in stateful_layers(self.model):
            layer.reset_state()

    def reset_rows(self, rows: np.ndarray) -> None:
        """Zero the state of the rows where ``rows`` is true, leaving the others as they are."""
        keep = (~np.asarray(rows, dtype=bool)).astype("float32")
        for layer in stateful_layers(self.model):
            for state in keras.tree.flatten(layer.states):
                mask = keep.reshape((len(keep),) + (1,) * (len(state.shape) - 1))
                state.assign(state.value * keras.ops.convert_to_tensor(mask, dtype=state.dtype))

    def _before(self, dataset: Any, batch: int) -> None:
        if dataset is None:
            return
        if batch == 0:
            self.reset_all()
            return
        if not 0 <= batch < len(dataset):
            msg = (
                f"Keras is at batch {batch} but ResetStates' dataset has {len(dataset)} batches. "
                "Expected the dataset that is being fed: pass it to ResetStates (validation_data= for validation)."
            )
            raise StructureError(msg)
        rows = dataset.starts(batch)
        if rows.any():
            self.reset_rows(rows)

    def _evaluated(self) -> Any:
        """The validation dataset inside ``fit``; the dataset itself for ``evaluate`` on its own."""
        return self.validation_data if self._fitting and self.validation_data is not None else self.dataset

    def _check_steps(self, dataset: Any, call: str) -> None:
        steps = (self.params or {}).get("steps")
        if dataset is None or steps is None or steps == len(dataset):
            return
        msg = (
            f"{call} runs {steps} steps but ResetStates' dataset has {len(dataset)} batches, so its resets "
            f"would fall at the wrong batches. Expected ResetStates(<the dataset given to {call}>) and "
            f"{call}(..., steps=None)."
        )
        raise StructureError(msg)

    def _check_model(self, dataset: Any, call: str) -> None:
        if dataset is None:
            return
        check_stateful_model(self.model, dataset.batch_size)
        group = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if group > 1 and any(dataset.starts(k).any() for k in range(1, len(dataset))):
            msg = (
                f"{call} runs steps_per_execution={group} batches per call, but this dataset starts new sequences "
                "inside an epoch and their rows must be reset between two batches. "
                "Expected steps_per_execution=1: compile(..., steps_per_execution=1)."
            )
            raise StructureError(msg)


def _check_dataset(dataset: Any, argument: str) -> Any:
    if dataset is None or (hasattr(dataset, "starts") and hasattr(dataset, "batch_size")):
        return dataset
    msg = (
        f"ResetStates({argument}=...) expects a stateful dataset with starts(batch) and batch_size "
        f"(a StatefulSequenceDataset), or None. Received {type(dataset).__name__}."
    )
    raise StructureError(msg)
