"""Keras 2 generator yields -> batches in a Keras 3 model's structure.

# NOTE [ legacy yields ]
Keras 2's ``fit_generator`` read every yield the same way: ``(x, y)`` or
``(x, y, sample_weight)`` (a list of two or three counted as that tuple); x as one
array, a list of arrays in the order of ``model.inputs``, or a dict by input name;
targets and sample weights likewise by output layer name. Keras 3.15 keeps the
list and dict forms for x, but reads a list-built model's targets by position only
and rejects a target dict outright (``Expected float32, but got decoder_output of
type 'str'``), and it tolerates extra x keys that can route the wrong array
(keras#23258).

A dict key that no model input or output takes (a ``source_str`` of labels kept
for display, say) was ignored by Keras 2. Here it is dropped before the batch
reaches Keras, so it can never be routed (keras#23258), with one ``UserWarning``
per adapter that lists the keys; kseq's own datasets refuse such keys instead.

:class:`BatchNormaliser` gives every yield names first (:meth:`BatchNormaliser.name`:
``{model_name: array}``, with every name checked against the model and shapes and
dtypes checked by :func:`kseq.validation.check_batch`), then puts it in the form the
model's ``fit`` takes (:meth:`BatchNormaliser.adapt`, i.e.
:meth:`kseq.structure.ModelStructure.adapt`). Every error names the batch it came
from (``epoch 2, step 5 of 10``) and says what to yield instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from kseq.batching import ClassWeights, summarize
from kseq.errors import StructureError
from kseq.structure import ModelStructure, TensorSpec, as_fed, check_same_routing
from kseq.validation import CheckReport, check_batch

__all__ = ["BatchNormaliser", "NormalisedBatches"]


class BatchNormaliser:
    """Read a Keras 2 yield and put it into a Keras 3 model's structure.

    Args:
        structure: the model's structure (:meth:`ModelStructure.of`); ``None`` only
            turns a list yield into a tuple and checks its length.
        class_weight: ``{class_id: weight}`` (one output) or
            ``{output_name: {class_id: weight}}``; multiplied into the sample weights,
            as tf.keras 2 did. Needs ``structure``.
        x_only: read yields as ``predict_generator`` did: the first element of a
            2- or 3-tuple, or else the whole yield (a list is then the model's inputs).
        warned: extra dict keys already named in a warning (shared by the
            normalisers of one adapter, so each key is named once); they are
            dropped silently.

    Example:
        >>> import keras, numpy as np
        >>> a, b = keras.Input((3,), name="a"), keras.Input((5,), name="b")
        >>> h = keras.layers.Concatenate()([a, b])
        >>> model = keras.Model([a, b], [keras.layers.Dense(1, name="score")(h), keras.layers.Dense(2, name="aux")(h)])
        >>> norm = BatchNormaliser(ModelStructure.of(model))
        >>> x, y = norm(([np.zeros((4, 3)), np.zeros((4, 5))], {"aux": np.ones((4, 2)), "score": np.zeros((4, 1))}))
        >>> [v.shape for v in x], [v.shape for v in y]
        ([(4, 3), (4, 5)], [(4, 1), (4, 2)])
    """

    def __init__(
        self,
        structure: ModelStructure | None = None,
        *,
        class_weight: Mapping[Any, Any] | None = None,
        x_only: bool = False,
        warned: set[str] | None = None,
    ) -> None:
        self.structure = structure
        self.x_only = bool(x_only)
        self.class_weights = _class_weights(class_weight, structure)
        self.warned: set[str] = set() if warned is None else warned

    def __call__(self, item: Any, *, where: str = "this batch") -> tuple:
        """``adapt(name(item))``: one yield in the model's structure."""
        return self.adapt(self.name(item, where=where))

    def name(self, item: Any, *, where: str = "this batch") -> tuple:
        """Split a yield into ``(x,)``, ``(x, y)`` or ``(x, y, sw)`` and name every part by model input/output."""
        parts = self._split(item, where)
        if self.structure is None:
            return parts
        s = self.structure
        extra: list[str] = []
        x = _name(parts[0], s.inputs, "x", "input", where, extra)
        named: tuple = (x,)
        if len(parts) > 1:
            y = _name(parts[1], s.outputs, "y", "output", where, extra)
            weights = _weights(parts[2] if len(parts) > 2 else None, s.outputs, y, where, extra)
            weights = self._apply_class_weights(weights, y, where)
            named = (x, y) if weights is None else (x, y, weights)
        try:
            check_batch(s, named)
        except StructureError as e:
            raise StructureError(f"At {where}: {e}") from e
        _check_fixed_batch(s.inputs, x, where)
        if extra:
            self._warn_dropped(extra, where)
        return named

    def adapt(self, named: tuple) -> tuple:
        """Put a named batch into the model's structure (unchanged without a structure)."""
        # A single-output target stays one array for a single-output model (ModelStructure.adapt).
        return as_fed(self.structure, named)

    # -- helpers -----------------------------------------------------------------

    def _warn_dropped(self, extra: list[str], where: str) -> None:
        """One warning per adapter for keys no model input or output takes (NOTE [ legacy yields ])."""
        new = [k for k in extra if k not in self.warned]
        if not new:
            return
        self.warned.update(new)
        model = self.structure.model_name if self.structure is not None else "the model"
        msg = (
            f"At {where}: dropped dict key(s) {extra} that no input or output of model {model!r} takes, as "
            "Keras 2 ignored them (Keras 3 could route such a key to the wrong input, keras#23258). "
            "Remove them from the yield to silence this warning"
        )
        warnings.warn(msg + ".", UserWarning, stacklevel=2)

    def _split(self, item: Any, where: str) -> tuple:
        if self.x_only:
            if isinstance(item, tuple) and 1 <= len(item) <= 3:
                return (item[0],)
            return (item,)
        if isinstance(item, (tuple, list)) and len(item) in (2, 3):
            if len(item) == 3 and item[2] is None:
                return (item[0], item[1])
            return tuple(item)
        msg = (
            f"At {where}: the generator yielded {summarize(item)[:200]}. Expected a tuple (x, y) or "
            "(x, y, sample_weight), as Keras 2's fit_generator did. Yield (inputs, targets); for several "
            "inputs, inputs may be a list in the order of model.inputs or a dict by input name."
        )
        raise StructureError(msg)

    def _apply_class_weights(self, weights: dict | None, y: dict, where: str) -> dict | None:
        if not self.class_weights:
            return weights
        n = _rows(next(iter(y.values())))
        weights = dict(weights) if weights else {name: np.ones(n, np.float32) for name in y}
        for name, cw in self.class_weights.items():
            missing = cw.missing(y[name])
            if missing:
                msg = (
                    f"At {where}: class_weight has no weight for class(es) {missing[:20]} found in the targets of "
                    f"output '{name}'. Expected a weight for every class, as Keras 2 required. "
                    "Add them to class_weight."
                )
                raise StructureError(msg)
            w = np.asarray(weights[name], np.float32)
            weights[name] = w * cw(y[name]).reshape((n,) + (1,) * (w.ndim - 1))
        return weights


class NormalisedBatches:
    """What GeneratorDataset and SequenceAdapter share: a :class:`BatchNormaliser` that names and adapts
    each batch, and ``last_error``, the last exception raised while reading one (Keras may wrap it on the
    way out; tf.data turns it into an InvalidArgumentError, and fit_generator raises this one instead).

    Batches are put into one model's structure: the model given as ``model=`` at construction (or to
    :meth:`adopt`, as ``fit_generator`` does for an adapter built without one). :meth:`check` only reads,
    and refuses a model whose inputs or outputs are named, ordered or nested otherwise, like a
    :class:`kseq.ModelView` (NOTE [ named batches and model structure ] in :mod:`kseq.structure`).

    A subclass calls :meth:`_set_up` in its constructor and defines ``_raw_batch(index) -> (where, yield)``.

    Example:
        >>> import numpy as np
        >>> from kseq.legacy import GeneratorDataset
        >>> def batches():
        ...     while True:
        ...         yield np.zeros((2, 3), "float32"), np.ones(2, "float32")
        >>> ds = GeneratorDataset(batches(), steps_per_epoch=2)
        >>> isinstance(ds, NormalisedBatches), ds.model_structure, ds.last_error
        (True, None, None)
    """

    _class_weight: Any
    _x_only: bool
    _warned: set[str]
    _normaliser: BatchNormaliser
    last_error: BaseException | None

    def _set_up(self, model: Any, class_weight: Any, x_only: bool, read_first: bool = True) -> None:
        """What every adapter's constructor does: keep the options, then adopt ``model`` if given."""
        if class_weight is not None and model is None:
            msg = (
                "class_weight needs model=, to know which output each weight belongs to. Expected "
                f"{type(self).__name__}(..., class_weight=..., model=model). Received "
                f"class_weight={class_weight!r:.80} and model=None. Pass model=model."
            )
            raise StructureError(msg)
        self._class_weight = class_weight
        self._x_only = bool(x_only)
        self._warned: set[str] = set()  # extra yield keys already named in a warning
        self._normaliser = BatchNormaliser(None, x_only=x_only, warned=self._warned)
        self.last_error = None
        if model is not None:
            self.adopt(model, read=read_first)

    @property
    def model_structure(self) -> ModelStructure | None:
        """The structure batches are named and adapted for, or ``None``: passed on as yielded."""
        return self._normaliser.structure

    def set_structure(self, structure: ModelStructure | None) -> None:
        """Name and adapt batches for ``structure`` from now on (``None``: as yielded)."""
        self._normaliser = BatchNormaliser(structure, class_weight=self._class_weight, x_only=self._x_only,
                                           warned=self._warned)

    def adopt(self, model: Any, *, verbose: bool = False, read: bool = True) -> CheckReport | None:
        """Name and adapt every batch for ``model`` from now on (what ``model=`` does), after checking batch 0.

        ``read=False`` reads nothing now and returns ``None``: every batch is still checked when it is read.
        ``fit_generator`` does this, so that a generator is first read after the callbacks' ``on_train_begin``,
        as in Keras 2 (NOTE [ on_train_begin before the first read ] in :mod:`kseq.legacy.fit`).
        """
        if not read:
            structure = ModelStructure.of(model)
            self.require_model(structure)
            self.set_structure(structure)
            return None
        report = self.check(model, verbose=verbose)
        self.set_structure(report.structure)
        report.remedy = f"This {type(self).__name__} does this."
        return report

    def check(self, model: Any, *, verbose: bool = True) -> CheckReport:
        """Check batch 0, named by ``model``'s inputs and outputs (list yields need them), against ``model``.

        Read-only: batches are adapted only to the model given as ``model=`` (or to :meth:`adopt`).

        Raises:
            StructureError: batch 0 does not fit ``model``, or the adapter was made for a model with
                another structure.
        """
        structure = ModelStructure.of(model)
        self.require_model(structure)
        where, raw = self._raw_batch(0)  # type: ignore[attr-defined]
        normaliser = BatchNormaliser(structure, class_weight=self._class_weight, x_only=self._x_only,
                                     warned=self._warned)
        named = normaliser.name(raw, where=where)
        report = check_batch(structure, named)
        name = type(self).__name__
        report.remedy = (
            f"This {name} does this." if self.model_structure is not None
            else f"Pass model= to {name}(...) (fit_generator does it for you), which does this."
        )
        if verbose and report.adaptations:
            print(report)  # noqa: T201 - the user asked to be told
        return report

    def require_model(self, structure: ModelStructure) -> None:
        """Raise :class:`~kseq.errors.StructureError` if batches are adapted for a model routed otherwise."""
        if self.model_structure is not None:
            name = type(self).__name__
            check_same_routing(
                self.model_structure, structure, owner=f"this {name}",
                fix=f"Build a new {name}(..., model=model) for model {structure.model_name!r}.",
            )


def _name(part: Any, specs: tuple[TensorSpec, ...], role: str, kind: str, where: str,
          extra: list[str]) -> dict[str, Any]:
    """``part`` by model name; dict keys no model name takes are added to ``extra`` and dropped."""
    names = [s.name for s in specs]
    if isinstance(part, Mapping):
        _check_keys(part, names, role, kind, where)
        extra.extend(str(k) for k in part if k not in names)
        return {n: part[n] for n in names}
    if isinstance(part, (list, tuple)):
        if len(names) == 1 and not (len(part) > 1 and all(hasattr(v, "shape") for v in part)):
            return {names[0]: part[0] if len(part) == 1 and hasattr(part[0], "shape") else np.asarray(part)}
        if len(part) != len(names):
            msg = (
                f"At {where}: {role} is a list of {len(part)} arrays {summarize(list(part))[:200]}, but the model "
                f"has {len(names)} {kind}s {names}. Expected one array per model {kind}, in the order of "
                f"model.{kind}s, or a dict {{{', '.join(repr(n) + ': ...' for n in names)}}}."
            )
            raise StructureError(msg)
        return dict(zip(names, part, strict=True))
    if len(names) != 1:
        msg = (
            f"At {where}: {role} is one array {summarize(part)}, but the model has {len(names)} {kind}s {names}. "
            f"Yield a list in the order of model.{kind}s, or a dict {{{', '.join(repr(n) + ': ...' for n in names)}}}."
        )
        raise StructureError(msg)
    return {names[0]: part}


def _check_keys(part: Mapping, names: list[str], role: str, kind: str, where: str) -> None:
    missing = [n for n in names if n not in part]
    if missing:
        msg = (
            f"At {where}: the {role} dict has no key for model {kind}(s) {missing}. Expected keys {names} "
            f"(the names of the model's {kind} layers). Received keys {sorted(map(str, part))}. "
            f"Rename the keys, or name the layers: keras.Input(..., name={missing[0]!r})."
        )
        raise StructureError(msg)


def _weights(sw: Any, specs: tuple[TensorSpec, ...], y: dict, where: str, extra: list[str]) -> dict[str, Any] | None:
    """Sample weights by output name; an array applies to every output, as in Keras 3."""
    if sw is None:
        return None
    names = [s.name for s in specs]
    n = _rows(next(iter(y.values())))
    if isinstance(sw, Mapping):
        extra.extend(str(k) for k in sw if k not in names)
        return {name: _ones_if_none(sw.get(name), n) for name in names}
    if isinstance(sw, (list, tuple)) and len(names) > 1:
        if len(sw) != len(names):
            msg = (
                f"At {where}: sample_weight is a list of {len(sw)}, but the model has {len(names)} outputs {names}. "
                "Expected one weight array (or None) per output, or a dict by output name."
            )
            raise StructureError(msg)
        return {name: _ones_if_none(w, n) for name, w in zip(names, sw, strict=True)}
    return dict.fromkeys(names, np.asarray(sw))


def _ones_if_none(w: Any, n: int) -> Any:
    return np.ones(n, np.float32) if w is None else w


def _rows(array: Any) -> int:
    return int(np.shape(array)[0])


def _check_fixed_batch(specs: tuple[TensorSpec, ...], x: dict[str, Any], where: str) -> None:
    for spec in specs:
        fixed = spec.shape[0] if spec.shape else None
        rows = _rows(x[spec.name])
        if fixed is not None and rows != fixed:
            msg = (
                f"At {where}: model input '{spec.name}' has a fixed batch size of {fixed} "
                f"(keras.Input(batch_size=...), as stateful RNNs need), but the generator yielded {rows} rows. "
                f"Expected exactly {fixed} rows in every batch: drop the last partial batch, or make the data a "
                f"multiple of {fixed}."
            )
            raise StructureError(msg)


def _class_weights(class_weight: Mapping[Any, Any] | None, structure: ModelStructure | None) -> dict[str, ClassWeights]:
    if class_weight is None:
        return {}
    if structure is None:
        msg = (
            "class_weight needs the model, to know which output each weight belongs to. "
            "Pass model= before training."
        )
        raise StructureError(msg)
    if not isinstance(class_weight, Mapping) or not class_weight:
        msg = f"class_weight must be a non-empty dict. Received {class_weight!r:.80}."
        raise StructureError(msg)
    names = structure.output_names
    if all(isinstance(v, Mapping) for v in class_weight.values()):
        unknown = [k for k in class_weight if k not in names]
        if unknown:
            msg = f"class_weight names output(s) {unknown} that the model does not have. Expected keys from {names}."
            raise StructureError(msg)
        mapping = dict(class_weight)
    elif len(names) == 1:
        mapping = {names[0]: class_weight}
    else:
        msg = (
            f"The model has {len(names)} outputs {names}, so class_weight must be given per output: "
            f"{{output_name: {{class_id: weight}}}}. Received {dict(class_weight)!r:.100}. "
            "(Keras 2 silently ignored a flat class_weight here.)"
        )
        raise StructureError(msg)
    return {name: ClassWeights(cw, name=f"class_weight[{name!r}]") for name, cw in mapping.items()}
