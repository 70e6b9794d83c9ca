"""Argument validators: one function per rule, composed by every constructor in kseq.

Each validator returns the value in its canonical type (``int`` for any integer,
including ``np.int64``) or raises :class:`~kseq.errors.StructureError` with the
expected value, what was received, and the argument's name. A rule lives here once;
constructors call it instead of writing their own. Like attrs' validators, they are
small and compose: ``integer(v, "workers", minimum=0)``.

Example:
    >>> import numpy as np
    >>> integer(np.int64(3), "workers", minimum=0)
    3
    >>> integer(True, "workers", minimum=0)
    Traceback (most recent call last):
    ...
    kseq.errors.StructureError: workers must be an integer >= 0. Received workers=True.
    >>> one_of("mask", "sample_weight", ("mean", "mask", None))
    'mask'
    >>> known_fields(["a", "z"], {"a": 0, "b": 0}, "inputs")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    kseq.errors.StructureError: inputs names field(s) ['z'] that the source does not have. Expected fields ...
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from kseq.errors import StructureError

__all__ = ["batch_index", "fraction", "integer", "is_integer", "known_fields", "name", "one_of", "seed"]

T = TypeVar("T")


def is_integer(value: object) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(value: object, argument: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``, refusing bools, floats and values outside ``[minimum, maximum]``."""
    ok = is_integer(value)
    if ok and minimum is not None and value < minimum:  # type: ignore[operator]
        ok = False
    if ok and maximum is not None and value > maximum:  # type: ignore[operator]
        ok = False
    if not ok:
        if minimum is not None and maximum is not None:
            expected = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            expected = f"an integer >= {minimum}"
        elif maximum is not None:
            expected = f"an integer <= {maximum}"
        else:
            expected = "an integer"
        msg = f"{argument} must be {expected}. Received {argument}={value!r}."
        raise StructureError(msg)
    return int(value)  # type: ignore[call-overload]


def seed(value: object, argument: str = "seed") -> int:
    """A non-negative integer seed."""
    if not is_integer(value) or value < 0:  # type: ignore[operator]
        msg = f"{argument} must be a non-negative integer or None. Received {argument}={value!r}."
        raise StructureError(msg)
    return int(value)  # type: ignore[call-overload]


def fraction(value: object, argument: str) -> float:
    """A real number in ``[0, 1]``."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        msg = f"{argument} must be a number in [0, 1]. Received {argument}={value!r}."
        raise StructureError(msg)
    return float(value)  # type: ignore[arg-type]


def one_of(value: T, argument: str, choices: Collection[Any]) -> T:
    """``value`` if it is one of ``choices`` (compared with ``==``, strings quoted in the message)."""
    if isinstance(value, (list, dict, set, np.ndarray)) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        msg = f"{argument} must be one of {listed}. Received {argument}={value!r}."
        raise StructureError(msg)
    return value


def name(value: object, argument: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        msg = f"{argument} must be a non-empty string. Received {argument}={value!r}."
        raise StructureError(msg)
    return value


def known_fields(fields: str | Sequence[str], available: Mapping[str, Any], argument: str) -> list[str]:
    """``fields`` as a list, refusing names that ``available`` (a source's fields) does not have."""
    names = [fields] if isinstance(fields, str) else list(fields)
    if not all(isinstance(f, str) for f in names):
        msg = f"{argument} must be field names (strings). Received {argument}={fields!r:.80}."
        raise StructureError(msg)
    missing = [f for f in names if f not in available]
    if missing:
        msg = (
            f"{argument} names field(s) {missing} that the source does not have. "
            f"Expected fields from {sorted(available)}."
        )
        raise StructureError(msg)
    return names


def batch_index(value: object, length: int) -> int:
    """A batch index in ``[0, length)``: ``TypeError`` for a non-integer, ``IndexError`` out of range."""
    if not is_integer(value):
        msg = f"Batch index must be an integer. Received {value!r}."
        raise TypeError(msg)
    if not 0 <= value < length:  # type: ignore[operator]
        msg = f"Batch index {value} is out of range: this dataset has {length} batches (0..{length - 1})."
        raise IndexError(msg)
    return int(value)  # type: ignore[call-overload]
