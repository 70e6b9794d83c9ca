"""Keras callbacks: :class:`ResetStates` for stateful RNNs fed by a stateful dataset.

``ResetStates`` composes three parts, each with its own home: :class:`~kseq.states.StatefulLayers`
(the model's stateful layers, found once, and the row resets; NOTE [ resetting some rows of a
stateful layer ]), :func:`~kseq.jax_states.track_states` (state carried on JAX; NOTE [ stateful
RNNs on JAX in Keras 3.15 ]) and the stream checks at the end of :mod:`kseq.validation`.
``stateful_layers`` and ``track_states`` are re-exported here, where they were first published.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kseq.errors import StructureError
from kseq.jax_states import track_layer_states, track_states
from kseq.states import StatefulLayers, stateful_layers
from kseq.torch_states import use_generic_rnn_path
from kseq.validation import (
    check_looped_rnn_rows,
    check_stateful_rows,
    check_step_count,
    check_steps_per_execution,
    looped_rnn_rows,
)

__all__ = ["ResetStates", "check_stateful_model", "stateful_layers", "track_states"]


def check_stateful_model(model: Any, batch_size: int, *, layers: StatefulLayers | None = None) -> None:
    """Refuse a model whose stateful layers (or fixed input batch size) do not match ``batch_size`` streams.

    ``layers``: the model's :class:`~kseq.states.StatefulLayers` when already found.
    """
    rows = (layers if layers is not None else StatefulLayers(model)).rows()
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError, TypeError):  # not built yet: only its stateful layers can tell
        inputs = []
    rows |= {f"input {i}": int(t.shape[0]) for i, t in enumerate(inputs) if t.shape and t.shape[0] is not None}
    check_stateful_rows(rows, batch_size)


class ResetStates(keras.callbacks.Callback):
    """Resets a model's stateful layers between epochs and wherever a stream starts a new sequence.

    All rows are reset before every epoch, after every epoch, and before ``evaluate`` and
    ``predict`` (also the validation run inside ``fit``). On JAX it also makes the state
    carry from batch to batch, which Keras 3.15 does not do there (see
    NOTE [ stateful RNNs on JAX in Keras 3.15 ] and :func:`track_states`); on PyTorch it lets
    stateful LSTM and GRU layers train (NOTE [ stateful LSTM/GRU on PyTorch in Keras 3.15 ]). Given a dataset with a
    ``starts(batch)`` method, such as a
    :class:`~kseq.datasets.stateful.StatefulSequenceDataset`, it also resets, before each
    batch, the rows where a new sequence begins, and only those; see
    NOTE [ resetting some rows of a stateful layer ]. The stateful layers are looked up when
    Keras sets the model (once per ``fit``, ``evaluate`` or ``predict`` call), not per batch.

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
        self._stateful: StatefulLayers | None = None

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        self._find(model)

    @property
    def stateful(self) -> StatefulLayers:
        """The stateful layers of the model, as found when it was set (again once it is built, if it was not)."""
        return self._synced()

    # -- fit --------------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        self._fitting = True
        self._check_model(self.dataset, "fit")
        if self.dataset is not None:
            check_step_count((self.params or {}).get("steps"), self.dataset, "fit")

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
        dataset = self._evaluated()
        self._check_model(dataset, "evaluate")
        if dataset is not None and not self._fitting:  # inside fit, params are fit's own (its training steps)
            check_step_count((self.params or {}).get("steps"), dataset, "evaluate")
        self.reset_all()

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:  # noqa: ARG002
        self._before(self._evaluated(), batch)

    # -- predict ----------------------------------------------------------------

    def on_predict_begin(self, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        self._check_model(self.dataset, "predict")
        if self.dataset is not None:
            check_step_count((self.params or {}).get("steps"), self.dataset, "predict")
        self.reset_all()

    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None:  # noqa: ARG002
        self._before(self.dataset, batch)

    # -- resets -----------------------------------------------------------------

    def reset_all(self) -> None:
        """Zero the state of every row of every stateful layer."""
        self._synced().reset_all()

    def reset_rows(self, rows: np.ndarray) -> None:
        """Zero the state of the rows where ``rows`` is true, leaving the others as they are."""
        self._synced().reset_rows(rows)

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

    def _find(self, model: Any) -> StatefulLayers:
        self._stateful = StatefulLayers(model)
        track_layer_states(self._stateful.layers)
        use_generic_rnn_path(self._stateful.layers)  # NOTE [ stateful LSTM/GRU on PyTorch in Keras 3.15 ]
        return self._stateful

    def _synced(self) -> StatefulLayers:
        # Reading self.model makes JAX write its state back to the variables first, and the next
        # step read them again: NOTE [ resetting some rows of a stateful layer ].
        model = self.model
        if self._stateful is None or not self._stateful.complete:
            return self._find(model)
        return self._stateful

    def _evaluated(self) -> Any:
        """The validation dataset inside ``fit``; the dataset itself for ``evaluate`` on its own."""
        return self.validation_data if self._fitting and self.validation_data is not None else self.dataset

    def _check_model(self, dataset: Any, call: str) -> None:
        if dataset is None:
            return
        rows = getattr(dataset, "local_batch_size", dataset.batch_size)  # a shard of streams: its own count
        check_stateful_model(self.model, rows, layers=self._synced())
        check_steps_per_execution(int(getattr(self.model, "steps_per_execution", 1) or 1), dataset, call)
        if call in ("fit", "evaluate"):  # NOTE [ a stateful RNN at batch size 1 on TensorFlow ]
            check_looped_rnn_rows(looped_rnn_rows(self._synced().layers), keras.backend.backend(), call)


def _check_dataset(dataset: Any, argument: str) -> Any:
    if dataset is None or (hasattr(dataset, "starts") and hasattr(dataset, "batch_size")):
        return dataset
    msg = (
        f"ResetStates({argument}=...) expects a stateful dataset with starts(batch) and batch_size "
        f"(a StatefulSequenceDataset), or None. Received {type(dataset).__name__}."
    )
    raise StructureError(msg)
