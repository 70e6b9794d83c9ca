"""kseq's own workers: a persistent pool of threads or processes, shared-memory batches, a watchdog.

A kseq dataset built with ``workers=N`` (threads) or ``workers=N, use_multiprocessing=True``
(processes) tells Keras it is a plain in-process dataset and serves ``__getitem__`` from
its own :class:`BatchLoader`: started on the first batch, kept across epochs and ``fit``
calls, prefetching in the order batches will be asked for, and returning process batches
through shared memory instead of pickles. See the NOTE blocks in ``loader.py``,
``process.py`` and ``shm.py``.
"""

from kseq.workers.config import WorkerConfig, default_start_method
from kseq.workers.context import batch_context, current_batch
from kseq.workers.loader import BatchLoader
from kseq.workers.malloc import tune_malloc

__all__ = [
    "BatchLoader", "WorkerConfig", "batch_context", "current_batch", "default_start_method", "tune_malloc",
]
