"""GeneratorDataset: a Python generator (Keras 2 ``fit_generator`` style) as a Keras 3 PyDataset."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import keras

from kseq.callbacks import stateful_layers
from kseq.errors import StructureError
from kseq.legacy.batches import NormalisedBatches
from kseq.legacy.stream import Stream
from kseq.structure import as_fed
from kseq.validation import CheckReport
from kseq.validators import batch_index, integer, whole_number
from kseq.workers.malloc import keep_tuned

__all__ = ["EpochMarker", "GeneratorDataset", "check_steps"]

REPLAY = 2  # batches a window may take and give back; see NOTE [ generator windows ]


class GeneratorDataset(NormalisedBatches, keras.utils.PyDataset):
    """A generator, or a function returning one, as a PyDataset of ``steps_per_epoch`` batches.

    Yields are read as Keras 2 read them (see NOTE [ legacy yields ] in
    :mod:`kseq.legacy.batches`): ``(x, y[, sample_weight])``; x a list in the order
    of ``model.inputs`` or a dict by input name; targets a list or a dict by output
    layer name, even for a model built from lists or one tensor. With ``model=``
    (or after :meth:`adopt`) every batch is checked against the model and put in
    its structure, and an error names the epoch and step it came from; :meth:`check`
    only reads batch 0.

    A generator is read on, across epochs, as ``fit_generator`` did: it must yield
    ``steps_per_epoch`` x ``epochs`` batches. A function is called again at the
    start of every epoch, so each epoch reads a new generator. Reads are serialised
    by a lock, so ``workers > 1`` threads are safe with any generator; no yield is
    lost or repeated by Keras's signature and build passes (NOTE [ generator
    windows ] in :mod:`kseq.legacy.stream`). Passed to ``model.fit`` directly
    with ``steps_per_epoch=1`` on JAX, it needs an :class:`EpochMarker` to tell
    the build pass from an epoch; ``fit_generator`` adds one itself. With ``fit(shuffle=False)`` (what
    ``fit_generator`` passes) batches are trained in the generator's order, with
    threads too; Keras's default ``shuffle=True`` mixes them within an epoch.

    Args:
        generator: a generator (any iterator), or a function returning a new one.
        steps_per_epoch: batches per epoch.
        model: the Keras model; checks the first batch now and adapts every batch.
        class_weight: ``{class_id: weight}`` or ``{output_name: {class_id: weight}}``,
            multiplied into the sample weights (needs ``model``).
        x_only: read yields as ``predict_generator`` did (targets dropped).
        workers: threads that read batches (``> 1``: Keras's thread pool).
        use_multiprocessing: refused; a generator cannot be shared across processes.
        max_queue_size: as for ``keras.utils.PyDataset``.
        read_first: with ``model``, read and check batch 0 now (the default); ``False``
            reads nothing until Keras asks, and checks each batch as it is read
            (``fit_generator`` does this, so that the first read comes after the
            callbacks' ``on_train_begin``, as in Keras 2).

    Raises:
        StructureError: at construction, for ``use_multiprocessing=True``, a bad
            ``steps_per_epoch``, or a first batch that does not fit ``model``; when
            read, for a generator that ends early (naming the epoch and step) or
            a batch that does not fit.

    Example:
        >>> import keras, numpy as np
        >>> a, b = keras.Input((3,), name="a"), keras.Input((5,), name="b")
        >>> h = keras.layers.Concatenate()([a, b])
        >>> model = keras.Model([a, b], keras.layers.Dense(1, name="score")(h))
        >>> def batches():
        ...     while True:
        ...         yield {"b": np.ones((4, 5)), "a": np.zeros((4, 3))}, {"score": np.ones(4)}
        >>> ds = GeneratorDataset(batches(), steps_per_epoch=10, model=model)
        >>> x, y = ds[0]
        >>> [v.shape for v in x], y.shape
        ([(4, 3), (4, 5)], (4,))
    """

    def __init__(
        self,
        generator: Iterator[Any] | Callable[[], Iterator[Any]],
        steps_per_epoch: int,
        *,
        model: Any = None,
        class_weight: Mapping[Any, Any] | None = None,
        x_only: bool = False,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        read_first: bool = True,
    ) -> None:
        if use_multiprocessing:
            msg = (
                "A Python generator cannot be shared with worker processes: each process would read its own "
                "copy and repeat the data (Keras 2 warned about this). Expected use_multiprocessing=False. "
                "Use workers=N threads (reads are locked, any generator is safe), or turn the data into a "
                "keras.utils.Sequence or a kseq.Dataset, which any process can index."
            )
            raise StructureError(msg)
        if not (callable(generator) or hasattr(generator, "__next__")):
            msg = (
                f"Expected a generator, or a function returning one. Received {type(generator).__name__}. "
                "For a keras.utils.Sequence use kseq.legacy.SequenceAdapter."
            )
            raise StructureError(msg)
        workers = integer(workers, "workers", minimum=0)
        super().__init__(workers=workers, use_multiprocessing=False,
                         max_queue_size=integer(max_queue_size, "max_queue_size", minimum=1))
        steps = check_steps(steps_per_epoch, "steps_per_epoch")
        threads = workers > 1
        self._stream = Stream(generator, steps=steps, replay=0 if threads else REPLAY, slack=workers if threads else 0)
        self._set_up(model, class_weight, x_only, read_first)

    # -- the PyDataset protocol --------------------------------------------------

    def __len__(self) -> int:
        return self._stream.steps

    def __getitem__(self, index: int) -> tuple:
        keep_tuned()  # NOTE [ malloc thresholds ]
        named = self.get_batch(index)
        try:
            return as_fed(self.model_structure, named)
        except Exception as e:
            self.last_error = e
            raise

    def on_epoch_begin(self) -> None:
        self._stream.begin()

    def on_epoch_end(self) -> None:
        self._stream.end()

    # -- kseq API ------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Epochs completed (Keras's build and signature passes do not count)."""
        return self._stream.epoch

    def set_epoch(self, epoch: int) -> None:
        """Number epochs from ``epoch`` in messages (for ``fit(initial_epoch=...)``)."""
        self._stream.set_epoch(epoch)

    def get_batch(self, index: int, epoch: int | None = None) -> tuple:
        """Batch ``index`` named by model input/output, not adapted; see NOTE [ generator windows ]."""
        if epoch is not None and int(epoch) != self.epoch:
            msg = (
                f"A generator can only give batches of the epoch it is in (epoch {self.epoch}). "
                f"Received epoch={epoch}. For random access by epoch, use a kseq.Dataset."
            )
            raise StructureError(msg)
        index = batch_index(index, len(self), fix="Its length is steps_per_epoch.")
        try:
            where, raw = self._raw_batch(int(index))
            return self._normaliser.name(raw, where=where)
        except Exception as e:
            self.last_error = e
            raise

    def check(self, model: Any, *, verbose: bool = True) -> CheckReport:
        """Check the first batch against ``model``; read-only (``model=`` or :meth:`adopt` adapts).

        Unlike ``kseq.check(model, ds)``, this names list yields by the model's
        inputs before checking them. The batch read is kept for the first epoch.
        """
        self._refuse_threads(model)
        return super().check(model, verbose=verbose)

    def adopt(self, model: Any, *, verbose: bool = False, read: bool = True) -> CheckReport | None:
        """Check batch 0 and put every batch in ``model``'s structure from now on (what ``model=`` does).

        ``read=False``: check each batch only when it is read (see :meth:`NormalisedBatches.adopt`).
        """
        self._refuse_threads(model)
        self._stream.replay = 0 if self.workers > 1 else max(REPLAY, int(getattr(model, "steps_per_execution", 1)))
        return super().adopt(model, verbose=verbose, read=read)

    def _refuse_threads(self, model: Any) -> None:
        if self.workers > 1 and stateful_layers(model):
            msg = (
                f"Model {model.name!r} has stateful layers, which need the batches in order, but threads "
                f"(workers={self.workers}) read a generator in whatever order they get to it. Expected workers=1."
            )
            raise StructureError(msg)

    def _raw_batch(self, index: int) -> tuple[str, Any]:
        return self._stream.take(index)

    def __reduce__(self) -> Any:
        msg = (
            "A GeneratorDataset holds a live Python generator, which cannot be pickled or sent to worker "
            "processes. Use threads (workers=N), or a kseq.Dataset / keras.utils.Sequence for processes."
        )
        raise TypeError(msg)

    def __repr__(self) -> str:
        kind = "factory" if self._stream.factory is not None else "generator"
        return (
            f"GeneratorDataset({kind}, steps_per_epoch={len(self)}, epoch={self.epoch}, "
            f"batches read={self._stream.total}, workers={self.workers})"
        )


class EpochMarker(keras.callbacks.Callback):
    """Tells a GeneratorDataset which of its windows Keras really starts; see NOTE [ generator windows ].

    Keras sends ``on_epoch_begin`` (``fit``), ``on_test_begin`` (``evaluate``, and
    validation in ``fit``) or ``on_predict_begin`` (``predict``) just before it
    reads a dataset for real, and no callback before its build and signature
    passes. Used as a context manager around the call, with the marker among its
    callbacks; afterwards the dataset tells windows apart by size again.

    Args:
        dataset: the dataset to mark.
        role: ``"train"``, ``"test"`` or ``"predict"``: which pass reads it.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> ds = GeneratorDataset(iter([(np.ones((4, 2)), np.ones((4, 1)))] * 3), steps_per_epoch=1)
        >>> with EpochMarker(ds, "train") as marker:
        ...     _ = model.fit(ds, epochs=3, shuffle=False, callbacks=[marker], verbose=0)
        >>> ds.epoch
        3
    """

    def __init__(self, dataset: GeneratorDataset, role: Literal["train", "test", "predict"]) -> None:
        super().__init__()
        self.dataset = dataset
        self.role = role

    def __enter__(self) -> EpochMarker:
        self.dataset._stream.marks = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.dataset._stream.marks = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        if self.role == "train":
            self.dataset._stream.mark()

    def on_test_begin(self, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        if self.role == "test":
            self.dataset._stream.mark()

    def on_predict_begin(self, logs: dict | None = None) -> None:  # noqa: ARG002 - Keras signature
        if self.role == "predict":
            self.dataset._stream.mark()


def check_steps(steps: object, argument: str) -> int:
    """A whole number of batches >= 1 (``np.ceil(n / b)`` is accepted): :func:`kseq.validators.whole_number`."""
    return whole_number(steps, argument, fix="It counts batches.")
