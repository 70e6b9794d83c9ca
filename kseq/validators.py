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
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import numpy as np

from kseq.errors import StructureError

__all__ = [
    "batch_index",
    "fraction",
    "integer",
    "is_integer",
    "known_fields",
    "name",
    "non_negative_number",
    "one_of",
    "positive_number",
    "seed",
    "whole_number",
]

T = TypeVar("T")


def _refuse(argument: str, expected: str, value: object, fix: str) -> NoReturn:
    """The one message format: ``{argument} must be {expected}. Received {argument}={value!r}. {fix}``."""
    msg = f"{argument} must be {expected}. Received {argument}={value!r}." + (f" {fix}" if fix else "")
    raise StructureError(msg)


def is_integer(value: object) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: object) -> bool:
    """A Python or numpy real number (integer or float), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def integer(
    value: object,
    argument: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
    fix: str = "",
) -> int:
    """``value`` as an ``int``, refusing bools, floats and values outside ``[minimum, maximum]``.

    ``optional=True`` lets ``None`` through (returned as is, so the return type is then
    ``int | None``); ``fix`` is appended to the message.

    Example:
        >>> integer(None, "max_words", minimum=0, optional=True) is None
        True
        >>> integer(0, "window", minimum=1)
        Traceback (most recent call last):
        ...
        kseq.errors.StructureError: window must be an integer >= 1. Received window=0.
    """
    if optional and value is None:
        return value  # type: ignore[return-value]
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
        _refuse(argument, expected + (" or None" if optional else ""), value, fix)
    return int(value)  # type: ignore[call-overload]


def whole_number(value: object, argument: str, *, minimum: int = 1, fix: str = "") -> int:
    """An integer ``>= minimum``, or a float that holds one (``np.ceil(n / b)`` is accepted), as an ``int``.

    Example:
        >>> whole_number(np.ceil(10 / 4), "steps_per_epoch")
        3
    """
    if is_integer(value) and value >= minimum:  # type: ignore[operator]
        return int(value)  # type: ignore[call-overload]
    if isinstance(value, (float, np.floating)) and value >= minimum and float(value).is_integer():
        return int(value)
    _refuse(argument, f"a whole number >= {minimum}", value, fix)


def positive_number(value: object, argument: str, *, fix: str = "") -> float:
    """A finite real number ``> 0`` (an integer or a float, not a bool), as a ``float``.

    Example:
        >>> positive_number(np.float32(0.5), "cache_mb")
        0.5
        >>> positive_number(0, "cache_mb", fix="It is in MiB.")
        Traceback (most recent call last):
        ...
        kseq.errors.StructureError: cache_mb must be a number > 0. Received cache_mb=0. It is in MiB.
    """
    if not _is_real(value) or not math.isfinite(float(value)) or not float(value) > 0:  # type: ignore[arg-type]
        _refuse(argument, "a number > 0", value, fix)
    return float(value)  # type: ignore[arg-type]


def non_negative_number(value: object, argument: str, *, fix: str = "") -> float:
    """A finite real number ``>= 0`` (an integer or a float, not a bool), as a ``float``.

    Example:
        >>> non_negative_number(0, "class_weight[0]")
        0.0
        >>> non_negative_number(float("nan"), "class_weight[0]")
        Traceback (most recent call last):
        ...
        kseq.errors.StructureError: class_weight[0] must be a finite number >= 0. Received class_weight[0]=nan.
    """
    if not _is_real(value) or not math.isfinite(float(value)) or not float(value) >= 0:  # type: ignore[arg-type]
        _refuse(argument, "a finite number >= 0", value, fix)
    return float(value)  # type: ignore[arg-type]


def seed(value: object, argument: str = "seed") -> int:
    """A non-negative integer seed."""
    if not is_integer(value) or value < 0:  # type: ignore[operator]
        _refuse(argument, "a non-negative integer or None", value, "")
    return int(value)  # type: ignore[call-overload]


def fraction(value: object, argument: str, *, fix: str = "") -> float:
    """A real number in ``[0, 1]``."""
    if not _is_real(value) or not math.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        _refuse(argument, "a number in [0, 1]", value, fix)
    return float(value)  # type: ignore[arg-type]


def one_of(value: T, argument: str, choices: Collection[Any], *, fix: str = "") -> T:
    """``value`` if it is one of ``choices`` (compared with ``==``, strings quoted in the message)."""
    if isinstance(value, (list, dict, set, np.ndarray)) or value not in choices:
        _refuse(argument, "one of " + ", ".join(repr(c) for c in choices), value, fix)
    return value


def name(value: object, argument: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        _refuse(argument, "a non-empty string", value, "")
    return value


def known_fields(
    fields: str | Sequence[str], available: Mapping[str, Any], argument: str, *, fix: str = ""
) -> list[str]:
    """``fields`` as a list, refusing names that ``available`` (a source's fields) does not have."""
    if not isinstance(fields, str) and (not isinstance(fields, Iterable) or isinstance(fields, Mapping)):
        _refuse(argument, "a field name or a list of field names", fields, fix)
    names = [fields] if isinstance(fields, str) else list(fields)
    if not all(isinstance(f, str) for f in names):
        msg = f"{argument} must be field names (strings). Received {argument}={fields!r:.80}."
        raise StructureError(msg)
    missing = [f for f in names if f not in available]
    if missing:
        msg = (
            f"{argument} names field(s) {missing} that the source does not have. "
            f"Expected fields from {sorted(available)}."
        ) + (f" {fix}" if fix else "")
        raise StructureError(msg)
    return names


def batch_index(value: object, length: int, *, fix: str = "") -> int:
    """A batch index in ``[0, length)``: ``TypeError`` for a non-integer, ``IndexError`` out of range.

    Example:
        >>> batch_index(np.int64(2), 3)
        2
        >>> batch_index(3, 3)
        Traceback (most recent call last):
        ...
        IndexError: Batch index 3 is out of range: this dataset has 3 batches (0..2).
    """
    if type(value) is int and 0 <= value < length:  # the hot path (twice per batch): a plain int in range
        return value
    if not is_integer(value):
        msg = f"Batch index must be an integer. Received {value!r}."
        raise TypeError(msg)
    if not 0 <= value < length:  # type: ignore[operator]
        msg = f"Batch index {value} is out of range: this dataset has {length} batches (0..{length - 1})."
        raise IndexError(msg + (f" {fix}" if fix else ""))
    return int(value)  # type: ignore[call-overload]
