"""``kseq.check(model, dataset)``: compare one batch with a model, before training.

It reads batch 0 and changes nothing: not the dataset, not the model. It compares
names, ranks, trailing shapes and dtypes with the model's inputs (and names with
its outputs), raises :class:`~kseq.errors.StructureError` on the first kind of
mismatch with every instance of it listed, and otherwise returns a
:class:`CheckReport`, which says what a list-built or single-tensor model needs
(``ds.for_model(model)``). A dataset already adapted to a model (a
:class:`~kseq.ModelView`, a legacy adapter built with ``model=``) refuses a model
whose inputs or outputs are named, ordered or nested differently. See NOTE [ named
batches and model structure ] in :mod:`kseq.structure`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kseq.batching import summarize
from kseq.errors import StructureError
from kseq.structure import ModelStructure, TensorSpec

__all__ = ["CheckReport", "check", "check_batch"]

FOR_MODEL = "Train on ds.for_model(model), which does this."


@dataclass
class CheckReport:
    """What :func:`check` found: the model's structure, and what its ``fit`` needs done to named batches.

    ``adaptations`` is empty when the named batches fit the model as they are (a
    dict-built model); otherwise it lists what ``ds.for_model(model)`` does, and
    ``remedy`` says how to get it done.

    Example:
        >>> from kseq.structure import ModelStructure, TensorSpec
        >>> s = ModelStructure("dict", (TensorSpec("a", (None, 3), "float32"),), "single", ())
        >>> report = CheckReport(s)
        >>> report.needs_adapting, str(report)
        (False, 'kseq.check: batches match the model as they are.')
        >>> CheckReport(s, ["x as a list"]).needs_adapting
        True
    """

    structure: ModelStructure
    adaptations: list[str] = field(default_factory=list)
    remedy: str = FOR_MODEL

    @property
    def needs_adapting(self) -> bool:
        """True when ``model.fit`` cannot take the named batches as they are."""
        return bool(self.adaptations)

    def __str__(self) -> str:
        if not self.adaptations:
            return "kseq.check: batches match the model as they are."
        return "kseq.check: " + "; ".join(self.adaptations) + ". " + self.remedy


def check(model: Any, dataset: Any, *, verbose: bool = True) -> CheckReport:
    """Check that ``dataset``'s batches fit ``model``; read-only.

    Args:
        model: a built Keras model (Functional or Sequential).
        dataset: a kseq dataset or view (anything with ``get_batch(index)``, which
            gives the named batch), or a plain PyDataset (``dataset[0]`` is read).
            One adapted to a model (``model_structure`` set) must have
            ``require_model(structure)``, which refuses another routing.
        verbose: print the report when the model needs the batches adapted.

    Returns:
        A :class:`CheckReport`; the dataset is left as it was (``dataset[0]`` is
        the same before and after).

    Raises:
        StructureError: a model input or output has no field, the batch has keys the
            model does not take, or a rank, trailing shape or dtype is incompatible;
            or ``dataset`` was adapted to a model with another structure.
    """
    structure = ModelStructure.of(model)
    if callable(getattr(dataset, "require_model", None)):
        dataset.require_model(structure)  # a view or legacy adapter: NOTE [ named batches and model structure ]
    raw = dataset.get_batch(0) if hasattr(dataset, "get_batch") else dataset[0]
    report = check_batch(structure, raw, input_order=getattr(dataset, "input_order", None), fix=_fixer(dataset))
    if getattr(dataset, "model_structure", None) is not None:
        report.remedy = f"This {type(dataset).__name__} does this."
    if verbose and report.adaptations:
        print(report)  # noqa: T201 - the user asked to be told
    return report


NameFix = Callable[[str, list[str]], str]


def check_batch(
    structure: ModelStructure,
    batch: Any,
    *,
    input_order: Sequence[str] | None = None,
    fix: NameFix | None = None,
) -> CheckReport:
    """Compare one named batch with a model structure; see :func:`check`.

    ``input_order``: the keys of x in the order the dataset declares (its ``input_order``), which
    feed a model whose Inputs have generated names by position (NOTE [ inputs matched by position ]
    in :mod:`kseq.structure`). ``fix(role, names)``: how the dataset is made to give a batch keyed by
    ``names`` (the model's ``"input"`` or ``"output"`` names), for the error when names differ.
    """
    if not isinstance(batch, tuple) or not 1 <= len(batch) <= 3:
        msg = f"Expected a batch (x,), (x, y) or (x, y, sample_weight). Received {summarize(batch)}."
        raise StructureError(msg)
    fix = fix or _generic_fix
    x = batch[0]
    positional = _positional_keys(structure, x, input_order)
    if positional is not None:
        structure = structure.by_position(positional)
        x = {name: x[key] for name, key in zip(structure.input_names, positional, strict=True)}
    report = CheckReport(structure)
    if positional is not None:
        pairs = ", ".join(f"{key!r} -> {name!r}" for key, name in zip(positional, structure.input_names, strict=True))
        report.adaptations.append(
            f"x by position ({pairs}): the model's Inputs have generated names, so the dataset's inputs "
            "feed them in its declared order (name the Inputs, keras.Input(..., name=...), to match by name)"
        )
    _check_names("input", structure.input_names, x, fix)
    _check_tensors(structure.inputs, x)
    if len(batch) > 1:
        _check_names("output", structure.output_names, batch[1], fix)
        if len(batch) > 2 and isinstance(batch[2], Mapping):
            _check_names("output", structure.output_names, batch[2], fix, part_name="sample_weight")
    y = batch[1] if len(batch) > 1 else None
    for role, part, kind in (("x", x, structure.input_kind), ("y", y, structure.output_kind)):
        if isinstance(part, Mapping) and kind != "dict":
            form = "a tuple in the model's order" if kind == "list" else "a single array"
            report.adaptations.append(f"{role} dict {sorted(part)} must be passed as {form} (model built from {kind})")
    return report


def _positional_keys(structure: ModelStructure, x: Any, order: Sequence[str] | None) -> list[str] | None:
    # NOTE [ inputs matched by position ] in kseq/structure.py: only Inputs with generated names, none of
    # which the batch has, and as many inputs as the dataset declares.
    if order is None or not isinstance(x, Mapping) or not structure.generated_input_names:
        return None
    keys = list(order)
    if len(keys) != len(structure.inputs) or any(n in x for n in structure.input_names):
        return None
    return keys if all(k in x for k in keys) else None


def _fixer(dataset: Any) -> NameFix | None:
    fix = getattr(dataset, "structure_fix", None)
    return fix if callable(fix) else None


def _generic_fix(role: str, names: list[str]) -> str:
    keys = "x" if role == "input" else "y"
    return (
        f"Give {keys} as a dict keyed {names} (or a tuple in that order), "
        f"or name the model's {role}s like the batch's keys."
    )


def _check_names(role: str, names: list[str], part: Any, fix: NameFix, *, part_name: str = "") -> None:
    what = part_name or ("inputs" if role == "input" else "targets")
    if isinstance(part, (list, tuple)) and len(names) > 1:
        if len(part) != len(names):
            msg = (
                f"The model has {len(names)} {role}s {names}, but the batch gives {len(part)} arrays in a "
                f"{type(part).__name__} {summarize(part)}. "
                f"Give one array per {role}, in the model's order, or name them."
            )
            raise StructureError(msg)
        return
    if not isinstance(part, Mapping):
        if len(names) != 1:
            msg = (
                f"The model has {len(names)} {role}s {names}, but the batch gives one unnamed array "
                f"{summarize(part)}. {fix(role, names)}"
            )
            raise StructureError(msg)
        return
    missing = [n for n in names if n not in part]
    extra = [k for k in part if k not in names]
    if missing:
        msg = (
            f"Model {role}(s) {missing} have no field in this dataset. Expected {role}s {names} "
            f"(as model.summary() shows them). Received {what} {sorted(part)}. {fix(role, names)}"
        )
        raise StructureError(msg)
    if extra:
        msg = (
            f"The batch has {what} {extra} that the model does not take. Expected exactly {names}. "
            f"Extra keys are not harmless: Keras can route the wrong array to an input (keras#23258). "
            f"{fix(role, names)}"
        )
        raise StructureError(msg)


def _check_tensors(specs: tuple[TensorSpec, ...], x: Any) -> None:
    if isinstance(x, Mapping):
        arrays = x
    elif isinstance(x, (list, tuple)) and len(specs) > 1:
        arrays = {spec.name: value for spec, value in zip(specs, x, strict=True)}
    else:
        arrays = {specs[0].name: x}
    problems = [p for spec in specs if (p := _tensor_problem(spec, arrays[spec.name]))]
    if problems:
        msg = "Batch x does not fit the model's inputs:\n  " + "\n  ".join(problems)
        raise StructureError(msg)


def _tensor_problem(spec: TensorSpec, array: Any) -> str | None:
    shape = tuple(np.shape(array))
    expected = spec.shape
    received = f"Received {shape} {getattr(array, 'dtype', type(array).__name__)}"
    if not _ranks_fit(shape, expected):
        return (
            f"input '{spec.name}': expected rank {len(expected)} shape {expected}; {received}. "
            "Reshape the field or change the Input shape."
        )
    if len(shape) == len(expected) and any(
        e is not None and s != e for s, e in zip(shape[1:], expected[1:], strict=True)
    ):
        wanted = ", ".join(map(str, expected[1:]))
        return (
            f"input '{spec.name}': expected shape {expected}; {received}. "
            f"Make the Input shape {(None, *shape[1:])} or give the field shape (n, {wanted})."
        )
    return _dtype_problem(spec, array, received)


def _dtype_problem(spec: TensorSpec, array: Any, received: str) -> str | None:
    # Keras casts every input to its Input's dtype (Functional._convert_inputs_to_tensors), so a batch of
    # another dtype is refused only where that cast changes values: strings, non-integral or non-finite
    # floats into an integer or bool Input, numbers outside the integer dtype's range, or other than 0/1
    # into a bool Input. Batch 0 is what is checked.
    values = np.asarray(array)
    dtype, expected = values.dtype, spec.dtype
    if (expected == "string") != (dtype.kind in "USO"):
        return (
            f"input '{spec.name}': expected dtype {expected}; {received}. "
            f"Give the field as {'strings' if expected == 'string' else 'numbers'}, or declare "
            f"Input(dtype='{'string' if dtype.kind in 'USO' else dtype}')."
        )
    try:
        target = np.dtype(expected)
    except TypeError:  # bfloat16 and other dtypes numpy does not know: Keras's cast decides
        return None
    if target.kind not in "iub" or dtype.kind not in "iufcb" or values.size == 0:
        return None
    change = _changed_by_cast(values, target)
    if change is None:
        return None
    return (
        f"input '{spec.name}': expected dtype {expected}; {received}, and Keras's cast to {expected} would change "
        f"its values ({change}). Fix the values (np.round, or a smaller range), or declare Input(dtype='{dtype}')."
    )


def _changed_by_cast(values: np.ndarray, target: np.dtype) -> str | None:
    if values.dtype.kind in "fc":
        bad = ~np.isfinite(values) | (values != np.round(values.real))
        if bad.any():
            return f"{int(bad.sum())} non-integral value(s), e.g. {values[bad].flat[0].item()!r}"
    if target.kind == "b":
        bad = (values != 0) & (values != 1)
        if not bad.any():
            return None
        return f"{int(bad.sum())} value(s) other than 0 and 1, e.g. {values[bad].flat[0].item()!r}"
    if values.dtype.kind == "b":
        return None
    info = np.iinfo(target)
    low, high = values.real.min(), values.real.max()
    if low < info.min or high > info.max:
        return f"values from {low.item()!r} to {high.item()!r}, outside {target}'s range [{info.min}, {info.max}]"
    return None


def _ranks_fit(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    # Keras squeezes or expands a trailing dimension of size 1 (Functional._adjust_input_rank).
    if len(shape) == len(expected):
        return True
    if len(shape) == len(expected) + 1:
        return shape[-1] == 1
    if len(shape) == len(expected) - 1:
        return expected[-1] == 1
    return False


# -- stateful models and stream datasets ------------------------------------------------------------------------
# What a model and its run must agree on with a stream dataset (``starts(batch)``, ``batch_size``, ``len``):
# one row per stream, a reset between any two batches, and the whole stream per epoch. They take plain facts
# (row counts, steps), so they hold no Keras; :func:`kseq.callbacks.check_stateful_model` gathers them from a
# model, and :class:`kseq.callbacks.ResetStates` runs them when fit, evaluate or predict starts.

__all__ += ["check_looped_rnn_rows", "check_stateful_rows", "check_step_count", "check_steps_per_execution"]


# NOTE [ a stateful RNN at batch size 1 on TensorFlow ]
# Keras 3.15 feeds a PyDataset to TensorFlow through a signature whose batch dimension is None
# (data_adapter_utils.get_tensor_spec), whatever the batches' size. A stateful recurrent layer that runs
# its steps in a tf.while_loop (unroll=False, the default) carries its state variable, of shape (1, units),
# into the loop; one step combines it with the input of shape (None, ...), and broadcasting a 1 with None
# gives None, so TF refuses the loop at the first step: "enters the loop with shape (1, 20), but has shape
# (None, 20) after one iteration". A state of 2 or more rows broadcasts to itself, which is why only batch
# size 1 fails. Measured on TF 2.21 / Keras 3.15.1: SimpleRNN, GRU and LSTM, return_sequences or not, fit
# and evaluate fail, predict works; unroll=True trains; numpy arrays (another adapter) train; JAX trains.
# kseq refuses it before the first step, where it sees the model with a dataset: ResetStates when fit or
# evaluate starts, and StatefulSequenceDataset.check / for_model for a compiled model.


def check_looped_rnn_rows(rows: Mapping[str, int], backend: str, call: str) -> None:
    """Refuse ``fit``/``evaluate`` of stateful layers looping over one row (``{name: rows}``) on TensorFlow.

    ``rows`` holds the stateful recurrent layers that run a symbolic loop (not unrolled). See
    NOTE [ a stateful RNN at batch size 1 on TensorFlow ].

    Example:
        >>> check_looped_rnn_rows({"lstm": 1}, "jax", "fit")
        >>> check_looped_rnn_rows({"lstm": 1}, "tensorflow", "fit")
        Traceback (most recent call last):
        ...
        kseq.errors.StructureError: On TensorFlow, Keras 3.15 cannot fit a stateful recurrent layer ...
    """
    single = sorted(name for name, n in rows.items() if n == 1)
    if backend != "tensorflow" or not single:
        return
    msg = (
        f"On TensorFlow, Keras 3.15 cannot {call} a stateful recurrent layer at batch size 1 from a PyDataset: "
        f"the batch size it feeds is unknown (None), and the layer's loop fails at its first step (\"enters the "
        f"loop with shape (1, units), but has shape (None, units) after one iteration\"). Received stateful "
        f"layers {single} holding one row. Expected one of: batch_size >= 2 (more parallel streams; split=True "
        f"cuts one series into several); unroll=True on these layers (fixed timesteps); or the JAX or PyTorch "
        f"backend. predict works at batch size 1: train at a larger batch size and copy the weights into a batch "
        f"size 1 model to forecast. See NOTE [ a stateful RNN at batch size 1 on TensorFlow ] in kseq/validation.py."
    )
    raise StructureError(msg)


def looped_rnn_rows(layers: Sequence[Any]) -> dict[str, int]:
    """``{name: rows}`` of the stateful recurrent ``layers`` that loop over their steps (``unroll=False``)."""
    out = {}
    for layer in layers:
        if getattr(layer, "unroll", True) is False and getattr(layer, "stateful", False):
            states = getattr(layer, "states", None) or []
            first = states[0] if isinstance(states, (list, tuple)) else states
            shape = getattr(first, "shape", None)
            if shape:
                out[str(layer.name)] = int(shape[0])
    return out


__all__ += ["looped_rnn_rows"]


def check_stateful_rows(rows: Mapping[str, int], batch_size: int) -> None:
    """Refuse stateful layers or fixed input batch sizes (``{name: rows}``) other than ``batch_size`` streams.

    Example:
        >>> check_stateful_rows({"lstm": 4, "input 0": 4}, 4)
        >>> check_stateful_rows({"lstm": 3}, 4)
        Traceback (most recent call last):
        ...
        kseq.errors.StructureError: The model is built for batches of {'lstm': 3} rows but the dataset ...
    """
    wrong = {name: n for name, n in rows.items() if n != batch_size}
    if wrong:
        msg = (
            f"The model is built for batches of {wrong} rows but the dataset has batch_size={batch_size}. "
            f"Expected one row per stream: build the model on ds.keras_input() "
            f"(keras.Input(batch_shape=({batch_size}, timesteps, features)))."
        )
        raise StructureError(msg)


def check_steps_per_execution(steps_per_execution: int, dataset: Any, call: str) -> None:
    """Refuse several batches per step call when ``dataset`` starts a sequence after batch 0 (a reset between)."""
    if steps_per_execution > 1 and any(dataset.starts(k).any() for k in range(1, len(dataset))):
        msg = (
            f"{call} runs steps_per_execution={steps_per_execution} batches per call, but this dataset starts new "
            "sequences inside an epoch and their rows must be reset between two batches. "
            "Expected steps_per_execution=1: compile(..., steps_per_execution=1)."
        )
        raise StructureError(msg)


def check_step_count(steps: int | None, dataset: Any, call: str) -> None:
    """Refuse a ``fit`` epoch, ``evaluate`` or ``predict`` of ``steps`` batches other than the whole ``dataset``.

    ``steps=None`` (Keras does not know the count) passes.
    """
    if steps is None or steps == len(dataset):
        return
    if call == "fit":
        msg = (
            f"fit runs {steps} steps per epoch but ResetStates' dataset has {len(dataset)} batches. "
            "Expected the dataset passed to fit, with steps_per_epoch=None: a stateful epoch is the whole "
            "stream. Pass ResetStates(<the dataset given to fit>)."
        )
    else:
        msg = (
            f"{call} runs {steps} steps but ResetStates' dataset has {len(dataset)} batches, so its resets "
            f"would fall at the wrong batches. Expected ResetStates(<the dataset given to {call}>) and "
            f"{call}(..., steps=None)."
        )
    raise StructureError(msg)
