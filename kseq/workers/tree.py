"""A batch as a small picklable skeleton plus a flat list of arrays, and back.

A worker sends the skeleton through its pipe and writes the arrays into shared
memory. Dicts (their key order kept), tuples and lists are walked; numeric and
string numpy arrays, and tensors that convert with ``np.asarray`` (``__array__``),
become array leaves; anything else (a Python number, ``None``, an object array)
travels inside the skeleton.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Skeleton", "flatten", "unflatten"]

# ("a", i): the i-th array; ("d", [(key, node)...]); ("t", [...]); ("l", [...]); ("v", value)
Skeleton = tuple[str, Any]


def flatten(tree: Any) -> tuple[Skeleton, list[np.ndarray]]:
    """Split ``tree`` into its skeleton and its array leaves, in depth-first order.

    Example:
        >>> skeleton, arrays = flatten(({"a": np.zeros(2)}, np.ones(3), None))
        >>> [a.shape for a in arrays], unflatten(skeleton, arrays)[2] is None
        ([(2,), (3,)], True)
    """
    arrays: list[np.ndarray] = []
    return _flatten(tree, arrays), arrays


def unflatten(skeleton: Skeleton, arrays: list[np.ndarray]) -> Any:
    """The tree :func:`flatten` split, with ``arrays`` at its leaves."""
    kind, body = skeleton
    if kind == "a":
        return arrays[body]
    if kind == "d":
        return {key: unflatten(node, arrays) for key, node in body}
    if kind == "t":
        return tuple(unflatten(node, arrays) for node in body)
    if kind == "l":
        return [unflatten(node, arrays) for node in body]
    return body


def _flatten(tree: Any, arrays: list[np.ndarray]) -> Skeleton:
    if isinstance(tree, dict):
        return ("d", [(key, _flatten(value, arrays)) for key, value in tree.items()])
    if isinstance(tree, tuple):
        return ("t", [_flatten(value, arrays) for value in tree])
    if isinstance(tree, list):
        return ("l", [_flatten(value, arrays) for value in tree])
    array = _as_array(tree)
    if array is None:
        return ("v", tree)
    arrays.append(array)
    return ("a", len(arrays) - 1)


def _as_array(leaf: Any) -> np.ndarray | None:
    if isinstance(leaf, np.ndarray):
        array = leaf
    elif hasattr(leaf, "__array__") and hasattr(leaf, "shape") and not isinstance(leaf, np.generic):
        array = np.asarray(leaf)
    else:
        return None
    return None if array.dtype.hasobject else array
