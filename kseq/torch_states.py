"""Stateful LSTM and GRU layers that train on the PyTorch backend of Keras 3.15.

# NOTE [ stateful LSTM/GRU on PyTorch in Keras 3.15 ]
On ``KERAS_BACKEND=torch`` with Keras <= 3.15.1, ``fit`` fails at the first backward pass
of a stateful ``LSTM`` or ``GRU`` ("one of the variables needed for gradient computation
has been modified by an inplace operation"), with or without kseq (keras-team/keras#20875).
The layers' fused path (``use_cudnn="auto"``, taken on the CPU too) reads the state
variable and then assigns the new state into the same tensor in place, which autograd
refuses. Keras's generic RNN path copies the states first when the layer is stateful,
and it trains. So :func:`use_generic_rnn_path` sets ``use_cudnn=False`` on each stateful
LSTM/GRU layer, on torch only and only for the Keras versions that have the bug (Keras
master fixed the fused path in PR #23464, after 3.15.1). The two paths compute the same
function: the weights, the saved model and the other backends are unchanged.
:class:`~kseq.callbacks.ResetStates` does it when Keras sets its model, and
``kseq.legacy.fit_generator`` before training.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras

from kseq.keras_compat import TORCH_FUSED_RNN_FIXED_IN, has_fused_rnn_bug

__all__ = ["FIXED_IN", "has_fused_path_bug", "use_generic_rnn_path"]

FIXED_IN = TORCH_FUSED_RNN_FIXED_IN  # the first release after keras-team/keras PR #23464 (kept: a public name)


def has_fused_path_bug(version: str | None = None, backend: str | None = None) -> bool:
    """Whether this Keras (``version``, default the installed one) on ``backend`` has the bug in the NOTE.

    Example:
        >>> [has_fused_path_bug(v, b) for v, b in [("3.15.1", "torch"), ("3.15.1", "jax"), ("3.16.0", "torch")]]
        [True, False, False]
    """
    return has_fused_rnn_bug(version, backend)


def use_generic_rnn_path(layers: Iterable[Any]) -> int:
    """Set ``use_cudnn=False`` on the stateful LSTM/GRU ``layers`` where the bug applies; returns how many changed."""
    if not has_fused_path_bug():
        return 0
    changed = 0
    for layer in layers:
        if isinstance(layer, (keras.layers.LSTM, keras.layers.GRU)) and layer.use_cudnn is not False:
            layer.use_cudnn = False
            changed += 1
    return changed
