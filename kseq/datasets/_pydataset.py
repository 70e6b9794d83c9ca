"""The base class of kseq's datasets: ``keras.utils.PyDataset``, or a stand-in inside kseq's worker processes.

# NOTE [ no framework in worker processes ]
A worker process only computes batches with numpy: it needs the dataset's source,
sampler and ``build_batch``, never Keras. But a dataset's class derives from
``keras.utils.PyDataset``, so unpickling one imports Keras, which imports its backend:
a spawn worker of a numpy-only dataset would hold TensorFlow (hundreds of MB, seconds
of start-up) for nothing. kseq's worker entry point sets ``KSEQ_WORKER_PROCESS=1``
before it unpickles the dataset; when this module is first imported in such a
process and Keras is not loaded yet, the dataset classes are built on
:class:`WorkerPyDataset`, which has the same constructor and nothing else. A user
module that imports Keras itself (a ``build_batch`` calling ``keras.ops``) loads it
first, so the real base is used and everything still works: the stand-in is only
ever chosen where nothing asked for Keras. The main process always gets the real
``PyDataset``, which ``model.fit`` checks for.
"""

from __future__ import annotations

import os
import sys

from kseq.workers.process import WORKER_ENV

__all__ = ["PyDatasetBase", "WorkerPyDataset", "in_worker_process"]


def in_worker_process() -> bool:
    """True in a process started by kseq's pool to compute batches.

    Example:
        >>> in_worker_process()  # the main process
        False
    """
    return os.environ.get(WORKER_ENV) == "1"


class WorkerPyDataset:
    """``PyDataset``'s constructor without Keras: what a worker process needs of the base.

    Example:
        >>> base = WorkerPyDataset(workers=2, use_multiprocessing=True)
        >>> base._workers, base._use_multiprocessing, base._max_queue_size  # where PyDataset keeps them
        (2, True, 10)
    """

    def __init__(self, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10) -> None:
        self._workers = workers
        self._use_multiprocessing = use_multiprocessing
        self._max_queue_size = max_queue_size

    def on_epoch_begin(self) -> None:
        """As ``PyDataset.on_epoch_begin``: nothing."""

    def on_epoch_end(self) -> None:
        """As ``PyDataset.on_epoch_end``: nothing."""


def _base() -> type:
    if in_worker_process() and "keras" not in sys.modules:
        return WorkerPyDataset
    import keras  # NOTE [ no framework in worker processes ]

    return keras.utils.PyDataset


PyDatasetBase: type = _base()
