"""What a model's ``fit`` accepts, and how a named batch is put into that form.

# NOTE [ named batches and model structure ]
kseq datasets name everything: x is ``{input_name: array}`` and y is
``{output_name: array}`` (or one array). Keras 3.15 accepts that only when the
model was built from dicts. A model built from lists (or a single tensor)

  * takes an x dict by input name, but silently tolerates extra keys, and a dict
    model fed an extra key that sorts between its real keys gets the wrong array
    (keras#23258);
  * rejects a y dict outright (``Expected float32, but got decoder_output of type
    'str'``), where Keras 2 matched targets by output layer name.

A dataset stays named: ``ds[i]`` is the same dict whatever model it meets, so one
dataset can serve several models. :func:`kseq.check` only reads and compares (it
says, in its report, what a list-built or single-tensor model needs). Putting
batches into a model's structure (:meth:`ModelStructure.adapt`: a tuple in the
model's input/output order, one array for a single-tensor model, or the dict in
the model's key order) is a separate, visible step that returns a new object:
``ds.for_model(model)``, a :class:`kseq.ModelView`. A view's tuples are right for
one routing only, so a view remembers the structure it was made for, and
everywhere kseq sees a model next to a view (``kseq.check``, ``fit_generator`` &
co., ``view.for_model``) a model with other input or output names, order or
nesting is refused (:func:`check_same_routing`). ``model.fit(view)`` itself never
tells the dataset which model it trains: that one call is unguarded, which is why
the view is made from the model right before it. Legacy adapters (``kseq.legacy``)
take ``model=`` at construction and adapt to it in the same way.

There is one route from a named batch to what Keras receives, whatever feeds Keras:
every kseq PyDataset has a ``model_structure`` (``None``: named) and a named
``get_batch(i)``, and ``ds[i]`` is ``as_fed(ds.model_structure, ds.get_batch(i))``
(:func:`as_fed`). What sets ``model_structure`` is :meth:`~kseq.Dataset.for_model`
(on the new view), a legacy adapter's ``model=``, or the deprecated
``Dataset.set_structure``. ``kseq.BackupAndRestore`` replays batches through
:func:`as_fed` and ``kseq.profile`` times it; ``kseq.check`` reads
``model_structure`` only to say that the batches are adapted already.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kseq.errors import StructureError

__all__ = ["ModelStructure", "TensorSpec", "as_fed", "check_same_routing", "is_generated_name"]

Kind = Literal["dict", "list", "single"]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for unknown dimensions, batch first) and dtype of a model tensor.

    Example:
        >>> TensorSpec("tokens", (None, 31), "int32").shape
        (None, 31)
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class ModelStructure:
    """The nesting and names of a model's inputs and outputs (``model_name`` is for messages only).

    Inputs are named as ``model.summary()`` shows them: the Input layer's name
    (``input_layer_1`` for an unnamed ``keras.Input``, not its tensor's
    ``keras_tensor_9``, which changes from run to run). ``input_keys``, when set,
    are the batch keys that feed each input, in order (set by :meth:`by_position`
    for Inputs with generated names; see NOTE [ inputs matched by position ]).

    Example:
        >>> import keras, numpy as np
        >>> a, b = keras.Input((3,), name="a"), keras.Input((5,), name="b")
        >>> model = keras.Model([a, b], keras.layers.Dense(1, name="y")(keras.layers.Concatenate()([a, b])))
        >>> s = ModelStructure.of(model)
        >>> s.input_kind, s.input_names, s.output_kind, s.output_names
        ('list', ['a', 'b'], 'single', ['y'])
        >>> x, y = s.adapt(({"b": np.ones((2, 5)), "a": np.zeros((2, 3))}, {"y": np.ones(2)}))
        >>> [part.shape for part in x], y.shape  # the list in the model's order; one array for one output
        ([(2, 3), (2, 5)], (2,))
    """

    input_kind: Kind
    inputs: tuple[TensorSpec, ...]
    output_kind: Kind
    outputs: tuple[TensorSpec, ...]
    model_name: str = field(default="", compare=False)
    input_keys: tuple[str, ...] | None = field(default=None, compare=False)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @classmethod
    def of(cls, model: Any) -> ModelStructure:
        """Read the structure of a built Functional or Sequential Keras model."""
        try:
            tensors_in = list(model.inputs)
            tensors_out = list(model.outputs)
        except (AttributeError, ValueError, TypeError) as e:
            msg = (
                f"Cannot read the inputs and outputs of model {getattr(model, 'name', model)!r} ({e}). "
                "Expected a built Functional or Sequential model. Build it first: start a Sequential "
                "with keras.Input(shape=...), or call the model once on a batch."
            )
            raise StructureError(msg) from e
        struct_in = getattr(model, "input", None) if hasattr(model, "_inputs_struct") else None
        struct_out = getattr(model, "output", None) if hasattr(model, "_outputs_struct") else None
        out_names = _output_names(model, struct_out, len(tensors_out))
        in_names = list(struct_in) if isinstance(struct_in, Mapping) else [_input_name(t) for t in tensors_in]
        if isinstance(struct_in, Mapping):
            tensors_in = list(struct_in.values())
        if isinstance(struct_out, Mapping):
            tensors_out = list(struct_out.values())
        return cls(
            input_kind=_kind(struct_in, len(tensors_in)),
            inputs=tuple(_spec(n, t) for n, t in zip(in_names, tensors_in, strict=True)),
            output_kind=_kind(struct_out, len(tensors_out)),
            outputs=tuple(_spec(n, t) for n, t in zip(out_names, tensors_out, strict=True)),
            model_name=str(getattr(model, "name", "")),
        )

    @property
    def routing(self) -> tuple[Kind, tuple[str, ...], Kind, tuple[str, ...]]:
        """What decides where :meth:`adapt` puts each array: the nesting and order of names, in and out."""
        return (self.input_kind, tuple(self.input_names), self.output_kind, tuple(self.output_names))

    def describe(self) -> str:
        """``model 'm' (inputs ['a', 'b'] as a list, outputs ['y'] as a single tensor)``, for messages."""
        return (
            f"model {self.model_name!r} (inputs {self.input_names} as {_KIND_WORDS[self.input_kind]}, "
            f"outputs {self.output_names} as {_KIND_WORDS[self.output_kind]})"
        )

    @property
    def generated_input_names(self) -> bool:
        """True when every input's name was made up by Keras (``input_layer_1``), none given by the user."""
        return self.input_kind != "dict" and all(is_generated_name(n) for n in self.input_names)

    def by_position(self, keys: Sequence[str]) -> ModelStructure:
        """This structure, its inputs fed from batch keys ``keys`` in order (NOTE [ inputs matched by position ])."""
        if len(keys) != len(self.inputs):
            msg = f"Expected {len(self.inputs)} keys, one per input {self.input_names}. Received {list(keys)}."
            raise StructureError(msg)
        return replace(self, input_keys=tuple(keys))

    def adapt(self, batch: tuple) -> tuple:
        """Put a named batch ``(x[, y[, sample_weight]])`` into this model's structure."""
        x, *rest = batch
        out = [_arrange(x, self.input_kind, list(self.input_keys or self.input_names))]
        out += [_arrange(part, self.output_kind, self.output_names) for part in rest]
        return tuple(out)


