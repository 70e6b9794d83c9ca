"""Shared-memory slots: a worker writes a batch's arrays into a file the main process maps.

# NOTE [ shared-memory slots ]
The main process owns every slot: a file ``<dir>/kseq-<pid>-<token>-<n>`` created
with ``os.open(..., O_EXCL, 0o600)`` (private to the user) in ``/dev/shm``. A worker
told to use slot ``n`` maps it, grows it with ``posix_fallocate`` when the batch is
larger than the slot (so a full ``/dev/shm`` is an ``OSError``, not a ``SIGBUS``), and
copies the arrays in at 64-byte aligned offsets; only the offsets, shapes and dtypes
go back through the pipe.

The main process hands out numpy views of the slot, without a copy. The slot is
reused only once every view of it is gone: the views share one root buffer object,
and a ``weakref.finalize`` on that root puts the slot back on the free list. A
consumer that keeps batches simply makes the pool create more slots. Files are
unlinked by :meth:`SlotPool.close` (called on ``close()``, garbage collection and
exit); files left by a process that was killed are swept by the next pool started
by the same user. No ``multiprocessing.shared_memory`` is used, so Python 3.11's
resource tracker never warns about, or unlinks, a segment it does not own.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import tempfile
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Layout", "SlotPool", "SlotWriter", "shm_directory", "sweep_stale"]

ALIGN = 64
PREFIX = "kseq-"

# (offset, shape, dtype string) of every array in a slot.
Layout = list[tuple[int, tuple[int, ...], str]]


def shm_directory() -> str:
    """``/dev/shm`` where it exists (memory-backed), else the temporary directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm)
    return tempfile.gettempdir()


def sweep_stale(directory: str) -> list[str]:
    """Remove slot files of this user whose creating process no longer exists."""
    removed = []
    uid = os.getuid() if hasattr(os, "getuid") else None
    for path in Path(directory).glob(f"{PREFIX}*"):
        pid = path.name[len(PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if uid is None or path.stat().st_uid == uid:
                path.unlink()
                removed.append(str(path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Slot:
    path: str
    fd: int
    mapped: mmap.mmap | None = None
    mapped_size: int = 0


class SlotPool:
    """The main process's slots: create, lend as zero-copy views, recycle, unlink.

    Example:
        >>> pool = SlotPool()
        >>> slot, path = pool.acquire()
        >>> layout = SlotWriter().write(path, [np.arange(3.0)])
        >>> (view,) = pool.lease(slot, layout)
        >>> view.tolist(), len(pool.paths())
        ([0.0, 1.0, 2.0], 1)
        >>> pool.close(); os.path.exists(path)
        False
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or shm_directory()
        self.prefix = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
        self._slots: list[_Slot] = []
        # Appended to by finalizers, which may run in any thread, even inside acquire():
        # deque.append and popleft are atomic, so no lock is taken there.
        self._free: deque[int] = deque()
        self._closed = False

    def acquire(self) -> tuple[int, str]:
        """A free slot's number and path (a new, empty one if none is free)."""
        try:
            number = self._free.popleft()
        except IndexError:
            number = len(self._slots)
            path = os.path.join(self.directory, f"{self.prefix}{number}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            self._slots.append(_Slot(path, fd))
        return number, self._slots[number].path

    def release(self, number: int) -> None:
        """Give slot ``number`` back (its views must be gone: see :meth:`lease`)."""
        self._free.append(number)

    def lease(self, number: int, layout: Layout) -> list[np.ndarray]:
        """Views of the arrays a worker wrote into slot ``number``; the slot is released with the last view."""
        end = max((offset + _nbytes(shape, dtype) for offset, shape, dtype in layout), default=0)
        if end == 0:
            self.release(number)
            return [np.empty(shape, dtype) for _, shape, dtype in layout]
        slot = self._slots[number]
        if slot.mapped is None or slot.mapped_size < end:
            self._remap(slot)
        flat = np.frombuffer(memoryview(slot.mapped)[:end], dtype=np.uint8)  # type: ignore[arg-type]
        root: object = flat
        while isinstance(root, np.ndarray):
            root = root.base
        weakref.finalize(root, self.release, number).atexit = False
        return [_view(flat, offset, shape, dtype) for offset, shape, dtype in layout]

    def paths(self) -> list[str]:
        return [slot.path for slot in self._slots]

    def close(self) -> None:
        """Unlink every slot file; views still held stay valid until they are dropped."""
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            with contextlib.suppress(OSError):
                os.unlink(slot.path)
            with contextlib.suppress(OSError):
                os.close(slot.fd)
            if slot.mapped is not None:
                with contextlib.suppress(BufferError):  # views still alive: unmapped when they go
                    slot.mapped.close()
        self._slots = []
        self._free.clear()

    def _remap(self, slot: _Slot) -> None:
        if slot.mapped is not None:
            slot.mapped.close()  # the slot is free, so no view of the old mapping is left
        slot.mapped_size = os.fstat(slot.fd).st_size
        slot.mapped = mmap.mmap(slot.fd, slot.mapped_size)


class SlotWriter:
    """A worker's side: write arrays into a slot file, growing it when needed."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[int, mmap.mmap | None, int]] = {}

    def write(self, path: str, arrays: list[np.ndarray]) -> Layout:
        """Copy ``arrays`` into the slot at ``path``; returns their offsets, shapes and dtypes."""
        layout: Layout = []
        end = 0
        for array in arrays:
            layout.append((end, tuple(array.shape), array.dtype.str))
            end = _aligned(end + array.nbytes)
        if end == 0:
            return layout
        mapped = self._mapping(path, end)
        for (offset, shape, dtype), array in zip(layout, arrays, strict=True):
            np.copyto(np.ndarray(shape, dtype, buffer=mapped, offset=offset), array, casting="no")  # type: ignore[call-overload]
        return layout

    def close(self) -> None:
        for fd, mapped, _ in self._maps.values():
            if mapped is not None:
                with contextlib.suppress(BufferError):
                    mapped.close()
            os.close(fd)
        self._maps.clear()

    def _mapping(self, path: str, size: int) -> mmap.mmap:
        fd, mapped, mapped_size = self._maps.get(path) or (os.open(path, os.O_RDWR), None, 0)
        if mapped is None or mapped_size < size:
            if mapped is not None:
                mapped.close()
            mapped_size = max(size, os.fstat(fd).st_size)
            _grow(fd, path, mapped_size)
            mapped = mmap.mmap(fd, mapped_size)
        self._maps[path] = (fd, mapped, mapped_size)
        return mapped


def _grow(fd: int, path: str, size: int) -> None:
    if os.fstat(fd).st_size >= size:
        return
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:
            os.ftruncate(fd, size)
    except OSError as e:
        directory = os.path.dirname(path)
        free = _free_bytes(directory)
        msg = (
            f"Cannot grow the shared-memory slot {path} to {size / 2**20:.1f} MiB: {e.strerror}. "
            f"{directory} has {free / 2**20:.1f} MiB free. Lower max_queue_size or workers, "
            "or give the machine more shared memory (for Docker: --shm-size=2g)."
        )
        raise OSError(e.errno, msg) from e


def _free_bytes(directory: str) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def _view(flat: np.ndarray, offset: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return flat[offset : offset + _nbytes(shape, dtype)].view(dtype).reshape(shape)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
