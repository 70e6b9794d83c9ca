"""Pickle a dataset for spawned workers, and say which attribute refuses when it fails."""

from __future__ import annotations

import pickle
from typing import Any

from kseq.errors import WorkerError

__all__ = ["dumps_for_workers", "find_unpicklable"]

_MAX_DEPTH = 4


def dumps_for_workers(obj: Any, start_method: str) -> bytes:
    """``pickle.dumps(obj)``, or a :class:`WorkerError` naming the part that cannot be pickled.

    Example:
        >>> import threading
        >>> class Holder:
        ...     def __init__(self):
        ...         self.lock = threading.Lock()
        >>> find_unpicklable(Holder(), "ds")
        ('ds.lock', "TypeError: cannot pickle '_thread.lock' object")
    """
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # pickling raises many types; each becomes one clear error
        subject = getattr(obj, "dataset", obj)  # a dataset's plan (kseq.datasets._pydataset.Plan): name its part
        where, why = find_unpicklable(subject, type(subject).__name__) or (
            type(subject).__name__, f"{type(e).__name__}: {e}"
        )
        msg = (
            f"Cannot start worker processes with start_method={start_method!r}: the dataset is pickled to reach "
            f"them, and {where} cannot be pickled ({why}). Expected picklable state: paths, numbers, arrays and "
            "module-level functions or classes. Fix: create handles, locks and lambdas lazily in the worker (or "
            "drop them in __getstate__), define classes and functions at module level, or pass "
            "start_method='fork' or use_multiprocessing=False."
        )
        raise WorkerError(msg) from e


def find_unpicklable(obj: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """The deepest attribute path under ``obj`` that fails to pickle, and the error, or ``None``."""
    try:
        pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    else:
        return None
    if depth < _MAX_DEPTH:
        for child_path, child in _children(obj, path):
            found = find_unpicklable(child, child_path, depth + 1)
            if found is not None:
                return found
    if depth > 0 or isinstance(obj, (dict, list, tuple, set)):
        return path, error
    return f"class {type(obj).__module__}.{type(obj).__qualname__} (of {path})", error


def _children(obj: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [(f"{path}[{key!r}]", value) for key, value in obj.items()]
    if isinstance(obj, (list, tuple, set)):
        return [(f"{path}[{i}]", value) for i, value in enumerate(obj)]
    try:
        state = obj.__getstate__() if hasattr(obj, "__getstate__") else getattr(obj, "__dict__", None)
    except Exception:  # a broken __getstate__ is reported as the object itself
        return []
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]}  # (dict, slots) form
    if not isinstance(state, dict):
        return []
    return [(f"{path}.{name}", value) for name, value in state.items()]
