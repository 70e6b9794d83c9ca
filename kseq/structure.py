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

So :func:`kseq.check` reads the model's structure once (:meth:`ModelStructure.of`)
and the dataset then emits every batch in that structure: a tuple in the model's
input/output order, one array for a single-tensor model, or the dict unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kseq.errors import StructureError

__all__ = ["ModelStructure", "TensorSpec"]

Kind = Literal["dict", "list", "single"]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for unknown dimensions, batch first) and dtype of a model tensor."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class ModelStructure:
    """The nesting and names of a model's inputs and outputs."""

    input_kind: Kind
    inputs: tuple[TensorSpec, ...]
    output_kind: Kind
    outputs: tuple[TensorSpec, ...]

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
        in_names = list(struct_in) if isinstance(struct_in, Mapping) else [t.name for t in tensors_in]
        if isinstance(struct_in, Mapping):
            tensors_in = list(struct_in.values())
        if isinstance(struct_out, Mapping):
            tensors_out = list(struct_out.values())
        return cls(
            input_kind=_kind(struct_in, len(tensors_in)),
            inputs=tuple(_spec(n, t) for n, t in zip(in_names, tensors_in, strict=True)),
            output_kind=_kind(struct_out, len(tensors_out)),
            outputs=tuple(_spec(n, t) for n, t in zip(out_names, tensors_out, strict=True)),
        )

    def adapt(self, batch: tuple) -> tuple:
        """Put a named batch ``(x[, y[, sample_weight]])`` into this model's structure."""
        x, *rest = batch
        out = [_arrange(x, self.input_kind, self.input_names)]
        out += [_arrange(part, self.output_kind, self.output_names) for part in rest]
        return tuple(out)


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
