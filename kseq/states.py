"""The stateful layers of a model, found once: zero the state of all their rows, or of some.

# NOTE [ resetting some rows of a stateful layer ]
Keras 3.15 resets a stateful layer as a whole: ``layer.reset_state()`` sets the state
of every row to zero, and nothing calls it for you, not even between epochs. When
several sequences share the streams of a :class:`~kseq.datasets.stateful.StatefulSequenceDataset`,
a new sequence begins in one row while the others are mid-sequence, so a whole-layer
reset would cut them off. :meth:`StatefulLayers.reset_rows` instead zeroes only the rows
that start a new sequence: it multiplies each state variable of each stateful layer by a
0/1 row mask (``layer.states`` holds one variable per state, batch first). Zero is exactly
what ``reset_state()`` assigns, so a reset row and a fresh layer agree.

The layers and their variables are looked up once per model (walking the layer tree is
not free on a deep model) and each mask once per pattern of rows, so a reset costs one
multiply-and-assign per state variable.

:class:`~kseq.callbacks.ResetStates` resets in ``on_*_batch_begin``, between two steps: on
TensorFlow and PyTorch the steps read and update the variables themselves; on JAX the
trainer holds the state outside the variables during a run, so the callback reads
``self.model`` first, which writes that state back to the variables (Keras'
``jax_state_sync``) and makes the next step read them again. With ``steps_per_execution > 1``
Keras runs several batches per call, so a reset inside that group is impossible:
:func:`kseq.validation.check_steps_per_execution` refuses it.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kseq.errors import StructureError
from kseq.keras_compat import flatten_layers

__all__ = ["StatefulLayers", "stateful_layers"]

# Masks kept per StatefulLayers: one per pattern of reset rows. A dataset has at most one
# pattern per batch; the bound only guards against an unending stream of new patterns.
_MASKS_KEPT = 4096


def stateful_layers(model: Any) -> list[Any]:
    """Every built layer of ``model`` (nested models and wrappers included) with ``stateful=True``."""
    layers = flatten_layers(model)  # nested models and wrappers too (kseq.keras_compat)
    return [layer for layer in layers if getattr(layer, "stateful", False) and getattr(layer, "states", None)]


class StatefulLayers:
    """The built stateful layers of one model and their state variables, looked up once.

    See NOTE [ resetting some rows of a stateful layer ]. A model that is not built yet
    may gain stateful layers when it is: ``complete`` is false then, and the owner looks
    them up again once the model is built.

    Example:
        >>> import numpy as np, keras
        >>> rnn = keras.layers.SimpleRNN(2, stateful=True, name="rnn")
        >>> model = keras.Sequential([keras.Input(batch_shape=(3, 4, 1)), rnn])
        >>> layers = StatefulLayers(model)
        >>> [layer.name for layer in layers.layers], layers.rows()
        (['rnn'], {'rnn': 3})
        >>> _ = layers.variables[0].assign(np.ones((3, 2), "float32"))
        >>> layers.reset_rows(np.array([False, True, False]))
        >>> keras.ops.convert_to_numpy(layers.variables[0].value)[:, 0].tolist()
        [1.0, 0.0, 1.0]
    """

    __slots__ = ("_masks", "complete", "layers", "variables")

    def __init__(self, model: Any) -> None:
        self.complete = bool(getattr(model, "built", True))
        self.layers = tuple(stateful_layers(model))
        self.variables = tuple(state for layer in self.layers for state in keras.tree.flatten(layer.states))
        self._masks: dict[bytes, tuple[Any, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.layers)

    def rows(self) -> dict[str, int]:
        """Each stateful layer's name and the number of rows (streams) its state holds."""
        return {layer.name: int(keras.tree.flatten(layer.states)[0].shape[0]) for layer in self.layers}

    def reset_all(self) -> None:
        """Zero the state of every row of every stateful layer."""
        for layer in self.layers:
            layer.reset_state()

    def reset_rows(self, rows: Any) -> None:
        """Zero the state of the rows where ``rows`` is true, leaving the others as they are."""
        rows = np.asarray(rows, dtype=bool)
        masks = self._masks.get(rows.tobytes())
        if masks is None:
            masks = self._masks_for(rows)
        for state, mask in zip(self.variables, masks, strict=True):
            state.assign(state.value * mask)

    def _masks_for(self, rows: np.ndarray) -> tuple[Any, ...]:
        held = {state.shape[0] for state in self.variables}
        if rows.ndim != 1 or held - {len(rows)}:
            msg = (
                f"reset_rows expects one flag per row of the stateful layers' state, {sorted(held)} rows "
                f"({self.rows()}). Received flags of shape {rows.shape}. Pass ds.starts(batch) of the dataset "
                "the model was built for."
            )
            raise StructureError(msg)
        keep = (~rows).astype("float32")
        shared: dict[tuple[int, str], Any] = {}  # one tensor per rank and dtype: LSTM's h and c share theirs
        for state in self.variables:
            key = (len(state.shape), str(state.dtype))
            if key not in shared:
                mask = keep.reshape((len(keep),) + (1,) * (key[0] - 1))
                shared[key] = keras.ops.convert_to_tensor(mask, dtype=state.dtype)
        masks = tuple(shared[(len(state.shape), str(state.dtype))] for state in self.variables)
        if len(self._masks) >= _MASKS_KEPT:
            self._masks.clear()
        self._masks[rows.tobytes()] = masks
        return masks