def as_fed(structure: ModelStructure | None, batch: tuple) -> tuple:
    """``batch`` (named) as Keras receives it from a dataset whose ``model_structure`` is ``structure``.

    The one route to a model's structure (NOTE [ named batches and model structure ]).

    Example:
        >>> import numpy as np
        >>> a, b = TensorSpec("a", (None, 3), "float32"), TensorSpec("b", (None, 5), "float32")
        >>> batch = ({"b": np.ones((2, 5)), "a": np.zeros((2, 3))},)
        >>> as_fed(None, batch) is batch
        True
        >>> [v.shape for v in as_fed(ModelStructure("list", (a, b), "single", (), "ab"), batch)[0]]
        [(2, 3), (2, 5)]
    """
    return batch if structure is None else structure.adapt(batch)


_KIND_WORDS: dict[str, str] = {"dict": "a dict", "list": "a list", "single": "a single tensor"}


def check_same_routing(made_for: ModelStructure, received: ModelStructure, *, owner: str, fix: str) -> None:
    """Refuse a model whose batches would be arranged differently from ``made_for``'s.

    ``owner`` names what was adapted (``"this ModelView"``) and ``fix`` says what to do
    instead. Shapes and dtypes are not compared here: :func:`kseq.check` does that.
    See NOTE [ named batches and model structure ].

    Example:
        >>> a, b = TensorSpec("a", (None, 3), "float32"), TensorSpec("b", (None, 5), "float32")
        >>> y = TensorSpec("y", (None, 1), "float32")
        >>> ab = ModelStructure("list", (a, b), "single", (y,), "ab")
        >>> check_same_routing(ab, ModelStructure("list", (a, b), "single", (y,), "other"), owner="v", fix="")
        >>> check_same_routing(ab, ModelStructure("list", (b, a), "single", (y,), "ba"), owner="this view",
        ...                    fix="Make a view for it.")
        Traceback (most recent call last):
        ...
        kseq.errors.StructureError: this view was made for model 'ab' (inputs ['a', 'b'] as a list, ...
    """
    if made_for.routing == received.routing:
        return
    msg = (
        f"{owner} was made for {made_for.describe()}; received {received.describe()}. Its batches are arranged "
        f"for the first model, so the second would get arrays in the wrong places (or fail on shapes). {fix}"
    )
    raise StructureError(msg)


