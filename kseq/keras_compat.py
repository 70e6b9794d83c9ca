"""Everything kseq relies on that depends on the Keras version: one module, each piece named and gated.

Tested on Keras 3.15.1 (the main leg of ``make test``) and on the pinned 3.16 nightly
(``keras-nightly==3.16.0.dev2026102704``, the ``keras-next`` leg). This module imports Keras
inside the functions that need it, so the Keras-free core (a worker process) may import it.
When a Keras release changes one of these behaviours, ``tests/test_keras_compat.py`` fails on it
first: each piece there has a test that measures what Keras does, not what kseq does.

# NOTE [ Keras's peeks ]
Before training, Keras reads a PyDataset and then ends an epoch that trained nothing
(Keras 3.15.1 and 3.16: ``EpochIterator.reset()`` calls ``on_epoch_end`` after the build):
on TensorFlow ``PyDatasetAdapter.get_tf_dataset`` reads batches 0 and 1 for the output
signature, with no ``on_epoch_begin``; on JAX and PyTorch the symbolic build begins an epoch,
reads one batch (a shuffled index under ``fit(shuffle=True)``) and abandons it. Counting
``on_epoch_end`` calls therefore puts a dataset one epoch ahead of ``fit`` (and the callbacks'
``on_epoch_begin(epoch)`` behind it). kseq does not guess from call stacks: an epoch is a
pass over the batches (NOTE [ epochs are passes ] in :mod:`kseq.position`), and a pass of at
most ``PEEK_BATCHES`` batches ended before it was complete is taken back if its batches are
asked for again. Nothing else here needs the peek.

# NOTE [ Keras shards a PyDataset itself from 3.16 ]
Keras 3.16 (keras-team/keras PR #23044) makes ``PyDatasetAdapter`` shard a PyDataset under a
multi-process ``keras.distribution`` whose ``auto_shard_dataset`` is true, the default: process
``k`` of ``S`` takes batches ``k, k+S, ...`` (processes may differ by one batch, and a
collective then waits forever). Keras 3.15 refuses a PyDataset there instead ("the data must be
provided as a tf.data.Dataset"). A kseq dataset is sharded by kseq, one slice of every global
batch per process (NOTE [ shards of a global batch ]); sharded by Keras as well, each process
trains on a fraction of its rows, silently. :func:`check_keras_sharding` refuses that before
the first step and names the fix: ``distribution.auto_shard_dataset = False`` with
``shard="auto"``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any

from kseq.errors import KseqError

__all__ = [
    "TORCH_FUSED_RNN_FIXED_IN",
    "check_keras_sharding",
    "flatten_layers",
    "has_fused_rnn_bug",
    "keras_version",
    "list_variables_for_jax",
    "release",
    "set_initial_epoch",
]

# keras-team/keras PR #23464 fixed stateful LSTM/GRU training on torch after 3.15.1 (NOTE in kseq/torch_states.py).
TORCH_FUSED_RNN_FIXED_IN = (3, 15, 2)


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"3.16.0.dev2026102704"`` is ``(3, 16, 0)``.

    Example:
        >>> release("3.15.1"), release("3.16.0.dev2026102704"), release("3.17.1rc1")
        ((3, 15, 1), (3, 16, 0), (3, 17, 1))
    """
    parts = []
    for piece in version.split(".")[:3]:
        digits = re.match(r"\d*", piece).group()  # type: ignore[union-attr]  # \d* always matches
        parts.append(int(digits or 0))
        if digits != piece:  # "1rc1", "dev2026...": the release ends here
            break
    return tuple(parts)


def keras_version() -> tuple[int, ...]:
    """The installed Keras's release, e.g. ``(3, 15, 1)``."""
    import keras

    return release(keras.__version__)


# -- sharding (NOTE [ Keras shards a PyDataset itself from 3.16 ]) --------------------------------


def check_keras_sharding(dataset: Any) -> None:
    """Refuse to feed ``dataset`` where Keras (3.16 and later) would shard it again; nothing to do elsewhere.

    Called at the first batch of every pass, so ``fit`` fails at its peek, before the first step.
    """
    keras = sys.modules.get("keras")
    if keras is None:  # a worker, or nothing has built a Keras model: nobody shards
        return
    dist = keras.distribution.distribution()
    if dist is None or not getattr(dist, "auto_shard_dataset", False) or getattr(dist, "num_processes", 1) <= 1:
        return
    if release(keras.__version__) < (3, 16):  # 3.15 refuses a PyDataset here itself, with its own fix
        return
    shard = getattr(dataset, "shard", None)
    mine = "" if shard is None or shard.single else f" (kseq shard {shard.index} of {shard.count})"
    msg = (
        f"{type(dataset).__name__}: Keras {keras.__version__} shards a PyDataset itself under a multi-process "
        f"keras.distribution whose auto_shard_dataset is True ({dist.num_processes} processes; keras PR #23044), "
        f"taking every {dist.num_processes}th batch{mine}, so this process would train on a fraction of its "
        "rows. kseq slices every global batch itself. Fix: set distribution.auto_shard_dataset = False before "
        "fit and build the dataset with shard='auto' (NOTE [ Keras shards a PyDataset itself from 3.16 ])."
    )
    raise KseqError(msg)


# -- private attributes with no public path, each named --------------------------------------------


def set_initial_epoch(model: Any, epoch: int | None) -> None:
    """Make ``fit`` start at ``epoch`` from inside ``on_train_begin``.

    No public path: ``keras.callbacks.BackupAndRestore`` itself writes ``model._initial_epoch``
    (Keras 3.15.1 and 3.16), which ``fit`` reads after ``on_train_begin``; ``None`` clears it.
    """
    model._initial_epoch = epoch


def flatten_layers(model: Any) -> list[Any]:
    """Every layer of ``model``, nested models and wrappers (Bidirectional's two RNNs) included.

    No public recursive walk in Keras 3.15.1 or 3.16: ``Layer._flatten_layers`` is what Keras uses.
    """
    return list(model._flatten_layers(include_self=False, recursive=True))


def list_variables_for_jax(layer: Any, variables: Iterable[Any]) -> int:
    """List ``variables`` among ``layer``'s variables so JAX's stateless steps carry them; returns how many.

    No public path (NOTE [ stateful RNNs on JAX in Keras 3.15 ] in kseq/jax_states.py): ``Layer.variables``
    reads the ``.state`` of every entry of ``layer._seed_generators`` (Keras 3.15.1 and 3.16).
    """
    listed = layer._seed_generators
    added = 0
    for variable in variables:
        if not any(getattr(entry, "state", None) is variable for entry in listed):
            listed.append(_ListedState(variable))
            added += 1
    return added


class _ListedState:
    """An entry of ``Layer._seed_generators``: ``Layer.variables`` reads only its ``state``."""

    def __init__(self, state: Any) -> None:
        self.state = state


def has_fused_rnn_bug(version: str | None = None, backend: str | None = None) -> bool:
    """Whether stateful LSTM/GRU fail to train on PyTorch (keras-team/keras#20875, fixed by PR #23464).

    Example:
        >>> [has_fused_rnn_bug(v, b) for v, b in [("3.15.1", "torch"), ("3.15.1", "jax"), ("3.16.0", "torch")]]
        [True, False, False]
    """
    import keras

    backend = keras.backend.backend() if backend is None else backend
    return backend == "torch" and release(version or keras.__version__) < TORCH_FUSED_RNN_FIXED_IN
