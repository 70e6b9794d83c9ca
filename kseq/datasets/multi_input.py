"""MultiInputDataset: batches named exactly like the model's inputs and outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kseq.batching import ClassWeights, as_batch
from kseq.datasets.base import Dataset
from kseq.errors import StructureError
from kseq.sources import Source
from kseq.validators import known_fields

__all__ = ["MultiInputDataset"]

Names = str | Sequence[str] | Mapping[str, str]


class MultiInputDataset(Dataset):
    """x is always ``{model_input_name: array}``; y is a dict, or one array for one field.

    Args:
        source: a Source, a dict of arrays, or a DataFrame.
        inputs: a field name, a list of field names (each model input named like its
            field), or ``{model_input_name: field}``.
        targets: the same forms, or ``None`` for x-only batches (``predict``). A single
            field name gives y as one array; a list or mapping gives a dict.
        sample_weight: a field name applied to every output, or ``{output_name: field}``.
        class_weight: ``{class_id: weight}`` (one target), or ``{output_name: {class_id: weight}}``.
            Looked up vectorised per batch and multiplied with ``sample_weight``.
        **kwargs: batch_size, shuffle, seed, drop_remainder, workers, ...: see :class:`Dataset`.

    Raises:
        StructureError: at construction, for an unknown field, a class missing from
            ``class_weight``, or weights for an output that has no target.

    Example:
        >>> import numpy as np
        >>> data = {"img": np.zeros((8, 4)), "meta": np.ones((8, 2)), "label": np.arange(8) % 2}
        >>> ds = MultiInputDataset(data, inputs=["img", "meta"], targets="label", batch_size=4, seed=0)
        >>> x, y = ds[0]
        >>> sorted(x), y.shape
        (['img', 'meta'], (4,))
    """

    def __init__(
        self,
        source: Source | dict | Any,
        *,
        inputs: Names,
        targets: Names | None = None,
        sample_weight: str | Mapping[str, str] | None = None,
        class_weight: Mapping[Any, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(source, **kwargs)
        available = self.source.fields
        self.inputs = _name_map(inputs, "inputs", available)
        self.targets = None if targets is None else _name_map(targets, "targets", available)
        self._single_target = isinstance(targets, str)
        self.sample_weights = self._weight_fields(sample_weight, available)
        self.class_weights = self._class_weights(class_weight)
        names = [*self.inputs.values(), *(self.targets or {}).values(), *self.sample_weights.values()]
        self._fields_read = list(dict.fromkeys(names))
        self.build_own_sampler(MultiInputDataset)

    @property
    def fields_read(self) -> list[str]:
        return self._fields_read

    @property
    def input_order(self) -> tuple[str, ...]:
        """The keys of x in the order ``inputs`` gave them: a model whose Inputs have generated names takes
        them by position (NOTE [ inputs matched by position ] in :mod:`kseq.structure`)."""
        return tuple(self.inputs)

    def structure_fix(self, role: str, names: list[str]) -> str:
        """How to make this dataset's keys the model's ``names`` (for :func:`kseq.check`'s errors)."""
        argument, given = ("inputs", self.inputs) if role == "input" else ("targets", self.targets or {})
        if role == "output" and len(names) == 1 and len(given) == 1:
            (field,) = given.values()
            return f"Pass targets={field!r} (y as one array) or targets={{{names[0]!r}: {field!r}}}."
        pairs = ", ".join(f"{n!r}: {given[n]!r}" if n in given else f"{n!r}: <field>" for n in names)
        return f"Pass {argument}={{{pairs}}} to MultiInputDataset ({{model {role} name: field}})."

    def build_batch(self, rows: dict[str, np.ndarray]) -> tuple:
        x = {name: rows[f] for name, f in self.inputs.items()}
        if self.targets is None:
            return as_batch(x)
        y = {name: rows[f] for name, f in self.targets.items()}
        weights = self._weights(rows, y)
        if self._single_target:
            (name,) = y
            return as_batch(x, y[name], None if weights is None else weights[name])
        return as_batch(x, y, weights)

    def _weights(self, rows: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        if not self.sample_weights and not self.class_weights:
            return None
        n = len(next(iter(y.values())))
        weights = {}
        for name, labels in y.items():
            w = np.ones(n, dtype=np.float32)
            if name in self.sample_weights:
                w = w * rows[self.sample_weights[name]].reshape(n).astype(np.float32, copy=False)
            if name in self.class_weights:
                w = w * self.class_weights[name](labels)
            weights[name] = w
        return weights

    def _weight_fields(self, sample_weight: str | Mapping[str, str] | None, available: Mapping) -> dict[str, str]:
        if sample_weight is None:
            return {}
        if self.targets is None:
            msg = "sample_weight needs targets. Received sample_weight with targets=None."
            raise StructureError(msg)
        if isinstance(sample_weight, str):
            mapping = dict.fromkeys(self.targets, sample_weight)
        elif isinstance(sample_weight, Mapping):
            mapping = dict(sample_weight)
        else:
            msg = f"sample_weight must be a field name or {{output_name: field}}. Received {sample_weight!r:.80}."
            raise StructureError(msg)
        _check_outputs(mapping, self.targets, "sample_weight")
        known_fields(list(mapping.values()), available, "sample_weight")
        for field in set(mapping.values()):
            shape, dtype = available[field]
            if tuple(shape) not in ((), (1,)) or np.dtype(dtype).kind not in "iufb":
                msg = (
                    f"sample_weight field {field!r} must hold one number per sample: shape (n,) or (n, 1). "
                    f"Received trailing shape {tuple(shape)} and dtype {dtype}."
                )
                raise StructureError(msg)
        return mapping

    def _class_weights(self, class_weight: Mapping[Any, Any] | None) -> dict[str, ClassWeights]:
        if class_weight is None:
            return {}
        if not isinstance(class_weight, Mapping):
            msg = (
                "class_weight must be {class_id: weight} (one target) or {output_name: {class_id: weight}}. "
                f"Received class_weight={class_weight!r:.80}."
            )
            raise StructureError(msg)
        if self.targets is None:
            msg = "class_weight needs targets. Received class_weight with targets=None."
            raise StructureError(msg)
        per_output = all(isinstance(v, Mapping) for v in class_weight.values())
        if not per_output and len(self.targets) != 1:
            msg = (
                f"The dataset has {len(self.targets)} targets {list(self.targets)}, so class_weight must be "
                f"given per output: {{output_name: {{class_id: weight}}}}. Received {dict(class_weight)!r:.100}."
            )
            raise StructureError(msg)
        mapping = dict(class_weight) if per_output else {next(iter(self.targets)): class_weight}
        _check_outputs(mapping, self.targets, "class_weight")
        weights = {name: ClassWeights(cw, name=f"class_weight[{name!r}]") for name, cw in mapping.items()}
        labels = self.source.read(np.arange(len(self.source)), [self.targets[n] for n in weights])
        for name, cw in weights.items():
            cw.check_covers(labels[self.targets[name]])
        return weights


def _name_map(names: Names, argument: str, available: Mapping) -> dict[str, str]:
    if isinstance(names, str):
        mapping = {names: names}
    elif isinstance(names, Mapping):
        mapping = {str(k): v for k, v in names.items()}
    elif isinstance(names, Sequence):
        mapping = {n: n for n in names}
    else:
        mapping = {}
    if not mapping or not all(isinstance(v, str) for v in mapping.values()):
        msg = (
            f"{argument} must be a field name, a list of field names, or {{model_name: field}}. "
            f"Received {names!r:.80}."
        )
        raise StructureError(msg)
    known_fields(list(mapping.values()), available, argument)
    return mapping


def _check_outputs(mapping: Mapping[str, Any], targets: Mapping[str, str], argument: str) -> None:
    unknown = [k for k in mapping if k not in targets]
    if unknown:
        msg = f"{argument} names output(s) {unknown} that have no target. Expected outputs from {list(targets)}."
        raise StructureError(msg)
