"""A dataset's position as a small JSON-serialisable state: ``get_state`` / ``set_state``.

# NOTE [ dataset state ]
Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``, so a dataset's whole
progress is two integers: the epoch and the next batch. The state is those two, the seed,
and a fingerprint of everything else that defines the order: the class, the rows and
fields of the source, the global batch size, ``shuffle``, ``drop_remainder``, the
number of batches, the sampler's settings, and a hash of three batches' indices (which
catches what the settings do not show: other labels, other captions). Restoring is
setting the two integers after comparing the fingerprint; every difference is named.

Workers, threads, start methods and the shard never appear in it: a state saved with two
worker processes restores inline, and a state saved on ``n`` processes restores on ``m``
at the same global batch (the shard is a slice of each global batch; NOTE [ shards of a
global batch ]). The shard it was saved on is recorded, for information only.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from kseq.errors import KseqError
from kseq.samplers.shard import Shard

__all__ = ["STATE_FORMAT", "check_state", "fingerprint", "state_dict"]

STATE_FORMAT = "kseq.dataset_state/1"
_KEYS = ("format", "epoch", "batch", "seed", "fingerprint", "shard")


def fingerprint(dataset: Any) -> dict[str, Any]:
    """What defines ``dataset``'s order, as JSON-ready values (see NOTE [ dataset state ]).

    Example:
        >>> import numpy as np
        >>> from kseq import Dataset
        >>> f = fingerprint(Dataset({"x": np.arange(10)}, batch_size=4, seed=0))
        >>> f["rows"], f["batch_size"], f["batches"]
        (10, 4, 3)
        >>> f == fingerprint(Dataset({"x": np.arange(10)}, batch_size=4, seed=0, workers=2))  # workers: no part
        True
        >>> f == fingerprint(Dataset({"x": np.arange(10)}, batch_size=5, seed=0))
        False
    """
    sampler = dataset.sampler
    fields = {name: [list(shape), np.dtype(dtype).str] for name, (shape, dtype) in dataset.source.fields.items()}
    return {
        "class": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
        "rows": len(dataset.source),
        "fields": fields,
        "batch_size": int(dataset.batch_size),
        "shuffle": dataset.shuffle,
        "drop_remainder": bool(dataset.drop_remainder),
        "batches": len(dataset),
        "sampler": _settings(sampler),
        "order": _order_hash(sampler),
    }


def check_state(state: Any, dataset: Any, expected: dict[str, Any]) -> tuple[int, int]:
    """``(epoch, batch)`` of ``state`` once it is known to belong to ``dataset``; a :class:`KseqError` otherwise."""
    name = type(dataset).__name__
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or set(state) != set(_KEYS):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        msg = (
            f"{name}.set_state expects a state from get_state(): a dict with keys {sorted(_KEYS)} and "
            f"format {STATE_FORMAT!r}. Received {keys}. Pass what get_state() returned (it survives json.dumps)."
        )
        raise KseqError(msg)
    differences = _differences(state["fingerprint"], expected)
    if state["seed"] != dataset.seed:
        differences.insert(
            0,
            f"seed: {state['seed']} in the state, {dataset.seed} here (to resume that run, pass seed={state['seed']})",
        )
    if differences:
        msg = (
            f"This state is from another dataset than this {name}, so its position means other batches: "
            + "; ".join(differences)
            + ". Restore it into a dataset built with the same data and arguments (workers and shard may differ)."
        )
        raise KseqError(msg)
    epoch, batch = state["epoch"], state["batch"]
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, batch))
    if not ok or batch > len(dataset):
        msg = (
            f"{name}.set_state: the position must be an epoch >= 0 and a batch in [0, {len(dataset)}]. "
            f"Received epoch={epoch!r}, batch={batch!r}."
        )
        raise KseqError(msg)
    return epoch, batch


def state_dict(dataset: Any, epoch: int, batch: int, expected: dict[str, Any], shard: Shard) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "epoch": int(epoch),
        "batch": int(batch),
        "seed": int(dataset.seed),
        "fingerprint": expected,
        "shard": [shard.index, shard.count],
    }


def _differences(saved: Any, here: dict[str, Any]) -> list[str]:
    if not isinstance(saved, dict):
        return [f"fingerprint: {type(saved).__name__} in the state, a dict here"]
    out = []
    for key in sorted(set(saved) | set(here)):
        if saved.get(key) != here.get(key):
            out.append(f"{key}: {_short(saved.get(key))} in the state, {_short(here.get(key))} here")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _settings(sampler: Any) -> dict[str, Any]:
    """The sampler's type and its plain settings (numbers, strings, booleans), as JSON values."""
    out: dict[str, Any] = {"type": type(sampler).__name__}
    for key, value in sorted(vars(sampler).items()):
        if key.startswith("_"):
            continue
        if isinstance(value, (bool, int, float, str, type(None), np.integer, np.floating, np.bool_)):
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def _order_hash(sampler: Any) -> str:
    """A hash of the indices of batches 0 and last of epoch 0, and batch 0 of epoch 1."""
    digest = hashlib.sha1(usedforsecurity=False)
    last = len(sampler) - 1
    for epoch, index in ((0, 0), (0, last), (1, 0)):
        digest.update(np.ascontiguousarray(sampler.indices(epoch, index), dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]
