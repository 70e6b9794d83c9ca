"""Balanced pair, triplet and P x K samplers over rows grouped by class.

Each sampler is a pure function of ``(seed, epoch, batch)`` (see :mod:`kseq.samplers.base`):
the epoch's order of left rows (anchors) comes from ``default_rng([seed, epoch])`` and
everything drawn inside batch ``i`` from ``default_rng([seed, epoch, i])``.

# NOTE [ how pairs and triplets are drawn ]
Default mode, ``pairs_per_epoch = N`` (default: every usable row once):

  * Left rows (anchors, for triplets), ``balance="rows"`` (default). The epoch's left order
    is permutations of the ``m`` usable rows, one after another, cut to ``N``. So in every
    epoch each row is the left element exactly ``N // m`` or ``N // m + 1`` times; exactly
    once when ``N == m``. Classes are left as often as they have rows.
  * ``balance="classes"``: the epoch's sequence of left *classes* is permutations of the
    ``C`` classes, one after another, cut to ``N``, so each class is the left class
    ``N // C`` or ``N // C + 1`` times; its occurrences take its rows in a random order,
    cycling, so within a class each row is used equally often (give or take one).
  * Positives. A batch of ``b`` pairs has exactly :func:`positives_in` ``(b, f)`` =
    ``floor(f * b + 0.5)`` positive pairs. The right element of a positive pair is drawn
    uniformly from the *other* rows of the left row's class: never the row itself.
  * Negatives. The right element's class is drawn uniformly from the classes other than
    the left row's class, then a row uniformly within it. Every class is thus equally
    likely as the partner of a given class, whatever the class sizes. So every ordered
    pair of distinct classes is equally likely among the negatives with
    ``balance="classes"``, and with ``balance="rows"`` when the classes are of equal
    size; otherwise pair ``(a, b)`` has probability ``size(a) / (m * (C - 1))``.
  * The pairs of a batch are then put in a random order.

P x K mode (``classes_per_batch = P``, ``K = batch_size // P``): batch ``i`` draws ``P``
distinct classes uniformly and ``K`` rows of each without replacement (a class with fewer
than ``K`` rows gives all of them, then repeats them). That block is the batch's left
column (each block row once) and every partner is drawn from the same block, with the
rules above restricted to it: one read of ``P * K`` rows per batch, and an in-batch
mining loss sees every row's class-mates. ``N`` is rounded to whole batches.

Triplets take anchors, positives and negatives by the same rules (every triplet has all three).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from kseq.errors import StructureError
from kseq.samplers.base import EpochCache, batch_rng, check_batch_size, epoch_rng, num_batches
from kseq.validators import batch_index, fraction, integer, one_of

__all__ = ["ClassIndex", "PKSampler", "PairSampler", "TripletSampler", "positives_in"]

Singletons = Literal["refuse", "drop", "keep"]
Balance = Literal["rows", "classes"]


def positives_in(size: int, positive_fraction: float) -> int:
    """Positive pairs in a batch of ``size`` pairs: ``positive_fraction * size`` rounded half up.

    Example:
        >>> positives_in(32, 0.5), positives_in(5, 0.5), positives_in(10, 0.25)
        (16, 3, 3)
    """
    return math.floor(positive_fraction * size + 0.5)


class ClassIndex:
    """Rows grouped by class, built once from the label column (labels are small).

    Classes are the sorted unique labels; ``class_of[row]`` is the position of a row's
    class in ``classes`` (``-1`` for a dropped row), ``members(c)`` the rows of class ``c``.

    Args:
        labels: one label per row, shape ``(n,)`` or ``(n, 1)``: integers, strings, or
            floats holding whole numbers.
        singletons: a class with one row cannot give a positive pair: ``"refuse"`` raises
            and names those classes, ``"drop"`` leaves their rows out of every pair,
            ``"keep"`` keeps them (for negatives-only sampling).
        name: the label field's name, for error messages.

    Raises:
        StructureError: labels of the wrong shape or not class-like, singleton classes
            (with ``"refuse"``), or no class left.

    Example:
        >>> idx = ClassIndex(np.array([3, 1, 3, 1, 1]))
        >>> idx.classes.tolist(), idx.sizes.tolist(), idx.members(1).tolist()
        ([1, 3], [3, 2], [0, 2])
    """

    def __init__(self, labels: object, *, singletons: Singletons = "refuse", name: str = "label") -> None:
        flat = _check_labels(labels, name)
        one_of(singletons, "singletons", ("refuse", "drop", "keep"))
        classes, class_of, sizes = np.unique(flat, return_inverse=True, return_counts=True)
        class_of = class_of.reshape(-1).astype(np.int64)
        lonely = sizes == 1
        if lonely.any() and singletons == "refuse":
            raise StructureError(_singletons_message(classes[lonely], name))
        if lonely.any() and singletons == "drop":
            renumber = np.full(len(classes), -1, dtype=np.int64)
            renumber[~lonely] = np.arange(int((~lonely).sum()))
            class_of, classes, sizes = renumber[class_of], classes[~lonely], sizes[~lonely]
        if len(classes) == 0:
            msg = (
                f"Every class of label {name!r} has a single row, so drop_singletons=True leaves no rows. "
                "Expected at least one class with 2 or more rows."
            )
            raise StructureError(msg)
        self.name = name
        self.labels = flat
        self.classes = classes
        self.class_of = class_of
        self.sizes = sizes.astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        usable = np.flatnonzero(class_of >= 0)
        self.rows = usable[np.argsort(class_of[usable], kind="stable")]  # class by class, rows ascending
        self.position = np.full(len(flat), -1, dtype=np.int64)  # a row's place within its class
        self.position[self.rows] = np.arange(len(self.rows)) - self.starts[class_of[self.rows]]

    def __len__(self) -> int:
        """The number of usable rows (dropped singletons excluded)."""
        return len(self.rows)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def members(self, c: int) -> np.ndarray:
        """The rows of class position ``c``, ascending."""
        return self.rows[self.starts[c] : self.starts[c] + self.sizes[c]]

    def __repr__(self) -> str:
        return f"ClassIndex({len(self)} rows, {self.num_classes} classes, sizes {self.sizes.min()}..{self.sizes.max()})"


class PairSampler:
    """Batches of ``(left, right)`` row pairs with an exact share of same-class pairs.

    See NOTE [ how pairs and triplets are drawn ] in this module for the exact rules.
    ``indices(epoch, batch)`` returns an int array of shape ``(b, 2)``.

    Args:
        index: the :class:`ClassIndex` of the rows.
        batch_size: pairs per batch (``P * K`` in P x K mode).
        seed: the seed.
        positive_fraction: the share of same-class pairs in every batch, in ``[0, 1]``.
        pairs_per_epoch: pairs per epoch; default ``len(index)``.
        classes_per_batch: ``P`` for P x K batches, ``None`` for the default mode.
        balance: ``"rows"`` (each row is left equally often) or ``"classes"`` (each class
            is), in the default mode; P x K batches draw classes uniformly already.
        reshuffle: draw new pairs every epoch; ``False`` repeats epoch 0's pairs (validation).
        drop_remainder: leave out the last partial batch.

    Example:
        >>> idx = ClassIndex(np.array([0, 0, 1, 1, 2, 2, 2, 2]))
        >>> s = PairSampler(idx, batch_size=4, seed=0, positive_fraction=0.5)
        >>> pairs = s.indices(0, 0)
        >>> pairs.shape, int((idx.class_of[pairs[:, 0]] == idx.class_of[pairs[:, 1]]).sum())
        ((4, 2), 2)
    """

    def __init__(
        self,
        index: ClassIndex,
        *,
        batch_size: int,
        seed: int,
        positive_fraction: float = 0.5,
        pairs_per_epoch: int | None = None,
        classes_per_batch: int | None = None,
        balance: Balance = "rows",
        reshuffle: bool = True,
        drop_remainder: bool = False,
    ) -> None:
        self.positive_fraction = check_fraction(positive_fraction)
        per_epoch = integer(pairs_per_epoch, "pairs_per_epoch", minimum=1, optional=True)
        self._plan = _Plan(index, batch_size, seed, per_epoch, classes_per_batch, reshuffle, drop_remainder,
                           positives=self.positive_fraction > 0, negatives=self.positive_fraction < 1, balance=balance)

    def __len__(self) -> int:
        return self._plan.length

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        rng, left = self._plan.anchors(epoch, batch)
        k = positives_in(len(left.rows), self.positive_fraction)
        right = np.concatenate([left.positives(rng, slice(0, k)), left.negatives(rng, slice(k, None))])
        pairs = np.stack([left.rows, right], axis=1)
        return pairs[rng.permutation(len(pairs))]


class TripletSampler:
    """Batches of ``(anchor, positive, negative)`` row triplets.

    The positive shares the anchor's class and is never the anchor; the negative is of
    another class. ``indices(epoch, batch)`` returns an int array of shape ``(b, 3)``.
    Arguments as for :class:`PairSampler` (``triplets_per_epoch`` for ``pairs_per_epoch``).

    Example:
        >>> idx = ClassIndex(np.array([0, 0, 1, 1, 1]))
        >>> t = TripletSampler(idx, batch_size=5, seed=0).indices(0, 0)
        >>> bool((t[:, 0] != t[:, 1]).all() and (idx.class_of[t[:, 0]] != idx.class_of[t[:, 2]]).all())
        True
    """

    def __init__(
        self,
        index: ClassIndex,
        *,
        batch_size: int,
        seed: int,
        triplets_per_epoch: int | None = None,
        classes_per_batch: int | None = None,
        balance: Balance = "rows",
        reshuffle: bool = True,
        drop_remainder: bool = False,
    ) -> None:
        per_epoch = integer(triplets_per_epoch, "triplets_per_epoch", minimum=1, optional=True)
        self._plan = _Plan(index, batch_size, seed, per_epoch, classes_per_batch, reshuffle, drop_remainder,
                           positives=True, negatives=True, balance=balance)

    def __len__(self) -> int:
        return self._plan.length

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        rng, anchors = self._plan.anchors(epoch, batch)
        everything = slice(None)
        return np.stack([anchors.rows, anchors.positives(rng, everything), anchors.negatives(rng, everything)], axis=1)


class PKSampler:
    """P x K batches of single rows, for losses that mine pairs inside the batch.

    Batch ``i`` holds ``P = classes_per_batch`` distinct classes and ``K = batch_size // P``
    rows of each, drawn as in P x K mode of :class:`PairSampler`, grouped class by class.
    ``indices(epoch, batch)`` returns an int array of shape ``(P * K,)``, so it plugs
    into any :class:`~kseq.datasets.Dataset` through ``make_sampler``.

    Example:
        >>> idx = ClassIndex(np.repeat([0, 1, 2, 3], 5))
        >>> s = PKSampler(idx, batch_size=6, classes_per_batch=3, seed=0)
        >>> len(s), sorted(np.bincount(idx.class_of[s.indices(0, 0)]).tolist())
        (4, [0, 2, 2, 2])
    """

    def __init__(
        self,
        index: ClassIndex,
        *,
        batch_size: int,
        classes_per_batch: int,
        seed: int,
        rows_per_epoch: int | None = None,
        reshuffle: bool = True,
        drop_remainder: bool = False,
    ) -> None:
        per_epoch = integer(rows_per_epoch, "rows_per_epoch", minimum=1, optional=True)
        seed = integer(seed, "seed", minimum=0)
        self._plan = _Plan(index, batch_size, seed, per_epoch, classes_per_batch, reshuffle, drop_remainder,
                           positives=False, negatives=False)

    def __len__(self) -> int:
        return self._plan.length

    def indices(self, epoch: int, batch: int) -> np.ndarray:
        rng = self._plan.rng(epoch, batch)
        return self._plan.block(rng).table.reshape(-1)


def check_fraction(value: object) -> float:
    """``positive_fraction`` as a float in ``[0, 1]``: :func:`kseq.validators.fraction` with its meaning."""
    return fraction(value, "positive_fraction", fix="It is the share of same-class pairs in every batch.")


# -- the shared machinery ---------------------------------------------------------------------------------


class _Block:
    """One P x K block: ``table[p, k]`` is the row at slot ``p``, column ``k``; ``distinct[p, :m[p]]`` its rows."""

    def __init__(self, distinct: np.ndarray, m: np.ndarray) -> None:
        self.distinct, self.m = distinct, m
        columns = np.arange(distinct.shape[1]) % m[:, None]
        self.table = np.take_along_axis(distinct, columns, axis=1)


class _Anchors:
    """The left rows (anchors) of one batch, and how to draw their partners."""

    def __init__(self, index: ClassIndex, rows: np.ndarray, block: _Block | None = None,
                 slot: np.ndarray | None = None, column: np.ndarray | None = None) -> None:
        self.index, self.rows, self.block, self.slot, self.column = index, rows, block, slot, column

    def positives(self, rng: np.random.Generator, part: slice) -> np.ndarray:
        """For ``rows[part]``: another row of the same class (of the same block slot in P x K mode)."""
        rows = self.rows[part]
        if len(rows) == 0:
            return rows.copy()
        if self.block is None:
            c = self.index.class_of[rows]
            j = rng.integers(0, self.index.sizes[c] - 1)
            j += j >= self.index.position[rows]
            return self.index.rows[self.index.starts[c] + j]
        slot, m = self.slot[part], self.block.m[self.slot[part]]  # type: ignore[index]
        own = self.column[part] % m  # type: ignore[index]
        return self.block.distinct[slot, (own + 1 + rng.integers(0, m - 1)) % m]

    def negatives(self, rng: np.random.Generator, part: slice) -> np.ndarray:
        """For ``rows[part]``: a row of a class drawn uniformly from the other classes (other slots)."""
        rows = self.rows[part]
        if len(rows) == 0:
            return rows.copy()
        if self.block is None:
            c = self.index.class_of[rows]
            other = rng.integers(0, self.index.num_classes - 1, size=len(rows))
            other += other >= c
            return self.index.rows[self.index.starts[other] + rng.integers(0, self.index.sizes[other])]
        slot = self.slot[part]  # type: ignore[index]
        p, k = self.block.table.shape
        other = rng.integers(0, p - 1, size=len(rows))
        other += other >= slot
        return self.block.table[other, rng.integers(0, k, size=len(rows))]


class _Plan:
    """Batch count, the epoch's anchor order and P x K blocks: what the three samplers share."""

    def __init__(self, index: ClassIndex, batch_size: int, seed: int, per_epoch: int | None,
                 classes_per_batch: int | None, reshuffle: bool, drop_remainder: bool, *,
                 positives: bool, negatives: bool, balance: Balance = "rows") -> None:
        if not isinstance(index, ClassIndex):
            msg = f"Expected a ClassIndex (kseq.samplers.pairs.ClassIndex(labels)). Received {type(index).__name__}."
            raise StructureError(msg)
        self.index, self.seed, self.reshuffle = index, integer(seed, "seed", minimum=0), bool(reshuffle)
        self.batch_size = check_batch_size(batch_size)
        self.per_epoch = len(index) if per_epoch is None else per_epoch
        _check_feasible(index, positives=positives, negatives=negatives)
        self.classes_per_batch = None if classes_per_batch is None else _check_pk(
            index, self.batch_size, classes_per_batch, positives=positives, negatives=negatives
        )
        self.balance = _check_balance(balance, self.classes_per_batch)
        self.length = num_batches(self.per_epoch, self.batch_size, drop_remainder=drop_remainder)
        self._cache = EpochCache()

    def rng(self, epoch: int, batch: int) -> np.random.Generator:
        return batch_rng(self.seed, self._epoch(epoch), batch_index(batch, self.length))

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's left rows (NOTE [ how pairs and triplets are drawn ])."""
        make = _rows_order if self.balance == "rows" else _classes_order
        return self._cache.get(self._epoch(epoch), lambda e: make(self.index, epoch_rng(self.seed, e), self.per_epoch))

    def anchors(self, epoch: int, batch: int) -> tuple[np.random.Generator, _Anchors]:
        rng = self.rng(epoch, batch)
        if self.classes_per_batch is None:
            start = batch * self.batch_size
            return rng, _Anchors(self.index, self.order(epoch)[start : start + self.batch_size])
        block = self.block(rng)
        shuffled = rng.permutation(block.table.size)
        slot, column = np.divmod(shuffled, block.table.shape[1])
        return rng, _Anchors(self.index, block.table.reshape(-1)[shuffled], block, slot, column)

    def block(self, rng: np.random.Generator) -> _Block:
        p = self.classes_per_batch or 1
        k = self.batch_size // p
        classes = rng.choice(self.index.num_classes, size=p, replace=False)
        sizes = self.index.sizes[classes]
        m = np.minimum(sizes, k)
        distinct = np.zeros((p, k), dtype=np.int64)
        # shuffle=False: a uniform subset at half the cost; the order inside a slot never matters (anchors are
        # permuted, partners drawn uniformly).
        for slot, (c, size) in enumerate(zip(classes.tolist(), sizes.tolist(), strict=True)):
            pick = rng.choice(size, size=k, replace=False, shuffle=False) if size >= k else rng.permutation(size)
            distinct[slot, : len(pick)] = self.index.rows[self.index.starts[c] + pick]
        return _Block(distinct, m)

    def _epoch(self, epoch: int) -> int:
        return int(epoch) if self.reshuffle else 0


