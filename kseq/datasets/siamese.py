"""SiamesePairDataset and TripletDataset: balanced, seeded pairs and triplets, new every epoch.

Both read the label field once, at construction, to group rows by class (every check on
labels happens there), and then read per batch only the rows that batch pairs up; see
NOTE [ reading the rows of a batch ] below. How the partners are drawn is in
NOTE [ how pairs and triplets are drawn ] in :mod:`kseq.samplers.pairs`.

# NOTE [ reading the rows of a batch ]
A batch of ``b`` pairs names up to ``2 b`` rows, often with repeats (always in P x K mode,
where every partner is a row of the batch's own block). Two ways to read them:

  * one ``source.read`` per side, straight into each side's array: no sort, no second copy.
    Used for a source whose row reads are cheap (:func:`kseq.sources.cheap_row_reads`):
    kseq's own sources, where an ``ArraySource`` is one numpy gather per field and an
    ``HDF5Source`` a memory map or a chunk cache, so a row named twice costs a copy, not a
    second disk read. Faster than the union read for both (benchmarks/README.md, pairs).
  * one ``source.read`` of the sorted unique rows, then one ``take`` per side: each row is
    fetched once, in storage order, in one call. Any other Source is read this way, since
    a source of unknown cost (a database, a remote store, a user's reader) may pay per row.

Either way only the batch's rows are read, so sources larger than memory work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kseq.batching import as_batch
from kseq.datasets.base import Dataset
from kseq.errors import StructureError
from kseq.samplers.pairs import Balance, ClassIndex, PairSampler, Singletons, TripletSampler, check_fraction
from kseq.sources import Source, as_source, check_fields
from kseq.sources.base import cheap_row_reads
from kseq.validators import integer, known_fields, one_of
from kseq.validators import name as check_name

__all__ = ["SiamesePairDataset", "TripletDataset"]


class _ClassTupleDataset(Dataset):
    """What pairs and triplets share: label grouping, field choice, the union read, x naming."""

    def __init__(
        self,
        source: Source | dict | Any,
        *,
        label: str,
        fields: str | Sequence[str] | None,
        input_names: Sequence[str],
        singletons: Singletons,
        roles: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(as_source(source), **kwargs)
        src = self.source
        self.label = _check_label_field(label, src)
        self.fields = _check_fields(fields, src, label)
        self.input_names = _check_input_names(input_names, roles)
        self.class_index = ClassIndex(src.read(np.arange(len(src)), [label])[label], singletons=singletons, name=label)

    @property
    def fields_read(self) -> list[str]:
        return list(self.fields)

    @property
    def input_keys(self) -> dict[str, tuple[str, str]]:
        """The keys of x: ``{key: (input_name, field)}``; see the class docstring for the naming rule."""
        if len(self.fields) == 1:
            return {name: (name, self.fields[0]) for name in self.input_names}
        return {f"{field}_{name}": (name, field) for name in self.input_names for field in self.fields}

    @property
    def input_order(self) -> tuple[str, ...]:
        """The keys of x in their declared order: a model whose Inputs have generated names takes them by position.

        See NOTE [ inputs matched by position ] in :mod:`kseq.structure`.
        """
        return tuple(self.input_keys)

    def structure_fix(self, role: str, names: list[str]) -> str:
        """How to make this dataset's keys the model's ``names`` (for :func:`kseq.check`'s errors)."""
        cls = type(self).__name__
        if role == "output":
            return self._output_fix(names)
        if len(self.fields) == 1 and len(names) == len(self.input_names):
            return (
                f"Pass input_names={tuple(names)!r} to {cls} (one name per side, in order), or name the "
                f"model's Inputs {list(self.input_names)}: keras.Input(..., name={self.input_names[0]!r})."
            )
        return (
            f"Name the model's Inputs like this {cls}'s keys {list(self.input_keys)} (keras.Input(..., name=...)); "
            f"with several fields each key is '{{field}}_{{input_name}}', named through input_names=."
        )

    def _output_fix(self, names: list[str]) -> str:
        return f"{type(self).__name__} gives one target array; the model has outputs {names}: give it one output."

    def read_rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """``{"{input_name}/{field}": rows}`` for the ``(b, roles)`` row indices of one batch.

        See NOTE [ reading the rows of a batch ]. Each side also carries its labels under
        ``"{input_name}/{label}"``, taken from the index built at construction (the label
        field is not read again).
        """
        if cheap_row_reads(self.source):
            sides = [self.source.read(indices[:, j], self.fields) for j in range(indices.shape[1])]
        else:
            unique, inverse = np.unique(indices, return_inverse=True)
            inverse = inverse.reshape(indices.shape)
            data = self.source.read(unique, self.fields)
            sides = [{f: data[f][inverse[:, j]] for f in self.fields} for j in range(indices.shape[1])]
        rows: dict[str, np.ndarray] = {}
        for j, (name, side) in enumerate(zip(self.input_names, sides, strict=True)):
            rows |= {f"{name}/{field}": values for field, values in side.items()}
            rows[f"{name}/{self.label}"] = self.class_index.labels[indices[:, j]]
        return rows

    def inputs_of(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """x of one batch: each side's fields under :attr:`input_keys`."""
        return {key: rows[f"{name}/{field}"] for key, (name, field) in self.input_keys.items()}

    def labels_of(self, rows: dict[str, np.ndarray], role: int) -> np.ndarray:
        """The labels of side ``role`` (0: left / anchor) of one batch."""
        return rows[f"{self.input_names[role]}/{self.label}"]


class SiamesePairDataset(_ClassTupleDataset):
    """Pairs of rows and a same-class target, balanced per batch and drawn anew every epoch.

    x is ``{"left": rows_a, "right": rows_b}`` (named by ``input_names``) when one field is
    used; with several fields each key is ``"{field}_{input_name}"``, e.g. ``"image_left"``,
    ``"meta_left"``, ``"image_right"``, ``"meta_right"`` (see :attr:`input_keys`).

    y is ``1.0`` for a same-class pair and ``0.0`` otherwise (float32, shape ``(b,)``).
    ``same_label=0`` flips it: the contrastive loss of the keras.io Siamese example expects
    0 for similar and 1 for dissimilar pairs, and a flipped target trains silently wrong.

    Every batch of ``b`` pairs has exactly ``floor(positive_fraction * b + 0.5)`` same-class
    pairs; a row is never paired with itself; a negative's class is drawn uniformly from the
    classes other than the left row's. In an epoch of ``pairs_per_epoch = N`` pairs over
    ``m`` usable rows, each row is the left element exactly ``N // m`` or ``N // m + 1``
    times: exactly once with the default ``N = m``. With ``balance="classes"`` each of the
    ``C`` classes is instead the left class ``N // C`` or ``N // C + 1`` times, so negatives
    are uniform over ordered class pairs even when class sizes differ. Epoch ``e`` draws
    from ``(seed, e)``; the exact rules are NOTE [ how pairs and triplets are drawn ] in
    :mod:`kseq.samplers.pairs`.

    Args:
        source: a Source (``ArraySource`` over arrays or memmaps, ``DataFrameSource``,
            ``HDF5Source``), a dict of arrays, a DataFrame, or the path of an HDF5 file.
        label: the field holding the class of each row: shape ``(n,)`` or ``(n, 1)``.
        fields: the field(s) to pair; default every field except ``label``.
        positive_fraction: the share of same-class pairs in every batch, in ``[0, 1]``.
        pairs_per_epoch: default: the number of usable rows.
        classes_per_batch: ``P`` for P x K batches (``K = batch_size // P``): each batch
            draws P classes, K rows of each, and pairs those rows among themselves.
        balance: ``"rows"``: every row is the left element equally often; ``"classes"``:
            every class is (for imbalanced classes; not with ``classes_per_batch``).
        input_names: the names of the two sides, like the model's inputs.
        target_name: ``None``: y is one array; a name: y is ``{target_name: y}``.
        same_label: the target of a same-class pair, 1 (default) or 0.
        drop_singletons: leave out the rows of classes with one row (they have no positive
            partner) instead of refusing them. Not needed when ``positive_fraction=0``.
        **kwargs: batch_size, seed, drop_remainder, workers, ... as for :class:`Dataset`;
            ``shuffle=False`` gives the same pairs every epoch (for validation).

    Raises:
        StructureError: at construction: a missing label or field, labels of the wrong
            shape, a class with one row (named), one class only, ``positive_fraction``
            outside ``[0, 1]``, or a P x K layout that does not fit.

    Example:
        >>> import numpy as np
        >>> data = {"x": np.arange(12.0).reshape(6, 2), "label": np.array([0, 0, 1, 1, 2, 2])}
        >>> ds = SiamesePairDataset(data, batch_size=6, seed=0)
        >>> x, y = ds[0]
        >>> sorted(x), x["left"].shape, int(y.sum())
        (['left', 'right'], (6, 2), 3)
    """

    def __init__(
        self,
        source: Source | dict | Any,
        *,
        label: str = "label",
        fields: str | Sequence[str] | None = None,
        positive_fraction: float = 0.5,
        pairs_per_epoch: int | None = None,
        classes_per_batch: int | None = None,
        balance: Balance = "rows",
        input_names: Sequence[str] = ("left", "right"),
        target_name: str | None = None,
        same_label: int = 1,
        drop_singletons: bool = False,
        **kwargs: Any,
    ) -> None:
        self.positive_fraction = check_fraction(positive_fraction)
        self.pairs_per_epoch = pairs_per_epoch
        self.classes_per_batch = classes_per_batch
        self.balance = balance
        self.target_name = None if target_name is None else check_name(target_name, "target_name")
        self.same_label = _check_same_label(same_label)
        singletons: Singletons = "drop" if drop_singletons else "keep" if self.positive_fraction == 0 else "refuse"
        super().__init__(source, label=label, fields=fields, input_names=input_names, singletons=singletons,
                         roles=2, **kwargs)
        self.build_own_sampler(SiamesePairDataset)

    def make_sampler(self) -> PairSampler:
        return PairSampler(
            self.class_index, batch_size=self.batch_size, seed=self.seed, positive_fraction=self.positive_fraction,
            pairs_per_epoch=self.pairs_per_epoch, classes_per_batch=self.classes_per_batch,
            balance=self.balance, reshuffle=self.plain_shuffle(), drop_remainder=self.drop_remainder,
        )

    def _output_fix(self, names: list[str]) -> str:
        if len(names) == 1:
            return f"Pass target_name={names[0]!r} to SiamesePairDataset, or target_name=None for y as one array."
        return "SiamesePairDataset gives one target: build the model with one output."

    def build_batch(self, rows: dict[str, np.ndarray]) -> tuple:
        same = self.labels_of(rows, 0) == self.labels_of(rows, 1)
        y = np.where(same, self.same_label, 1 - self.same_label).astype(np.float32)
        return as_batch(self.inputs_of(rows), y if self.target_name is None else {self.target_name: y})


class TripletDataset(_ClassTupleDataset):
    """Triplets ``(anchor, positive, negative)`` of rows, drawn anew every epoch.

    x is ``{"anchor": ..., "positive": ..., "negative": ...}`` (named by ``input_names``;
    several fields are keyed ``"{field}_{input_name}"`` as in :class:`SiamesePairDataset`).
    The positive shares the anchor's class and is never the anchor itself; the negative
    never shares the anchor's class. Anchors cover the rows evenly, as the left rows of
    :class:`SiamesePairDataset` do; ``classes_per_batch`` gives P x K batches.

    Args:
        targets: ``None``: batches are ``(x,)``, for a model that adds its own triplet loss;
            ``"zeros"``: y is float32 zeros, for a compiled loss that ignores ``y_true``;
            ``"labels"``: y is the anchors' labels.
        triplets_per_epoch: default: the number of usable rows.
        source, label, fields, classes_per_batch, balance, input_names, drop_singletons, **kwargs:
            as for :class:`SiamesePairDataset`.

    Raises:
        StructureError: as :class:`SiamesePairDataset`; a class with one row is always
            refused (it can never be an anchor) unless ``drop_singletons=True``.

    Example:
        >>> import numpy as np
        >>> data = {"x": np.arange(8.0)[:, None], "label": np.array([0, 0, 1, 1, 2, 2, 2, 0])}
        >>> (x,) = TripletDataset(data, batch_size=8, seed=0)[0]
        >>> sorted(x), x["anchor"].shape
        (['anchor', 'negative', 'positive'], (8, 1))
    """

    def __init__(
        self,
        source: Source | dict | Any,
        *,
        label: str = "label",
        fields: str | Sequence[str] | None = None,
        triplets_per_epoch: int | None = None,
        classes_per_batch: int | None = None,
        balance: Balance = "rows",
        input_names: Sequence[str] = ("anchor", "positive", "negative"),
        targets: str | None = None,
        drop_singletons: bool = False,
        **kwargs: Any,
    ) -> None:
        self.targets = one_of(targets, "targets", (None, "zeros", "labels"))
        self.triplets_per_epoch = triplets_per_epoch
        self.classes_per_batch = classes_per_batch
        self.balance = balance
        super().__init__(source, label=label, fields=fields, input_names=input_names,
                         singletons="drop" if drop_singletons else "refuse", roles=3, **kwargs)
        self.build_own_sampler(TripletDataset)

    def make_sampler(self) -> TripletSampler:
        return TripletSampler(
            self.class_index, batch_size=self.batch_size, seed=self.seed, triplets_per_epoch=self.triplets_per_epoch,
            classes_per_batch=self.classes_per_batch, balance=self.balance,
            reshuffle=self.plain_shuffle(), drop_remainder=self.drop_remainder,
        )

    def build_batch(self, rows: dict[str, np.ndarray]) -> tuple:
        x = self.inputs_of(rows)
        if self.targets is None:
            return as_batch(x)
        anchors = self.labels_of(rows, 0)
        return as_batch(x, np.zeros(len(anchors), np.float32) if self.targets == "zeros" else anchors)


def _check_label_field(label: object, source: Source) -> str:
    fix = "Pass label=<the field that holds each row's class>."
    return known_fields(check_name(label, "label"), source.fields, "label", fix=fix)[0]


def _check_fields(fields: str | Sequence[str] | None, source: Source, label: str) -> list[str]:
    if fields is None:
        names = [f for f in source.fields if f != label]
        if not names:
            msg = f"The source has only the label field {label!r}: nothing to pair. Expected another field."
            raise StructureError(msg)
        return names
    names = check_fields(fields, source.fields)
    if not names:
        msg = "fields is empty. Expected at least one field to pair, or fields=None for every non-label field."
        raise StructureError(msg)
    return names


def _check_input_names(names: Sequence[str], roles: int) -> tuple[str, ...]:
    ok = isinstance(names, Sequence) and not isinstance(names, str) and len(names) == roles
    ok = ok and all(isinstance(n, str) and n for n in names)
    if not ok or len(set(names)) != roles:
        msg = f"input_names must be {roles} distinct non-empty names, one per side. Received {names!r}."
        raise StructureError(msg)
    return tuple(names)


def _check_same_label(value: object) -> int:
    fix = "1: same class -> 1.0 (the default); 0: same class -> 0.0, as the keras.io contrastive loss expects."
    return integer(value, "same_label", minimum=0, maximum=1, fix=fix)
