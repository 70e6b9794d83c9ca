"""Let a TensorFlow process exit after an error inside ``fit``: tf.data iterators go before Python does.

# NOTE [ tf.data iterators at exit ]
On TensorFlow, Keras 3.15 feeds a PyDataset through ``tf.data.Dataset.from_generator``
(plus ``prefetch``). The iterator of that generator is *finalized* (TensorFlow runs a
Python function that drops the generator) when the generator ends, or else when the
iterator is destroyed. Seen here (TF 2.21, Keras 3.15.1, Python 3.11): when a read
raises inside ``fit`` (kseq's "generator ended", a stateful dataset refusing
``shuffle=True``, a worker's error), the failed epoch's iterator is often left
unfinalized, and Keras keeps it in a reference cycle (its epoch iterator and that
iterator's ``_enumerate_iterator`` generator) that only the garbage collector frees.
When nothing collects it earlier, it is destroyed during interpreter shutdown, after
Python stopped letting other threads take the GIL: the destructor waits for a
TensorFlow thread that is waiting to run Python, and the process never exits (or
logs "Error occurred when finalizing GeneratorDataset iterator: ... Python
interpreter state is not initialized"). This is TensorFlow's from_generator
teardown, reported as tensorflow/tensorflow#22632 ("Sometimes Deadlock from TF
Dataset using Generator": hangs on exit or prints destruction errors) and still
there in 2.21.

The narrowest mitigation that made every pattern exit (tests/test_exit.py): an
``atexit`` hook that runs the garbage collector while Python is still whole, so
such iterators are destroyed (and their generators finalized) before shutdown, when
TensorFlow's threads can still run Python. It runs only in a process that imported
TensorFlow. ``fit_generator`` also collects at once when ``fit`` fails, so its
iterator goes before the script carries on. An iterator the program itself keeps
alive (an exception object stored in a global, say) is not garbage, and is not
covered: drop it (``del``) before the script ends.
"""

from __future__ import annotations

import atexit
import functools
import gc
import sys

__all__ = ["collect_at_exit", "collect_now"]


def collect_now() -> None:
    """Destroy unreachable tf.data iterators now, if TensorFlow is loaded (NOTE [ tf.data iterators at exit ])."""
    if "tensorflow" in sys.modules:
        gc.collect()


@functools.cache
def collect_at_exit() -> None:
    """Register :func:`collect_now` to run at exit, once per process (NOTE [ tf.data iterators at exit ]).

    Example:
        >>> collect_at_exit()  # registered once; later calls do nothing
        >>> collect_at_exit()
    """
    atexit.register(collect_now)
