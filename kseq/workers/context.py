"""The batch being computed, ``(epoch, index)``, for code that runs inside ``get_batch``.

``Dataset.get_batch`` and every worker set it around the batch they compute, so
``ds.batch_rng()`` inside ``build_batch`` (or a ``get_batch`` override) sees the
epoch the batch belongs to, not the dataset's ``epoch`` attribute: that one is
frozen in worker processes and may already be past a batch that a thread prefetches.

# NOTE [ global random generators in a batch ]
Code ported from torch or Keras 2 often augments with the global ``np.random`` or
``random``. Worker processes reseed both from ``(seed, epoch, index)`` before every
batch, so such draws do not repeat across forked workers and do not depend on the worker
count. For the main process to compute the *same* batches (a user who debugs with
``workers=1`` must see what trains with processes), ``Dataset.get_batch`` passes itself to
:class:`batch_context`, which then reseeds both generators for the batch and gives the
caller's state back afterwards (in worker processes too, so the two agree exactly).

That costs a save, a seed and a restore of both generators per batch: more than all of
kseq's own Python per batch of an in-memory dataset. kseq's own code never draws from
the global generators, so the reseed is done only when a batch runs code from outside
kseq: the dataset's ``get_batch``, ``read_rows`` or ``build_batch``, or its source's
``read``, defined in a module outside the ``kseq`` package (decided once per class pair).

Worker *threads* share one global state with each other and with the main thread, so
no per-batch seed can hold there (reseeding would also rewind draws the main thread
makes meanwhile): kseq's thread pool turns the reseed off in its threads
(:func:`leave_globals_alone`) and warns once when it sees ``np.random`` move during a
batch (``random`` is not watched: Keras's ``fit(shuffle=True)`` draws from it in the
main thread while workers compute). Use ``self.batch_rng()``, or processes.
"""

from __future__ import annotations

import functools
import random
from contextvars import ContextVar, Token
from typing import Any

import numpy as np

from kseq.validators import is_integer

__all__ = ["batch_context", "current_batch", "leave_globals_alone", "reseed_globals", "runs_outside_code"]

_CURRENT: ContextVar[tuple[int, int] | None] = ContextVar("kseq_current_batch", default=None)
_RESEED: ContextVar[bool] = ContextVar("kseq_reseed_globals", default=True)
_BATCH_METHODS = ("get_batch", "read_rows", "build_batch")


def current_batch() -> tuple[int, int] | None:
    """``(epoch, index)`` of the batch being computed in this thread, or ``None`` outside one.

    Example:
        >>> current_batch() is None
        True
        >>> with batch_context(2, 5):
        ...     current_batch()
        (2, 5)
    """
    return _CURRENT.get()


def reseed_globals(seed: object, epoch: int, index: int) -> None:
    """Seed ``np.random`` and ``random`` from ``(seed, epoch, index)``.

    Legacy transforms that draw from the global generators then never repeat each
    other's draws across forked workers, and draw the same values whatever the
    worker count (NOTE [ global random generators in a batch ]).
    """
    root = int(seed) if is_integer(seed) else 0  # type: ignore[call-overload]
    state = np.random.SeedSequence([root, int(epoch), int(index)]).generate_state(4)
    np.random.seed(state)
    random.seed(int.from_bytes(state.tobytes(), "little"))


def leave_globals_alone() -> None:
    """In this thread, :class:`batch_context` never reseeds the global generators (kseq's worker threads)."""
    _RESEED.set(False)


def runs_outside_code(dataset: Any) -> bool:
    """Whether a batch of ``dataset`` runs code defined outside kseq (NOTE [ global random generators in a batch ]).

    ``dataset`` may be a dataset's plan (what workers receive): the dataset it carries is the one asked about.
    """
    dataset = getattr(dataset, "dataset", dataset)
    return _outside((type(dataset), type(getattr(dataset, "source", None))))


@functools.lru_cache(maxsize=1024)
def _outside(types: tuple[type, type]) -> bool:
    dataset_type, source_type = types
    owners = [_owner(dataset_type, name) for name in _BATCH_METHODS] + [_owner(source_type, "read")]
    return any(not _in_kseq(owner.__module__) for owner in owners if owner is not None)


def _owner(cls: type, method: str) -> type | None:
    """The class in ``cls``'s MRO that defines ``method``."""
    return next((klass for klass in cls.__mro__ if method in vars(klass)), None)


def _in_kseq(module: str) -> bool:
    return module == "kseq" or module.startswith("kseq.")


class batch_context:  # lower case: used like a function, ``with batch_context(epoch, index):``
    """Mark the code inside as computing batch ``index`` of ``epoch``.

    With ``dataset`` (as ``Dataset.get_batch`` passes), the global ``np.random`` and ``random``
    are also reseeded from ``(dataset.seed, epoch, index)`` inside, and the caller's state is
    given back on exit, when the batch runs code from outside kseq (NOTE [ global random
    generators in a batch ]). A class rather than a ``@contextmanager`` generator: it runs once
    per batch, on the hot path.

    Example:
        >>> import numpy as np
        >>> class Legacy:  # a dataset from outside kseq (here: written in this docstring)
        ...     __module__ = "user_code"
        ...     seed = 7
        ...     def build_batch(self, rows): ...
        >>> np.random.seed(0)
        >>> with batch_context(1, 2, Legacy()):
        ...     inside = np.random.random()
        >>> with batch_context(1, 2, Legacy()):
        ...     again = np.random.random()
        >>> inside == again, np.random.random() == np.random.RandomState(0).random()
        (True, True)
    """

    __slots__ = ("_saved", "_seed", "_token", "_value")

    def __init__(self, epoch: int, index: int, dataset: Any = None) -> None:
        self._value = (int(epoch), int(index))
        self._token: Token | None = None
        self._seed = getattr(dataset, "seed", 0) if dataset is not None and runs_outside_code(dataset) else None
        self._saved: tuple[Any, Any] | None = None

    def __enter__(self) -> None:
        self._token = _CURRENT.set(self._value)
        if self._seed is not None and _RESEED.get():
            self._saved = (np.random.get_state(), random.getstate())
            reseed_globals(self._seed, *self._value)

    def __exit__(self, *exc_info: object) -> None:
        if self._saved is not None:
            np_state, py_state = self._saved
            self._saved = None
            np.random.set_state(np_state)
            random.setstate(py_state)
        if self._token is not None:
            _CURRENT.reset(self._token)