def _laps(rng: np.random.Generator, items: int, length: int) -> np.ndarray:
    """Permutations of ``range(items)``, one after another, cut to ``length``."""
    return np.concatenate([rng.permutation(items) for _ in range(-(-length // items))])[:length]


def _rows_order(index: ClassIndex, rng: np.random.Generator, length: int) -> np.ndarray:
    return index.rows[_laps(rng, len(index.rows), length)]


def _classes_order(index: ClassIndex, rng: np.random.Generator, length: int) -> np.ndarray:
    """Left classes in laps over the classes; the k-th time class c comes up it takes row k (mod size) of a
    random order of c's rows."""
    classes = _laps(rng, index.num_classes, length)
    shuffled = index.rows[np.lexsort((rng.random(len(index.rows)), index.class_of[index.rows]))]
    counts = np.bincount(classes, minlength=index.num_classes)
    occurrence = np.empty(length, dtype=np.int64)
    occurrence[np.argsort(classes, kind="stable")] = np.arange(length) - np.repeat(np.cumsum(counts) - counts, counts)
    return shuffled[index.starts[classes] + occurrence % index.sizes[classes]]


def _check_balance(balance: object, classes_per_batch: int | None) -> Balance:
    one_of(balance, "balance", ("rows", "classes"))
    if balance == "classes" and classes_per_batch is not None:
        msg = (
            "balance='classes' has no effect with classes_per_batch: P x K batches already draw their classes "
            "uniformly. Leave balance at 'rows', or drop classes_per_batch."
        )
        raise StructureError(msg)
    return balance  # type: ignore[return-value]


def _check_labels(labels: object, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        msg = (
            f"Labels {name!r} must hold one class per row: shape (n,) or (n, 1). Received shape {array.shape}. "
            f"For one-hot labels store labels.argmax(axis=1) as the label field."
        )
        raise StructureError(msg)
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        msg = (
            f"Labels {name!r} must be class ids (integers or strings). Received float values such as "
            f"{array[~(array == np.round(array))][:3].tolist()}: these look like regression targets. "
            f"Pass label=<the field holding the class>."
        )
        raise StructureError(msg)
    if array.dtype.kind not in "biufUS":
        msg = f"Labels {name!r} must be integers or strings. Received dtype {array.dtype}."
        raise StructureError(msg)
    return array


def _singletons_message(lonely: np.ndarray, name: str) -> str:
    shown = lonely[:20].tolist()
    more = f" and {len(lonely) - 20} more" if len(lonely) > 20 else ""
    return (
        f"Class(es) {shown}{more} of label {name!r} have a single row, so they have no positive partner "
        f"(a row is never paired with itself). Expected at least 2 rows per class. "
        f"Pass drop_singletons=True to leave those {len(lonely)} row(s) out, or add rows of those classes."
    )


def _check_feasible(index: ClassIndex, *, positives: bool, negatives: bool) -> None:
    if negatives and index.num_classes < 2:
        msg = (
            f"Label {index.name!r} has one class only ({index.classes.tolist()}), so no negative (different-class) "
            "partner exists. Expected 2 or more classes. Add rows of other classes, or pass positive_fraction=1.0."
        )
        raise StructureError(msg)
    if positives and (index.sizes < 2).any():
        raise StructureError(_singletons_message(index.classes[index.sizes < 2], index.name))


def _check_pk(index: ClassIndex, batch_size: int, p: object, *, positives: bool, negatives: bool) -> int:
    p = integer(p, "classes_per_batch", minimum=1, optional=True)
    k = batch_size // p
    if batch_size % p:
        msg = (
            f"P x K batches need batch_size divisible by classes_per_batch. Received batch_size={batch_size}, "
            f"classes_per_batch={p}. Pass batch_size={p * max(k, 2)} ({p} classes x {max(k, 2)} rows each)."
        )
        raise StructureError(msg)
    if p > index.num_classes:
        msg = (
            f"classes_per_batch={p} but label {index.name!r} has only {index.num_classes} classes. "
            f"Expected classes_per_batch <= {index.num_classes}."
        )
        raise StructureError(msg)
    if negatives and p < 2:
        msg = "classes_per_batch=1 leaves no other class in the batch for negatives. Expected 2 or more."
        raise StructureError(msg)
    if positives and k < 2:
        msg = (
            f"batch_size={batch_size} with classes_per_batch={p} gives K=1 row per class: no positive partner. "
            f"Expected K >= 2: pass batch_size={2 * p} or more (a multiple of {p})."
        )
        raise StructureError(msg)
    return p
