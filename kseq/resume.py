"""kseq.BackupAndRestore: resume a preempted ``fit`` at the batch it reached, on the order its seed defines.

# NOTE [ exact resume ]
Keras 3.15's ``keras.callbacks.BackupAndRestore`` restores the weights and the epoch: an epoch
interrupted at batch 700 of 800 trains again from batch 0, and a kseq dataset would start again at
its epoch 0. A kseq batch is a pure function of ``(seed, epoch, index)`` (NOTE [ dataset state ]),
so kseq can resume exactly. Each backup holds the weights with the optimizer's variables
(``model.save_weights`` writes both in Keras 3), the variables that file leaves out (the model's
non-trainable variables, which include the dropout seed generators' states, and the state of every
stateful RNN layer), Keras's epoch and batch, and the dataset's state.

The position saved is Keras's own batch counter (``on_train_batch_end``), never ``ds.position``:
on TensorFlow, ``tf.data`` reads batches ahead of training. On restart ``on_train_begin`` loads the
newest complete backup and, when it was taken inside an epoch, trains that epoch's remaining batches
itself with ``model.train_on_batch``, in order, each the dataset's ``get_batch(index, epoch)`` put
in the view's structure when ``dataset`` is a :class:`~kseq.datasets.view.ModelView` (so a
``StatefulSequenceDataset``, which serves ``ds[i]`` only in order from 0, resumes mid-stream). Before
each of those batches, for a dataset with ``starts(batch)`` (a stateful one), it zeroes the rows of the
model's stateful layers where a new sequence starts, as :class:`~kseq.callbacks.ResetStates` does in
``fit``, so a stateful model's rows are reset exactly where they would have been. Then it sets the
epoch ``fit`` starts at (``kseq.keras_compat.set_initial_epoch``, as Keras's own callback does) so that
``fit`` continues at the next epoch. Variables are the source of truth in ``on_train_begin`` on every backend, so the
steps run there are the steps ``fit`` would have run (bit-exact on TensorFlow with op determinism).
``fit`` reads ``len(dataset)`` once per call, so a shorter first epoch is not an option.

The dataset counts its own epochs as passes (NOTE [ epochs are passes ]), so ``fit``'s epoch ``e``
is the dataset's epoch ``e`` with or without this callback; ``on_epoch_begin(e)`` only puts a restored
dataset at ``e``. A dataset built with ``seed=None`` adopts the backup's seed when it is restored.

Keras hands a callback neither ``fit``'s arguments nor the other callbacks, and kseq does not read them
from the call stack. ``fit(shuffle=True)`` (Keras's default) is seen by the dataset itself: its requests
leave batch order (``Position.in_order``), and the first training batch that shows it raises, before
any backup of a step that named no batch is written.

Not resumed: validation inside an interrupted epoch (the resumed epoch skips it; the next ones run
it), and other callbacks' per-batch hooks for the resumed batches (a per-batch learning-rate
schedule would not see them). ``fit(class_weight=...)`` is not visible to a callback (Keras 3.15 and
3.16 keep it in a local of ``fit``), so the callback takes the same mapping as its own ``class_weight=``
and trains the replayed batches with ``train_on_batch(..., class_weight=)``, as ``fit`` weighs its own;
or pass class weights to a kseq dataset (``MultiInputDataset(class_weight=...)``), which puts them in
every batch, replayed ones included. A :class:`~kseq.legacy.GeneratorDataset` cannot rewind its
generator and is refused.

# NOTE [ atomic backups ]
A backup is a directory ``backup-NNNNNN`` in ``backup_dir``, written whole under a temporary name
``.partial-NNNNNN-PID`` (weights, variables, and last ``backup.json``, which lists every file with
its size), each file and the directory fsynced, then renamed into place, and the parent directory
fsynced. A rename is atomic, so a kill at any moment leaves every ``backup-*`` directory complete:
weights and dataset position are never from two different steps. The fsyncs guard against losing
the machine, not the process (a killed process's writes are in the page cache); ``fsync=False``
drops them, and a newest backup that a lost machine left short fails its size check on restart.
The newest backup is the highest number; older ones (all but the newest two with
``double_checkpoint=True``) are removed after the rename.
On restart leftover ``.partial-*`` directories are removed, and a backup that cannot be read (a
file missing, truncated or unreadable, a broken ``backup.json``) is skipped with a warning for the
next older one, or for training from scratch, with the model's variables as they were before the
attempt. A readable backup of another model or dataset is an error, not damage: it raises.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kseq.datasets import Dataset, ModelView
from kseq.errors import KseqError
from kseq.keras_compat import set_initial_epoch
from kseq.states import StatefulLayers
from kseq.structure import as_fed
from kseq.validators import integer

__all__ = ["BACKUP_FORMAT", "BackupAndRestore"]

BACKUP_FORMAT = "kseq.backup/1"
_PREFIX, _PARTIAL = "backup-", ".partial-"
_WEIGHTS, _VARIABLES, _META = "model.weights.h5", "variables.npz", "backup.json"
_META_KEYS = {"format", "epoch", "batch", "dataset", "variables", "files"}


class _DamagedError(Exception):
    """A backup whose files are not what its ``backup.json`` says were written."""


# Errors that mean a backup's files are damaged (h5py and numpy report a truncated file as these).
# A ValueError of load_weights is left alone: it means another model, not damage.
_DAMAGE = (OSError, EOFError, KeyError, zipfile.BadZipFile, _DamagedError)


class BackupAndRestore(keras.callbacks.Callback):
    """``keras.callbacks.BackupAndRestore`` that also resumes the batch and the dataset's order.

    Each backup holds the weights, the optimizer's state, the model's non-trainable and stateful
    RNN variables, Keras's epoch and batch, and ``dataset.get_state()``; it is written so that a
    kill at any moment leaves the previous complete backup or the new one (NOTE [ atomic backups ]).
    Rerun the same command after a preemption: the weights, optimizer, epoch and batch are restored,
    the interrupted epoch trains only its remaining batches, and every later epoch is the one the
    seed defines (NOTE [ exact resume ]). A missing or damaged backup never stops the restart: the
    newest readable one is used, or training starts from scratch, with a warning.

    Args:
        backup_dir: a directory for this run's backups only.
        dataset: the kseq dataset (or its :class:`~kseq.datasets.view.ModelView`) passed to ``fit``.
        save_freq: ``"epoch"``: back up after every epoch; an integer ``n``: after every ``n``
            training batches.
        double_checkpoint: keep the previous backup too, as a fallback if the newest is damaged.
        delete_checkpoint: remove the backups when ``fit`` ends.
        class_weight: the ``class_weight`` passed to ``fit``, if any: the batches this callback trains
            itself (the rest of an interrupted epoch) are weighed with it as ``fit`` weighs its own.
            ``fit`` does not tell a callback its arguments, so pass the same mapping to both.
        fsync: flush each backup to disk before it is put in place. A killed process loses nothing
            either way (its writes are in the page cache); ``False`` saves the flushes' time (a few ms
            a file on a local disk, more on a network one) at the risk that losing the machine
            itself damages the newest backup, which the restart then skips (NOTE [ atomic backups ]).

    Attributes:
        restored: ``{"path", "epoch", "batch"}`` of the backup the last ``fit`` restored, ``None`` when it
            started from scratch.

    Raises:
        KseqError: at construction, for a dataset without a state (a ``GeneratorDataset``); when
            ``fit`` starts, for ``steps_per_epoch`` other than ``len(dataset)``, or a backup of
            another dataset (naming each difference) or of another model.

    Example:
        >>> import tempfile, numpy as np, keras, kseq
        >>> data = {"x": np.linspace(0, 1, 16).reshape(8, 2), "y": np.ones(8)}
        >>> ds = kseq.MultiInputDataset(data, inputs="x", targets="y", batch_size=4, seed=0)
        >>> x = keras.Input((2,), name="x")
        >>> model = keras.Model(x, keras.layers.Dense(1)(x))
        >>> model.compile("sgd", "mse")
        >>> view = ds.for_model(model)
        >>> backup = kseq.BackupAndRestore(tempfile.mkdtemp(), view, save_freq=1, delete_checkpoint=False)
        >>> _ = model.fit(view, epochs=2, shuffle=False, callbacks=[backup], verbose=0)  # 2 x 2 batches: 4 backups
        >>> [p.name for p in Path(backup.backup_dir).iterdir()]  # only the newest is kept
        ['backup-000004']
        >>> model.fit(view, epochs=3, shuffle=False, callbacks=[backup], verbose=0).epoch  # the same command again
        [2]
        >>> backup.restored["epoch"], backup.restored["batch"]  # restored after epoch 1's last batch
        (1, 2)
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        dataset: Any,
        *,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
        fsync: bool = True,
        class_weight: Mapping[int, float] | None = None,
    ) -> None:
        super().__init__()
        if not os.fspath(backup_dir):
            msg = "backup_dir must be a directory path. Received backup_dir=''. Pass a directory for this run only."
            raise KseqError(msg)
        self.backup_dir = os.fspath(backup_dir)
        self.dataset = _check_dataset(dataset)
        self.save_freq = _check_save_freq(save_freq)
        self.double_checkpoint = bool(double_checkpoint)
        self.delete_checkpoint = bool(delete_checkpoint)
        self.fsync = bool(fsync)
        self.class_weight = _check_class_weight(class_weight)
        self.restored: dict[str, Any] | None = None  # {"path", "epoch", "batch"} of the backup restored by fit
        self._epoch = 0
        self._last_batch = -1
        self._since_save = 0
        self._number = 0
        self._extra: tuple[Any, ...] = ()
        self._stateful: StatefulLayers | None = None

    # -- Keras hooks --------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        _check_steps((self.params or {}).get("steps"), self.dataset)
        model = self.model
        self._extra = _extra_variables(model)
        self._stateful = StatefulLayers(model) if hasattr(self.dataset, "starts") else None
        self.dataset.get_state()  # the fingerprint is computed once, here, not in a timed save
        self.restored, self._since_save = None, 0
        root = Path(self.backup_dir)
        for partial in root.glob(f"{_PARTIAL}*"):
            shutil.rmtree(partial, ignore_errors=True)  # a backup a kill interrupted
        backups = _backups(root)
        self._number = _number(backups[0]) if backups else 0
        position = self._restore(backups)
        if position is None:
            return
        epoch, batch = position
        if batch > 0 and epoch < (self.params or {}).get("epochs", epoch + 1):  # not beyond fit(epochs=...)
            self._finish_epoch(epoch, batch)
            epoch += 1
        set_initial_epoch(model, epoch)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        self._epoch, self._last_batch = epoch, -1
        if self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:  # noqa: ARG002
        self._after_batch(batch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        self._epoch = epoch + 1
        if self.save_freq == "epoch":
            self._save(epoch + 1, 0)

    def on_train_end(self, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        set_initial_epoch(self.model, None)  # a later fit of this model starts where it is told to
        if self.delete_checkpoint:
            root = Path(self.backup_dir)
            for path in [*_backups(root), *root.glob(f"{_PARTIAL}*")]:
                shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                root.rmdir()  # only if nothing else is in it

    # -- resuming ---------------------------------------------------------------

    def _restore(self, backups: list[Path]) -> tuple[int, int] | None:
        """Load the newest readable backup; ``(epoch, batch)`` of it, or ``None`` to train from scratch."""
        model = self.model
        if not backups:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded
        before = _snapshot(model)
        for path in backups:
            try:
                meta = _read_meta(path)
                _check_variables(meta, self._extra, path)
                model.load_weights(str(path / _WEIGHTS))
                _load_variables(path / _VARIABLES, self._extra)
            except _DAMAGE as e:
                warnings.warn(f"kseq.BackupAndRestore: skipping the damaged backup {path}: {e}", stacklevel=2)
                continue
            self.dataset.set_state(meta["dataset"])  # another dataset's state raises, naming the differences
            self.restored = {"path": str(path), "epoch": int(meta["epoch"]), "batch": int(meta["batch"])}
            return int(meta["epoch"]), int(meta["batch"])
        for variable, value in before:
            variable.assign(value)
        warnings.warn(
            f"kseq.BackupAndRestore: no readable backup in {self.backup_dir} ({len(backups)} damaged); "
            "training starts from scratch.",
            stacklevel=2,
        )
        return None

    def _finish_epoch(self, epoch: int, start: int) -> None:
        """Train batches ``start..`` of ``epoch`` as ``fit`` would have (NOTE [ exact resume ])."""
        model = self.model
        self._epoch, self._last_batch = epoch, start - 1
        for index in range(start, len(self.dataset)):
            if self._stateful:  # what ResetStates does before batch `index` in fit
                self._stateful.reset_rows(self.dataset.starts(index))
            batch = self._batch(index, epoch)
            if self.class_weight is None:
                model.train_on_batch(*batch)
            else:
                model.train_on_batch(*_unweighted(batch, index), class_weight=self.class_weight)
            self._after_batch(index)
        self.on_epoch_end(epoch)

    def _batch(self, index: int, epoch: int) -> tuple:
        """Batch ``index`` of ``epoch`` as ``fit`` receives it from ``dataset[index]``."""
        return tuple(as_fed(self.dataset.model_structure, self.dataset.get_batch(index, epoch)))

    # -- saving -----------------------------------------------------------------

    def _after_batch(self, batch: int) -> None:
        _check_in_order(self.dataset)
        added = batch - self._last_batch
        self._last_batch = batch
        if self.save_freq == "epoch":
            return
        self._since_save += added
        if self._since_save >= int(self.save_freq):
            self._since_save = 0
            self._save(self._epoch, batch + 1)

    def _save(self, epoch: int, batch: int) -> None:
        """Write one complete backup and put it in place atomically (NOTE [ atomic backups ])."""
        model = self.model  # on JAX, reading it writes the training state back to the variables
        root = Path(self.backup_dir)
        root.mkdir(parents=True, exist_ok=True)
        self._number += 1
        partial = root / f"{_PARTIAL}{self._number:06d}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        model.save_weights(str(partial / _WEIGHTS))
        arrays = {f"v{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(self._extra)}
        if arrays:
            np.savez(partial / _VARIABLES, **arrays)  # type: ignore[arg-type]
        files = {p.name: p.stat().st_size for p in partial.iterdir()}
        meta = {
            "format": BACKUP_FORMAT,
            "epoch": int(epoch),
            "batch": int(batch),
            "dataset": {**self.dataset.get_state(), "epoch": int(epoch), "batch": int(batch)},
            "variables": [[v.path, list(v.shape)] for v in self._extra],
            "files": files,
        }
        (partial / _META).write_text(json.dumps(meta))
        if self.fsync:
            for path in [*(partial / name for name in files), partial / _META, partial]:
                _fsync(path)
        os.rename(partial, root / f"{_PREFIX}{self._number:06d}")
        if self.fsync:
            _fsync(root)
        for old in _backups(root)[2 if self.double_checkpoint else 1 :]:
            shutil.rmtree(old, ignore_errors=True)


# -- helpers ----------------------------------------------------------------------


def _check_dataset(dataset: Any) -> Any:
    inner = dataset.dataset if isinstance(dataset, ModelView) else dataset
    if isinstance(inner, Dataset):
        return dataset
    name = type(inner).__name__
    why = (
        "a GeneratorDataset reads a Python generator, which cannot be rewound to a batch"
        if name == "GeneratorDataset"
        else "it has no get_state()/set_state() position"
    )
    msg = (
        f"kseq.BackupAndRestore resumes a kseq dataset at a batch, and {why}. Expected a kseq.Dataset "
        f"(MultiInputDataset, a subclass with build_batch, ...) or its ds.for_model(model) view. Received {name}. "
        "Build the batches as a kseq.Dataset, or use keras.callbacks.BackupAndRestore (it restores the epoch only)."
    )
    raise KseqError(msg)


def _check_save_freq(save_freq: object) -> str | int:
    if save_freq == "epoch":
        return "epoch"
    if isinstance(save_freq, str) or save_freq is False:
        msg = (
            f'save_freq must be "epoch" or an integer >= 1. Received save_freq={save_freq!r}. '
            "kseq backs up on a schedule only (Keras's preemption checkpointing is not supported)."
        )
        raise KseqError(msg)
    return integer(save_freq, "save_freq", minimum=1)


def _check_steps(steps: object, dataset: Any) -> None:
    if steps is None or steps == len(dataset):
        return
    msg = (
        f"kseq.BackupAndRestore resumes at a batch of the dataset's epoch, so fit must run whole epochs of it. "
        f"Expected {len(dataset)} steps per epoch (len(dataset)). Received {steps}. "
        "Pass steps_per_epoch=None."
    )
    raise KseqError(msg)


def _extra_variables(model: Any) -> tuple[Any, ...]:
    """The variables ``save_weights`` leaves out: non-trainable ones (seed generators) and RNN states."""
    found = {id(v): v for v in (*model.non_trainable_variables, *StatefulLayers(model).variables)}
    return tuple(found.values())


def _check_in_order(dataset: Any) -> None:
    named = dataset.dataset if isinstance(dataset, ModelView) else dataset
    tracker = getattr(named, "tracker", None)
    if tracker is None or tracker.in_order:
        return
    msg = (
        "kseq.BackupAndRestore needs fit(shuffle=False). Received batches in a shuffled order: fit(shuffle=True), "
        "Keras's default, asks for a PyDataset's batches in an order drawn from Python's global random, so "
        "Keras's batch counter names no batch of the dataset, and a rerun draws another order. kseq datasets "
        "shuffle their samples every epoch from (seed, epoch) themselves: pass shuffle=False to fit."
    )
    raise KseqError(msg)


def _backups(root: Path) -> list[Path]:
    """The complete backups in ``root``, newest first."""
    found = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and p.name[len(_PREFIX) :].isdigit()]
    return sorted(found, key=_number, reverse=True)


def _number(path: Path) -> int:
    return int(path.name[len(_PREFIX) :])


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / _META).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise _DamagedError(f"{_META} is not JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != BACKUP_FORMAT or set(meta) != _META_KEYS:
        raise _DamagedError(f"{_META} is not a {BACKUP_FORMAT} record")
    for name, size in meta["files"].items():
        found = (path / name).stat().st_size
        if found != size:
            raise _DamagedError(f"{name} has {found} bytes, {size} were written")
    return meta


def _check_variables(meta: dict[str, Any], variables: tuple[Any, ...], path: Path) -> None:
    """The backup's extra variables must have this model's shapes (names may differ, as for load_weights)."""
    saved = [tuple(shape) for _, shape in meta["variables"]]
    if saved != [tuple(v.shape) for v in variables]:
        here = [[v.path, list(v.shape)] for v in variables]
        msg = (
            f"The backup {path} is of another model: its non-trainable and RNN state variables are "
            f"{meta['variables']}, this model's are {here}. Use a new backup_dir for a changed model."
        )
        raise KseqError(msg)


def _load_variables(path: Path, variables: tuple[Any, ...]) -> None:
    if not variables:
        return
    try:
        with np.load(path) as saved:
            values = [saved[f"v{i}"] for i in range(len(variables))]
    except ValueError as e:
        raise _DamagedError(f"{path.name} cannot be read ({e})") from e
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def _snapshot(model: Any) -> list[tuple[Any, np.ndarray]]:
    optimizer = [] if model.optimizer is None else list(model.optimizer.variables)
    variables = [*model.variables, *optimizer, *StatefulLayers(model).variables]
    return [(v, keras.ops.convert_to_numpy(v.value)) for v in variables]


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a directory) to disk; directories cannot be opened on Windows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_class_weight(class_weight: object) -> dict[int, float] | None:
    if class_weight is None:
        return None
    with contextlib.suppress(TypeError, ValueError):
        if isinstance(class_weight, Mapping):
            return {int(k): float(v) for k, v in class_weight.items()}
    msg = (
        "class_weight must be the mapping passed to fit's class_weight, {class index: weight}. Received "
        f"class_weight={class_weight!r:.120}. Pass e.g. class_weight={{0: 1.0, 1: 5.0}}, or None."
    )
    raise KseqError(msg)


def _unweighted(batch: tuple, index: int) -> tuple:
    """``(x, y)`` for ``train_on_batch(..., class_weight=)``, which, like ``fit``, refuses sample weights too."""
    if len(batch) == 3:
        msg = (
            f"kseq.BackupAndRestore(class_weight=...) resumes batch {index}, which carries sample weights: Keras "
            "refuses class_weight with sample weights, in fit and in train_on_batch. Expected batches (x, y). "
            "Pass the class weights to the dataset instead (MultiInputDataset(class_weight=...)), which multiplies "
            "them into its sample weights, and drop class_weight from fit and from kseq.BackupAndRestore."
        )
        raise KseqError(msg)
    return batch
