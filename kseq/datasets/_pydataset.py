"""The Keras face of kseq's datasets: a ``keras.utils.PyDataset`` class where a dataset is built, none in workers.

# NOTE [ a Keras class only where Keras is fed ]
``model.fit`` accepts a dataset only if it is a ``keras.utils.PyDataset`` (``isinstance``),
but a worker process only computes batches with numpy and must not import Keras: holding
TensorFlow costs a spawn worker hundreds of MB and seconds of start-up. So kseq's dataset
classes (``Dataset``, the family, a user's subclass) are defined *without* Keras, on
:class:`KerasFacing`, and the Keras class is made where a dataset is constructed:
``KerasFacing.__new__`` returns an instance of ``keras_class(cls)``, a subclass of ``cls``
and of ``keras.utils.PyDataset`` made once per class (same name, module and methods).
Construction is where a user feeds Keras, and it imports Keras then; importing kseq, or a
module that subclasses a kseq dataset (a user's ``__main__`` re-run in a spawn worker),
imports none.

Workers receive a :class:`Plan`: the dataset's ``get_batch(index, epoch)``, pickled as an
instance of the plain class (no Keras class anywhere in the pickle), so unpickling it in a
worker imports the dataset's modules, numpy and the source's library, and nothing else.
A dataset pickled any other way (``pickle.dumps(ds)``) comes back Keras-facing, ready for
``fit``. Nothing chooses a base class from the environment or from what a process has imported.

``PyDataset.__init__`` is not called: it only stores ``workers``, ``use_multiprocessing`` and
``max_queue_size``, which a kseq dataset answers through its own properties (Keras iterates
inline; kseq runs its own pool, NOTE in kseq/workers/loader.py).
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

__all__ = ["KerasFacing", "Plan", "keras_class", "plain_class"]


class KerasFacing:
    """A class whose instances are ``keras.utils.PyDataset`` objects when constructed, and plain in a worker.

    Example:
        >>> import keras
        >>> class Tiny(KerasFacing):
        ...     def __len__(self): return 1
        >>> t = Tiny()
        >>> isinstance(t, keras.utils.PyDataset), isinstance(t, Tiny), type(t).__name__
        (True, True, 'Tiny')
        >>> plain_class(type(t)) is Tiny
        True
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # noqa: ARG004 - __init__ takes them
        return object.__new__(keras_class(cls))  # type: ignore[arg-type]  # a class is hashable

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "_plan"}

    def __reduce_ex__(self, protocol: Any) -> tuple:
        cls = type(self)
        plain = plain_class(cls)
        return (_rebuild, (plain, plain is not cls, self.__getstate__()))


@functools.cache
def keras_class(cls: type) -> type:
    """``cls`` with ``keras.utils.PyDataset`` as a further base, made once (NOTE [ a Keras class only where ...])."""
    if "_kseq_plain" in vars(cls):
        return cls
    import keras

    namespace = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "_kseq_plain": cls,
    }
    return type(cls.__name__, (cls, keras.utils.PyDataset), namespace)


def plain_class(cls: type) -> type:
    """The class a Keras-facing class was made from (``cls`` itself when it is plain)."""
    return vars(cls).get("_kseq_plain", cls)


def _rebuild(plain: type, keras_facing: bool, state: dict[str, Any]) -> Any:
    obj: Any = object.__new__(keras_class(plain) if keras_facing else plain)
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None:
        setstate(state)
    else:
        obj.__dict__.update(state)
    return obj


class Plan:
    """What worker processes and threads receive: ``dataset.get_batch(index, epoch)``, with no Keras class.

    Pickled as a copy of the dataset's state in its plain class (NOTE [ a Keras class only where ...]). In the
    process that built the dataset a plan holds it weakly (the dataset holds its plan, and its worker pool ends
    when the dataset is dropped: NOTE [ the pool ends with its owner ]); a plan unpickled in a worker holds its copy.

    Example:
        >>> import pickle, sys, numpy as np, kseq
        >>> ds = kseq.Dataset({"x": np.arange(6.0)}, batch_size=2, shuffle=False)
        >>> plan = pickle.loads(pickle.dumps(Plan(ds)))
        >>> type(plan.dataset).__mro__[-2:]  # no keras.utils.PyDataset among its bases
        (<class 'kseq.datasets._pydataset.KerasFacing'>, <class 'object'>)
        >>> plan.get_batch(1, 0)[0]["x"].tolist()
        [2.0, 3.0]
    """

    __slots__ = ("__weakref__", "_held", "_ref")

    def __init__(self, dataset: Any, *, hold: bool = False) -> None:
        self._held = dataset if hold else None
        self._ref = None if hold else weakref.ref(dataset)

    @property
    def dataset(self) -> Any:
        return self._held if self._ref is None else self._ref()

    @property
    def seed(self) -> int:
        """The dataset's seed: a worker process reseeds the global generators from it for every batch."""
        return getattr(self.dataset, "seed", 0)

    def get_batch(self, index: int, epoch: int) -> Any:
        dataset = self.dataset
        if dataset is None:
            msg = f"batch {index} of epoch {epoch} was asked of a dataset that is gone (its pool is closing)."
            raise RuntimeError(msg)
        return dataset.get_batch(index, epoch)

    def __reduce__(self) -> tuple:
        dataset = self.dataset
        return (_held_plan, (_rebuild(plain_class(type(dataset)), False, dataset.__getstate__()),))


def _held_plan(dataset: Any) -> Plan:
    return Plan(dataset, hold=True)
