"""ModelView: a named dataset's batches in one model's structure, as a new PyDataset."""

from __future__ import annotations

from typing import Any

from kseq.datasets._pydataset import KerasFacing
from kseq.errors import StructureError
from kseq.structure import ModelStructure, as_fed, check_same_routing
from kseq.validation import CheckReport, check

__all__ = ["ModelView"]


class ModelView(KerasFacing):
    """``dataset``'s batches put into ``model``'s structure; the dataset itself stays named.

    ``view[i]`` is ``as_fed(ModelStructure.of(model), dataset[i])``: a tuple in the
    model's input order for a model built from a list, one array for a
    single-tensor model, the dict in key order for a dict-built one (the same for
    targets and sample weights). Everything else is the dataset's: ``len``, the
    epoch and ``on_epoch_begin``/``on_epoch_end``, ``set_epoch``, ``close``, and its
    worker pool (Keras sees ``workers=1``, ``use_multiprocessing=False`` for a kseq
    dataset, as for the dataset itself); other public attributes (``batch_size``,
    ``seed``, ``starts``...) are read from the dataset. ``view.get_batch(i)`` is the
    named batch, as for the dataset. Making the view runs :meth:`Dataset.check` first,
    so a batch that does not fit the model raises here, before training.

    A view's tuples are right for one routing only. ``model.fit(view)`` cannot tell
    kseq which model it trains (Keras hands the dataset no model), so the guard lives
    wherever kseq does see the model: ``kseq.check(other, view)``, ``fit_generator``
    & co. and ``view.for_model(other)`` raise :class:`~kseq.errors.StructureError` for
    a model whose inputs or outputs are named, ordered or nested differently. Make
    the view from the model right before ``fit``, one view per model; see
    NOTE [ named batches and model structure ] in :mod:`kseq.structure`.

    Args:
        dataset: a named dataset: a :class:`~kseq.Dataset`, or any PyDataset whose
            ``[i]`` is ``(x[, y[, sample_weight]])`` with dicts by model name.
        model: a built Keras model (Functional or Sequential).

    Raises:
        StructureError: batch 0 does not fit ``model`` (see :func:`kseq.check`), or
            ``dataset`` is itself a view made for a model with another structure.

    Example:
        >>> import keras, numpy as np, kseq
        >>> a, b = keras.Input((3,), name="a"), keras.Input((5,), name="b")
        >>> model = keras.Model([a, b], keras.layers.Concatenate()([a, b]))  # built from a list
        >>> ds = kseq.MultiInputDataset({"a": np.zeros((8, 3)), "b": np.ones((8, 5))}, inputs=["b", "a"],
        ...                             batch_size=4, shuffle=False)
        >>> view = ds.for_model(model)
        >>> [v.shape for v in view[0][0]]  # a tuple in the model's order: a, then b
        [(4, 3), (4, 5)]
        >>> sorted(ds[0][0])  # the dataset is still named
        ['a', 'b']
        >>> swapped = keras.Model([b, a], keras.layers.Concatenate()([b, a]), name="swapped")
        >>> kseq.check(swapped, view)
        Traceback (most recent call last):
        ...
        kseq.errors.StructureError: this ModelView was made for model ...
    """

    dataset: Any
    model_structure: ModelStructure
    report: CheckReport

    def __init__(self, dataset: Any, model: Any) -> None:
        if not (callable(getattr(dataset, "get_batch", None)) and callable(getattr(dataset, "__len__", None))):
            msg = (
                "ModelView expects a kseq dataset (with get_batch and len), usually through ds.for_model(model). "
                f"Received {type(dataset).__name__}."
            )
            raise StructureError(msg)
        if isinstance(dataset, ModelView):
            dataset.require_model(ModelStructure.of(model))
            dataset = dataset.dataset
        # check() first: a mismatch raises at this point; a dataset's own check (stateful) is kept.
        own_check = getattr(dataset, "check", None)
        self.report = (
            own_check(model, verbose=False) if callable(own_check) else check(model, dataset, verbose=False)
        )
        self.dataset = dataset
        self.model_structure = self.report.structure

    # -- the PyDataset protocol ----------------------------------------------------

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        return as_fed(self.model_structure, self.dataset[index])

    def on_epoch_begin(self) -> None:
        self.dataset.on_epoch_begin()

    def on_epoch_end(self) -> None:
        self.dataset.on_epoch_end()

    @property
    def workers(self) -> int:
        """The dataset's (1 for a kseq dataset, which runs its own pool behind ``__getitem__``)."""
        return int(self.dataset.workers)

    @workers.setter
    def workers(self, value: int) -> None:
        _refuse_change("workers", value)

    @property
    def max_queue_size(self) -> int:
        """The dataset's."""
        return int(getattr(self.dataset, "max_queue_size", 10))

    @max_queue_size.setter
    def max_queue_size(self, value: int) -> None:
        _refuse_change("max_queue_size", value)

    @property
    def use_multiprocessing(self) -> bool:
        """The dataset's (False for a kseq dataset)."""
        return bool(self.dataset.use_multiprocessing)

    @use_multiprocessing.setter
    def use_multiprocessing(self, value: bool) -> None:
        _refuse_change("use_multiprocessing", value)

    # -- kseq API --------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The dataset's epoch."""
        return int(self.dataset.epoch)

    def get_batch(self, index: int, epoch: int | None = None) -> tuple:
        """The dataset's named batch (``view[index]`` is the adapted one)."""
        if hasattr(self.dataset, "get_batch"):
            return self.dataset.get_batch(index, epoch)
        if epoch is not None:
            msg = f"{type(self.dataset).__name__} has no get_batch(index, epoch). Received epoch={epoch}; pass None."
            raise StructureError(msg)
        return self.dataset[index]

    def require_model(self, structure: ModelStructure) -> None:
        """Raise :class:`~kseq.errors.StructureError` unless ``structure`` routes batches as this view does."""
        check_same_routing(
            self.model_structure, structure, owner="this ModelView",
            fix=f"Call ds.for_model(model) on the named dataset (view.dataset, a {type(self.dataset).__name__}) "
            f"for model {structure.model_name!r}.",
        )

    def for_model(self, model: Any) -> ModelView:
        """A view of the same dataset for ``model``, which must have this view's structure."""
        return ModelView(self, model)

    def check(self, model: Any, *, verbose: bool = True) -> CheckReport:
        """``kseq.check(model, self)``: the model must have this view's structure, and fit batch 0."""
        return check(model, self, verbose=verbose)

    def close(self) -> None:
        """Close the dataset (its worker pool)."""
        if callable(getattr(self.dataset, "close", None)):
            self.dataset.close()

    def __enter__(self) -> ModelView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the view lacks: public attributes come from the dataset.
        dataset = self.__dict__.get("dataset")
        if dataset is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(dataset, name)

    def __repr__(self) -> str:
        return f"ModelView({self.dataset!r} for {self.model_structure.describe()})"


def _refuse_change(name: str, value: object) -> None:
    msg = (
        f"Cannot set {name}={value!r} on a ModelView: it reads batches through its dataset, configured once. "
        f"Pass {name}= to the dataset's constructor instead."
    )
    raise StructureError(msg)
