"""Shared-memory slots: a worker writes a batch's arrays into a file the main process maps.

# NOTE [ shared-memory slots ]
The main process owns every slot: a file *without a name* in the slot directory
(``KSEQ_SHM_DIR``, else ``/dev/shm``, else the temporary directory), created with
``O_TMPFILE`` (or, where that is missing, created ``O_EXCL`` with mode 0600 and unlinked
at once). Its descriptor reaches each worker once, passed over the worker's Unix socket
(``SCM_RIGHTS``) with the first request that uses the slot. A worker maps it, grows it
with ``posix_fallocate`` when the batch is larger than the slot (so a full directory is an
``OSError``, never a ``SIGBUS``), and copies the arrays in at 64-byte aligned offsets; only
the offsets, shapes and dtypes go back through the pipe.

Nothing can outlive the processes: the memory belongs to the open descriptors and
mappings, and the kernel frees it when the last of them closes, on ``close()`` or on any
death, SIGKILL included; there is no name to sweep. Worker processes exit within a second
of their parent's death (NOTE [ worker processes ] in ``process.py``). No
``multiprocessing.shared_memory`` is used, so Python's resource tracker never warns
about, or unlinks, a segment it does not own.

The main process hands out numpy views of the slot, without a copy. The slot is reused
only once every view of it is gone: the views share one root buffer object, and a
``weakref.finalize`` on that root puts the slot back on the free list. A consumer that
keeps batches simply makes the pool create more slots.

When the directory is full (Docker's default ``/dev/shm`` is 64 MB), a batch whose slot
cannot grow, or a slot that cannot be created, travels pickled through the worker's pipe
instead, as Keras's own workers send every batch: slower, never wrong, never a hang. The
loader warns once, saying how to restore full speed (NOTE [ running short of shared
memory ] in ``loader.py``).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import secrets
import tempfile
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kseq.errors import StructureError

__all__ = [
    "SHM_DIR_ENV", "Layout", "NoSpace", "SlotPool", "SlotWriter", "nameless_file", "pid_alive", "shm_directory",
    "sweep_stale",
]

ALIGN = 64
PREFIX = "kseq-"
SHM_DIR_ENV = "KSEQ_SHM_DIR"
# Creating or growing a slot failed for lack of room: the batch goes through the pipe instead.
_SHORT = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EFBIG, errno.EMFILE, errno.ENFILE}

# (offset, shape, dtype string) of every array in a slot.
Layout = list[tuple[int, tuple[int, ...], str]]


class NoSpace(OSError):
    """A slot could not be created or grown: the directory (or the descriptor table) is full.

    Example:
        >>> issubclass(NoSpace, OSError)  # the process pool catches it: that batch goes through the pipe
        True
    """


def shm_directory() -> str:
    """Where slots live: ``$KSEQ_SHM_DIR`` if set, else ``/dev/shm`` where writable, else the temporary directory.

    Example:
        >>> os.environ.get("KSEQ_SHM_DIR") or shm_directory() in ("/dev/shm", tempfile.gettempdir())
        True
    """
    chosen = os.environ.get(SHM_DIR_ENV)
    if chosen:
        if not (os.path.isdir(chosen) and os.access(chosen, os.W_OK | os.X_OK)):
            msg = (
                f"{SHM_DIR_ENV} must name an existing, writable directory for kseq's shared-memory batches. "
                f"Received {SHM_DIR_ENV}={chosen!r}. Create it (a memory-backed tmpfs is fastest) or unset it "
                "to use /dev/shm."
            )
            raise StructureError(msg)
        return chosen
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm)
    return tempfile.gettempdir()


def sweep_stale(directory: str) -> list[str]:
    """Remove named slot files (``kseq-<pid>-...``, left by kseq versions before nameless slots) whose
    creating process no longer exists."""
    removed = []
    uid = os.getuid() if hasattr(os, "getuid") else None
    for path in Path(directory).glob(f"{PREFIX}*"):
        pid = path.name[len(PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if uid is None or path.stat().st_uid == uid:
                path.unlink()
                removed.append(str(path))
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def nameless_file(directory: str) -> int:
    """A read-write descriptor of a new file in ``directory`` that has no name (NOTE [ shared-memory slots ])."""
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        try:
            return os.open(directory, tmpfile | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno in _SHORT:
                raise
            # EOPNOTSUPP, EISDIR, EINVAL: this file system (or kernel) has no O_TMPFILE
    path = os.path.join(directory, f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    os.unlink(path)
    return fd


@dataclass
class _Slot:
    fd: int
    mapped: mmap.mmap | None = None
    mapped_size: int = 0


class SlotPool:
    """The main process's slots: create, lend as zero-copy views, recycle, close.

    Example:
        >>> pool = SlotPool()
        >>> slot = pool.acquire()
        >>> writer = SlotWriter()
        >>> writer.add(slot, os.dup(pool.fd(slot)))  # a worker receives the descriptor once per slot
        >>> layout = writer.write(slot, [np.arange(3.0)])
        >>> (view,) = pool.lease(slot, layout)
        >>> view.tolist(), pool.nbytes() >= 24
        ([0.0, 1.0, 2.0], True)
        >>> writer.close(); pool.close(); pool.nbytes()
        0
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or shm_directory()
        self._slots: list[_Slot] = []
        # Appended to by finalizers, which may run in any thread, even inside acquire():
        # deque.append and popleft are atomic, so no lock is taken there.
        self._free: deque[int] = deque()
        self._closed = False

    def acquire(self) -> int:
        """A free slot's number (a new, empty one if none is free); :class:`NoSpace` if none can be created."""
        try:
            return self._free.popleft()
        except IndexError:
            pass
        try:
            fd = nameless_file(self.directory)
        except OSError as e:
            if e.errno in _SHORT:
                raise NoSpace(e.errno, f"Cannot create a shared-memory slot in {self.directory}: {e.strerror}") from e
            raise
        self._slots.append(_Slot(fd))
        return len(self._slots) - 1

    def fd(self, number: int) -> int:
        """The descriptor of slot ``number``, to pass to a worker."""
        return self._slots[number].fd

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

    def __len__(self) -> int:
        return len(self._slots)

    def nbytes(self) -> int:
        """Bytes the slots hold in the directory's file system (0 once closed)."""
        total = 0
        for slot in self._slots:
            with contextlib.suppress(OSError):
                total += os.fstat(slot.fd).st_size
        return total

    def close(self) -> None:
        """Close every slot; views still held stay valid until they are dropped (the kernel frees the memory then)."""
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
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
    """A worker's side: the slots it was given, by number; writes arrays into them, growing them when needed.

    Example:
        >>> pool, writer = SlotPool(), SlotWriter()
        >>> slot = pool.acquire()
        >>> writer.add(slot, os.dup(pool.fd(slot)))
        >>> writer.write(slot, [np.zeros(2, "int32"), np.ones((2, 2))])  # (offset, shape, dtype) of each array
        [(0, (2,), '<i4'), (..., (2, 2), '<f8')]
        >>> writer.close(); pool.close()
    """

    def __init__(self) -> None:
        self._maps: dict[int, tuple[int, mmap.mmap | None, int]] = {}

    def add(self, number: int, fd: int) -> None:
        """Take ownership of ``fd``, slot ``number``'s descriptor."""
        old = self._maps.pop(number, None)
        if old is not None:
            self._close(*old)
        self._maps[number] = (fd, None, 0)

    def write(self, number: int, arrays: list[np.ndarray]) -> Layout:
        """Copy ``arrays`` into slot ``number``; returns their offsets, shapes and dtypes.

        Raises :class:`NoSpace` when the slot cannot grow to hold them.
        """
        layout: Layout = []
        end = 0
        for array in arrays:
            layout.append((end, tuple(array.shape), array.dtype.str))
            end = _aligned(end + array.nbytes)
        if end == 0:
            return layout
        mapped = self._mapping(number, end)
        for (offset, shape, dtype), array in zip(layout, arrays, strict=True):
            np.copyto(np.ndarray(shape, dtype, buffer=mapped, offset=offset), array, casting="no")  # type: ignore[call-overload]
        return layout

    def close(self) -> None:
        for entry in self._maps.values():
            self._close(*entry)
        self._maps.clear()

    @staticmethod
    def _close(fd: int, mapped: mmap.mmap | None, _size: int) -> None:
        if mapped is not None:
            with contextlib.suppress(BufferError):
                mapped.close()
        with contextlib.suppress(OSError):
            os.close(fd)

    def _mapping(self, number: int, size: int) -> mmap.mmap:
        fd, mapped, mapped_size = self._maps[number]
        if mapped is None or mapped_size < size:
            if mapped is not None:
                mapped.close()
                self._maps[number] = (fd, None, 0)
            mapped_size = max(size, os.fstat(fd).st_size)
            _grow(fd, mapped_size)
            mapped = mmap.mmap(fd, mapped_size)
        self._maps[number] = (fd, mapped, mapped_size)
        return mapped


def _grow(fd: int, size: int) -> None:
    current = os.fstat(fd).st_size
    if current >= size:
        return
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:
            os.ftruncate(fd, size)
    except OSError as e:
        if e.errno not in _SHORT:
            raise
        directory = _directory_of(fd)
        free = _free_bytes(directory) if directory is not None else None
        where = f"{directory}, {free / 2**20:.1f} MiB free" if free is not None else "its directory"
        grow = f"from {current / 2**20:.1f} to {size / 2**20:.1f} MiB"
        msg = f"Cannot grow a shared-memory slot {grow} in {where}: {e.strerror}"
        raise NoSpace(e.errno, msg) from e


def _directory_of(fd: int) -> str | None:
    """The directory of a nameless file, from ``/proc/self/fd`` (Linux: ``/dev/shm/#123 (deleted)``)."""
    try:
        return os.path.dirname(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def _free_bytes(directory: str) -> int | None:
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _view(flat: np.ndarray, offset: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return flat[offset : offset + _nbytes(shape, dtype)].view(dtype).reshape(shape)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
