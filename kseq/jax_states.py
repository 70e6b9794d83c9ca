"""Make stateful layers carry their state from batch to batch on JAX, as they do on the other backends.

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
``model.weights``, ``get_weights`` and saving are unchanged.
:class:`~kseq.callbacks.ResetStates` does this when it is attached, and ``fit_generator``
for the model it trains. TensorFlow and PyTorch need nothing: their steps update the
variables in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras

from kseq.keras_compat import list_variables_for_jax
from kseq.states import stateful_layers

__all__ = ["track_layer_states", "track_states"]


def track_states(model: Any) -> int:
    """Make ``model``'s stateful layers carry their state across batches on JAX; returns how many it listed.

    A no-op on other backends and for states already listed. See
    NOTE [ stateful RNNs on JAX in Keras 3.15 ].

    Example:
        >>> import keras
        >>> rnn = keras.layers.SimpleRNN(2, stateful=True)
        >>> model = keras.Sequential([keras.Input(batch_shape=(3, 4, 1)), rnn])
        >>> track_states(model) == (1 if keras.backend.backend() == "jax" else 0)
        True
        >>> track_states(model)  # already listed
        0
    """
    if keras.backend.backend() != "jax":
        return 0
    return track_layer_states(stateful_layers(model))


def track_layer_states(layers: Iterable[Any]) -> int:
    """:func:`track_states` for stateful layers already found (e.g. :attr:`StatefulLayers.layers`)."""
    if keras.backend.backend() != "jax":
        return 0
    return sum(list_variables_for_jax(layer, keras.tree.flatten(layer.states)) for layer in layers)
