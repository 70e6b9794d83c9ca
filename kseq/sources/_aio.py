"""Many reads at scattered file offsets in one system call: Linux kernel AIO (``io_submit``), via ctypes.

# NOTE [ batched reads ]
A shuffled batch of a file beyond ``resident_mb`` is one read per row (NOTE [ HDF5 read paths ] in
:mod:`kseq.sources.hdf5`). One ``os.preadv`` per row costs a system call each (about 2 µs on the
project's VM, most of it entering and leaving the kernel) plus the Python around it; the kernel's
own copy of a 4 KiB row from the page cache is a fraction of that. Linux AIO takes a whole batch of
reads, each at its own offset and each scattering into its own buffers (``IOCB_CMD_PREADV``), in
one ``io_submit``: a read of a file opened without ``O_DIRECT`` is done inside that call, from the
page cache or the disk, so ``io_getevents`` then only collects the results. Two system calls a
batch instead of one per row; about 2x (1.9-2.2x) the batches/s of per-run ``preadv`` on shuffled
4 KiB rows (benchmarks/README.md, hdf5). Memory maps are no answer there: recent kernels map a
whole large page-cache folio on a fault, so releasing the map after every batch
(``madvise(MADV_DONTNEED)``) still peaked at 311 MB of RSS over a 400 MB file.

Nothing here needs a library: the calls go through libc's ``syscall()`` with the numbers of
x86-64 and arm64 (the only architectures with a table below), and the ``iocb`` / ``io_event``
structs are numpy record arrays, filled per batch with vectorised numpy. Where AIO is missing (not
Linux, another architecture, ``io_setup`` refused: seccomp, ``fs.aio-max-nr`` reached), the
caller falls back to ``os.preadv``; :func:`context` returns ``None`` then.

A context is one process's, used by one read at a time: a forked child cannot use its parent's (the
ring is not copied), and two reads sharing one would take each other's completions. Each process
keeps a pool of idle contexts (:func:`context` lends one), as many as it ever read with at once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["IOVEC", "AIOContext", "context", "disable"]

# io_setup, io_destroy, io_submit, io_getevents (asm/unistd_64.h; asm-generic/unistd.h for arm64)
_SYSCALLS = {"x86_64": (206, 207, 209, 208), "aarch64": (0, 1, 2, 4), "arm64": (0, 1, 2, 4)}
_IOCB_CMD_PREADV = 7
_DEPTH = 1024  # reads in flight per context, and per io_submit call

# struct iocb and struct io_event of linux/aio_abi.h (little-endian layout: both architectures above)
_IOCB = np.dtype([
    ("data", "<u8"), ("key", "<u4"), ("rw_flags", "<i4"), ("opcode", "<u2"), ("reqprio", "<i2"),
    ("fildes", "<u4"), ("buf", "<u8"), ("nbytes", "<u8"), ("offset", "<i8"), ("reserved2", "<u8"),
    ("flags", "<u4"), ("resfd", "<u4"),
])
_EVENT = np.dtype([("data", "<u8"), ("obj", "<u8"), ("res", "<i8"), ("res2", "<i8")])
IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])


class AIOContext:
    """One AIO context: :meth:`read` submits up to ``_DEPTH`` scatter reads per system call; borrow one
    with :func:`context` (``None`` where Linux AIO is unavailable).

    Example (on Linux x86-64 or arm64):
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "f.bin")
        >>> _ = open(path, "wb").write(bytes(range(100)))
        >>> out = np.zeros(6, np.uint8)  # bytes 10-12 into out[3:], bytes 50-52 into out[:3]
        >>> iovecs = np.array([(out.ctypes.data + 3, 3), (out.ctypes.data, 3)], dtype=IOVEC)
        >>> fd = os.open(path, os.O_RDONLY)
        >>> with context() as ctx:
        ...     got = ctx.read(fd, iovecs, first=np.array([0, 1]), count=np.array([1, 1]), offsets=np.array([10, 50]))
        >>> os.close(fd)
        >>> got.tolist(), out.tolist()
        ([3, 3], [50, 51, 52, 10, 11, 12])
    """

    def __init__(self, syscall: Callable[..., int], numbers: tuple[int, int, int, int]) -> None:
        self._syscall = syscall
        self._setup, self._destroy, self._submit, self._getevents = numbers
        handle = ctypes.c_ulong(0)
        if syscall(self._setup, ctypes.c_long(_DEPTH), ctypes.byref(handle)) != 0:
            raise OSError(ctypes.get_errno(), "io_setup failed")
        self._ctx = handle.value
        weakref.finalize(self, syscall, self._destroy, ctypes.c_ulong(self._ctx))
        self._iocbs = np.zeros(_DEPTH, _IOCB)
        self._iocbs["opcode"] = _IOCB_CMD_PREADV
        self._iocbs["data"] = np.arange(_DEPTH)
        self._pointers = (self._iocbs.ctypes.data + np.arange(_DEPTH) * _IOCB.itemsize).astype(np.uint64)  # iocb *[]
        self._events = np.zeros(_DEPTH, _EVENT)

    def read(
        self, fd: int, iovecs: np.ndarray, first: np.ndarray, count: np.ndarray, offsets: np.ndarray
    ) -> np.ndarray:
        """Read ``len(first)`` runs: run ``k`` fills ``iovecs[first[k] : first[k] + count[k]]`` (an
        ``IOVEC`` array, kept alive by the caller) from byte ``offsets[k]`` of ``fd``. Returns the
        bytes each run read (fewer than asked only at the end of the file); raises OSError."""
        got = np.empty(first.size, np.int64)
        for lo in range(0, first.size, _DEPTH):
            hi = min(first.size, lo + _DEPTH)
            n = hi - lo
            iocbs = self._iocbs[:n]
            iocbs["fildes"] = fd
            iocbs["buf"] = iovecs.ctypes.data + first[lo:hi].astype(np.uint64) * IOVEC.itemsize
            iocbs["nbytes"] = count[lo:hi]
            iocbs["offset"] = offsets[lo:hi]
            self._run(n)
            events = self._events[:n]
            got[lo + events["data"].astype(np.int64)] = events["res"]
        if (got < 0).any():
            code = int(-got[got < 0][0])
            raise OSError(code, os.strerror(code))
        return got

    def _run(self, n: int) -> None:
        """Submit iocbs ``0..n-1`` and wait for their ``n`` events (in ``self._events[:n]``)."""
        submitted = 0
        while submitted < n:
            pointers = ctypes.c_void_p(self._pointers.ctypes.data + submitted * self._pointers.itemsize)
            done = self._call(self._submit, ctypes.c_ulong(self._ctx), ctypes.c_long(n - submitted), pointers)
            if done <= 0:
                raise OSError(errno.EIO, "io_submit accepted no read")
            submitted += done
        collected = 0
        while collected < n:
            events = ctypes.c_void_p(self._events.ctypes.data + collected * _EVENT.itemsize)
            left = ctypes.c_long(n - collected)
            collected += self._call(self._getevents, ctypes.c_ulong(self._ctx), left, left, events, None)

    def _call(self, number: int, *args: object) -> int:
        while True:
            result = self._syscall(number, *args)
            if result >= 0:
                return int(result)
            code = ctypes.get_errno()
            if code != errno.EINTR:
                raise OSError(code, os.strerror(code))


class _Pool:
    """One process's idle contexts. A context is lent to one read at a time, whichever thread makes it: TF runs
    a PyDataset's Python in native threads whose thread-local storage is dropped after every call, and
    ``io_destroy`` waits for an RCU grace period (about 40 ms a batch, measured through ``fit``)."""

    def __init__(self) -> None:
        self.pid, self.lock, self.works = os.getpid(), threading.Lock(), True
        self.idle: list[AIOContext] = []
        self.created = 0  # contexts made by this process (each costs an io_setup, and an io_destroy later)


_pool = _Pool()


def _this_process() -> _Pool:
    global _pool
    if _pool.pid != os.getpid():  # a forked child: the parent's contexts are not its own
        _pool = _Pool()
    return _pool


@contextmanager
def context() -> Iterator[AIOContext | None]:
    """A context of this process, lent for one read; ``None`` where Linux AIO is unavailable or failed."""
    pool = _this_process()
    with pool.lock:
        ctx = pool.idle.pop() if pool.idle else None
    if ctx is None and pool.works:
        ctx = _new()
        pool.works, pool.created = ctx is not None, pool.created + (ctx is not None)
    try:
        yield ctx
    finally:
        if ctx is not None and pool.works:
            with pool.lock:
                pool.idle.append(ctx)


def disable(reason: str) -> None:
    """Stop using AIO in this process, with a warning: reads fall back to ``os.preadv``."""
    pool = _this_process()
    with pool.lock:
        pool.works, pool.idle = False, []
    warnings.warn(f"kseq: Linux AIO stopped working, {reason}; reading with os.preadv instead.", RuntimeWarning,
                  stacklevel=3)


def _new() -> AIOContext | None:
    numbers = _SYSCALLS.get(platform.machine()) if sys.platform == "linux" else None
    if numbers is None or sys.byteorder != "little":
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
        syscall.restype = ctypes.c_long
        return AIOContext(syscall, numbers)
    except (OSError, AttributeError):
        return None