def _kind(struct: object, count: int) -> Kind:
    if isinstance(struct, Mapping):
        return "dict"
    if isinstance(struct, (list, tuple)):
        return "list"
    return "single" if count == 1 else "list"


def _output_names(model: Any, struct_out: object, count: int) -> list[str]:
    if isinstance(struct_out, Mapping):
        return [str(k) for k in struct_out]
    names = getattr(model, "output_names", None)
    if names and len(names) == count:
        return list(names)
    if count == 1 and getattr(model, "layers", None):
        return [model.layers[-1].name]
    msg = f"Cannot tell the output names of model {getattr(model, 'name', model)!r}."
    raise StructureError(msg)


# NOTE [ inputs matched by position ]
# A model built from a list of unnamed Inputs (``keras.Model([keras.Input(s), keras.Input(s)], ...)``,
# the keras.io Siamese example) has inputs named ``input_layer``, ``input_layer_1``...: numbered in the
# order the process created Input layers, so not a name a dataset could be given in advance. A dataset
# whose inputs have a declared order (a Siamese pair's left/right, a triplet, the caption pair,
# ``MultiInputDataset(inputs=[...])``) then feeds them by position: its first input to the model's first.
# Only then: a model with any name of the user's own is matched by name, and a name that is missing is
# an error, since a wrong order fails silently (both sides of a pair have the same shape).
# Generated names are recognised by Keras's patterns (``input_layer``, ``input_layer_N``, and a bare
# tensor's ``keras_tensor_N``).

_GENERATED = re.compile(r"(input_layer|keras_tensor)(_\d+)?")


def is_generated_name(name: str) -> bool:
    """Whether ``name`` is one Keras gives an unnamed Input (NOTE [ inputs matched by position ]).

    Example:
        >>> is_generated_name("input_layer_1"), is_generated_name("left")
        (True, False)
    """
    return _GENERATED.fullmatch(name) is not None


def _input_name(tensor: Any) -> str:
    # The Input layer's name, as model.summary() shows it; a tensor's own name (keras_tensor_N) is a
    # counter that differs from run to run. ``_keras_history`` is Keras's record of the layer that made
    # a symbolic tensor (keras/src/models/functional.py reads it the same way).
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None)
    name = getattr(layer, "name", None)
    return str(name) if isinstance(name, str) and name else str(tensor.name)


def _spec(name: str, tensor: Any) -> TensorSpec:
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    return TensorSpec(name=str(name), shape=shape, dtype=str(tensor.dtype))


def _arrange(part: Any, kind: Kind, names: list[str]) -> Any:
    if not isinstance(part, Mapping):
        return part
    if kind == "dict":
        return {n: part[n] for n in names}
    if kind == "single":
        return part[names[0]]
    # A tuple, not a list: tf.data's output signature takes tuples only.
    return tuple(part[n] for n in names)
