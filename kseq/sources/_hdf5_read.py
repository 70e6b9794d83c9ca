"""Per-process reader state of :class:`kseq.sources.hdf5.HDF5Source`: the descriptor and memory map,
``os.preadv`` reads, the h5py handle and the chunk caches.

The design is NOTE [ HDF5 read paths ] and NOTE [ HDF5 file changes ] in :mod:`kseq.sources.hdf5`.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import h5py
import numpy as np

from kseq.errors import SourceError
from kseq.sources import _aio
from kseq.sources._hdf5_layout import FieldLayout, load_filter_plugins

if TYPE_CHECKING:  # for an annotation only: hdf5.py imports this module
    from kseq.sources.hdf5 import HDF5Source

_IOV_MAX = 1024  # buffers per os.preadv call (POSIX guarantees at least 16; Linux and macOS allow 1024)
_RECYCLED_BYTES = 128 << 10  # pread outputs this large come from _Outputs (NOTE [ recycled pread outputs ])
_IDLE_OUTPUTS = 8  # idle buffers kept per size
_MAX_READ = 0x7FFFF000  # bytes Linux transfers per read call at most (MAX_RW_COUNT); more comes back short


def _stamp(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)


def _check_unchanged(fd: int, stamp: tuple[int, int, int, int], what: str) -> None:
    """Refuse to read through ``fd`` unless it is the file stamped at construction (NOTE [ HDF5 file changes ])."""
    now = _stamp(os.fstat(fd))
    if now != stamp:
        if now[2:] != stamp[2:]:
            how = "replaced by another file"
        elif now[0] != stamp[0]:
            how = f"size {stamp[0]} -> {now[0]} bytes"
        else:
            how = "modified in place"
        msg = f"{what} changed after this source was created ({how}). Create a new HDF5Source for the new file."
        raise SourceError(msg)


class _ProcessState:
    """One process's handles: the memory map, the h5py file, the chunk caches. Never pickled."""

    def __init__(self, source: HDF5Source, pid: int) -> None:
        self.path, self.pid, self.stamp = source.path, pid, source._stamp
        self.what = f"HDF5 file '{source.path}' (fields {list(source._layouts)})"
        self.lock = threading.Lock()
        self.caches = {
            name: _BlockCache(lay, slots) for name, (lay, slots) in source._cache_slots().items()
        }
        plugins = [name for name, lay in source._layouts.items() if lay.plugin]
        if plugins:  # a spawned or forkserver worker has not imported it yet
            load_filter_plugins(f"Reading fields {plugins} of '{source.path}'")
        self._map: mmap.mmap | None = None
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise SourceError(f"{self.what} cannot be opened any more: {e}.") from e
        weakref.finalize(self, os.close, self._fd)
        _check_unchanged(self._fd, self.stamp, self.what)
        self._views: dict[str | int, np.ndarray] = {}
        self._outputs = _Outputs()
        self._file: h5py.File | None = None
        self._datasets: dict[str, tuple[h5py.h5d.DatasetID, h5py.h5s.SpaceID]] = {}

    def check(self) -> None:
        _check_unchanged(self._fd, self.stamp, self.what)

    def read(self, layout: FieldLayout, reader: str, idx: np.ndarray) -> np.ndarray:
        if reader == "blocks":
            with self.lock:
                return self.caches[layout.name].gather(idx, self._load)
        rows = self._mapped(layout, idx) if reader == "memmap" else self._pread(layout, idx)
        return rows.astype(layout.native_dtype, copy=False)

    def _mapped(self, layout: FieldLayout, idx: np.ndarray) -> np.ndarray:
        """Rows gathered from the memory map: a typed view of a contiguous dataset, or, for chunks,
        a window of ``row_bytes`` starting at every byte of the file, indexed by row offsets."""
        key = layout.name if layout.offset is not None else layout.row_bytes
        view = self._views.get(key)
        if view is None:
            with self.lock:
                if self._map is None:
                    self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
                if layout.offset is not None:
                    view = np.ndarray(layout.shape, layout.dtype, buffer=self._map, offset=layout.offset)
                else:
                    raw = np.frombuffer(self._map, np.uint8)
                    shape, strides = (raw.size - layout.row_bytes + 1, layout.row_bytes), (1, 1)
                    view = np.lib.stride_tricks.as_strided(raw, shape, strides, writeable=False)
                self._views[key] = view
        if layout.offset is not None:
            return view[idx]
        rows = view[layout.row_offsets(idx)]
        return rows.view(layout.dtype).reshape(idx.size, *layout.shape[1:])

    def _pread(self, layout: FieldLayout, idx: np.ndarray) -> np.ndarray:
        """Rows read straight into their places in the output: one read per run of consecutive rows,
        all of a batch's runs in one ``io_submit`` where Linux AIO is there (NOTE [ batched reads ] in
        :mod:`kseq.sources._aio`), else one ``os.preadv`` per run (NOTE [ HDF5 read paths ])."""
        out = self._outputs.empty((idx.size, *layout.shape[1:]), layout.dtype)
        row = layout.row_bytes
        if idx.size == 0 or row == 0:
            return out
        offsets = layout.row_offsets(idx)
        order = np.argsort(offsets, kind="stable")
        offsets = offsets[order]
        first, stop = _read_runs(np.flatnonzero(np.r_[True, np.diff(offsets) != row]), idx.size, row)
        left = np.arange(first.size)  # the runs still to read
        with _aio.context() as aio:
            if aio is not None:
                iovecs = np.empty(idx.size, _aio.IOVEC)
                iovecs["base"] = out.ctypes.data + order.astype(np.uint64) * np.uint64(row)
                iovecs["len"] = row
                try:
                    got = aio.read(self._fd, iovecs, first, stop - first, offsets[first])
                except OSError as e:  # not a truncation (that is a short read): preadv from now on
                    _aio.disable(f"reading '{self.path}' failed ({e})")
                else:
                    left = np.flatnonzero(got != (stop - first) * row)  # short: continued below, or refused
        if left.size:
            flat = memoryview(out).cast("B")  # type: ignore[arg-type]  # ndarray exports the buffer protocol
            for k in left.tolist():
                a, b = int(first[k]), int(stop[k])
                views = [flat[p * row : (p + 1) * row] for p in order[a:b].tolist()]
                got_bytes = _preadv_all(self._fd, views, int(offsets[a]))
                if got_bytes != (b - a) * row:
                    msg = (
                        f"Field {layout.name!r} (dataset '/{layout.dataset}') of '{self.path}': read {got_bytes} "
                        f"of {(b - a) * row} bytes at byte {int(offsets[a])}. The file is truncated; write it again."
                    )
                    raise SourceError(msg)
        return out

    def _load(self, layout: FieldLayout, start: int, out: np.ndarray) -> None:
        """Read rows ``start : start + len(out)`` of ``layout`` into ``out`` (whole chunks, one HDF5 read)."""
        try:
            dset, file_space = self._dataset(layout)
            file_space.select_hyperslab((start,) + (0,) * (out.ndim - 1), out.shape)
            dset.read(h5py.h5s.create_simple(out.shape), file_space, out)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
            msg = (
                f"Cannot read field {layout.name!r} (dataset '/{layout.dataset}', rows {start} to "
                f"{start + len(out) - 1}) of '{self.path}': {e}. The file may be corrupt; write it again."
            )
            raise SourceError(msg) from e

    def _dataset(self, layout: FieldLayout) -> tuple[h5py.h5d.DatasetID, h5py.h5s.SpaceID]:
        """The low-level dataset and its file dataspace, opened once per process."""
        found = self._datasets.get(layout.name)
        if found is None:
            if self._file is None:
                handle = h5py.File(self.path, "r")
                try:
                    _check_unchanged(handle.id.get_vfd_handle(), self.stamp, self.what)
                except SourceError:
                    handle.close()
                    raise
                self._file = handle
            dset = self._file[layout.dataset].id
            found = self._datasets[layout.name] = (dset, dset.get_space())
        return found


class _Outputs:
    """Batch buffers of the ``pread`` path, each used again once every array over it is gone.

    # NOTE [ recycled pread outputs ]
    Once TensorFlow's ``fit`` has run, glibc maps every new batch-sized array afresh and unmaps it when
    freed (NOTE [ malloc thresholds ] in :mod:`kseq.workers.malloc`), so the kernel's copy of each row
    into a new batch page-faults on every page. The pread path reads into buffers it keeps instead,
    faulted in once: each lent buffer is wrapped in a fresh ``memoryview``, the batch is a numpy array
    over it, and a finalizer on the object at the root of the array's bases (which every slice or
    reshape of the batch keeps alive, as in NOTE [ shared-memory slots ]) puts the buffer back, up to
    ``_IDLE_OUTPUTS`` idle buffers per size. A batch someone keeps keeps its buffer: the next batch
    gets another.
    """

    def __init__(self) -> None:
        self.idle: dict[int, list[np.ndarray]] = {}

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < _RECYCLED_BYTES:
            return np.empty(shape, dtype)
        idle = self.idle.setdefault(nbytes, [])
        try:
            buffer = idle.pop()
        except IndexError:
            buffer = np.empty(nbytes, np.uint8)
        out = np.frombuffer(memoryview(buffer), dtype)  # type: ignore[arg-type]  # ndarray exports buffers
        root: object = out
        while isinstance(root, np.ndarray):  # the object numpy made to hold the buffer: every view keeps it
            root = root.base
        weakref.finalize(root, _give_back, idle, buffer).atexit = False
        return out.reshape(shape)


def _give_back(idle: list[np.ndarray], buffer: np.ndarray) -> None:
    if len(idle) < _IDLE_OUTPUTS:
        idle.append(buffer)


def _read_runs(starts: np.ndarray, size: int, row: int, max_bytes: int = _MAX_READ) -> tuple[np.ndarray, np.ndarray]:
    """``(first, stop)`` arrays: rows ``first[k]:stop[k]`` are one read. ``starts`` are where runs of
    consecutive rows begin among ``size`` rows; a run is split into reads of at most ``_IOV_MAX`` rows
    and ``max_bytes`` bytes (at least one row each)."""
    step = max(1, min(_IOV_MAX, max_bytes // max(1, row)))
    starts = np.asarray(starts, dtype=np.int64)
    stops = np.r_[starts[1:], size].astype(np.int64)
    if starts.size and (stops - starts).max() > step:
        starts = np.concatenate([np.arange(a, b, step) for a, b in zip(starts.tolist(), stops.tolist(), strict=True)])
        stops = np.r_[starts[1:], size].astype(np.int64)
    return starts, stops


def _preadv_all(fd: int, buffers: list[memoryview], offset: int) -> int:
    """Fill ``buffers`` from byte ``offset`` of ``fd``, calling ``os.preadv`` again after a short read
    from where it stopped. Returns the bytes read: fewer than asked only at the end of the file."""
    total, first, buffers = 0, 0, list(buffers)
    while first < len(buffers):
        got = os.preadv(fd, buffers[first : first + _IOV_MAX], offset)
        if got == 0:
            break
        total, offset = total + got, offset + got
        while first < len(buffers) and got >= len(buffers[first]):
            got -= len(buffers[first])
            first += 1
        if got:
            buffers[first] = buffers[first][got:]
    return total


_Loader = Callable[[FieldLayout, int, np.ndarray], None]


class _BlockCache:
    """One field's blocks in a preallocated arena of ``slots`` slots; least recently used evicted first.

    A batch is gathered with one fancy index over the arena, whatever the number of blocks it
    touches (in groups of ``slots`` when it touches more). Not thread-safe on its own.
    """

    def __init__(self, layout: FieldLayout, slots: int) -> None:
        self.layout, self.rows, self.n = layout, layout.block_rows, layout.shape[0]
        self.slots = slots
        self.arena: np.ndarray | None = None
        self._where: OrderedDict[int, int] = OrderedDict()  # block -> slot, of loaded blocks only
        self._free = list(range(slots - 1, -1, -1))  # slots holding no block; popped from the end: 0 first
        self.hits = self.misses = 0

    def gather(self, idx: np.ndarray, load: _Loader) -> np.ndarray:
        if self.arena is None:
            self.arena = np.empty((self.slots, self.rows, *self.layout.shape[1:]), self.layout.native_dtype)
        blocks = idx // self.rows
        unique, inverse = np.unique(blocks, return_inverse=True)
        offsets = idx - blocks * self.rows
        if unique.size <= self.slots:
            slots = np.array([self._slot(int(b), load) for b in unique], dtype=np.int64)
            return self.arena[slots[inverse], offsets]
        out = np.empty((idx.size, *self.layout.shape[1:]), self.layout.native_dtype)
        for first in range(0, unique.size, self.slots):
            group = unique[first : first + self.slots]
            slots = np.array([self._slot(int(b), load) for b in group], dtype=np.int64)
            chosen = (inverse >= first) & (inverse < first + group.size)
            out[chosen] = self.arena[slots[inverse[chosen] - first], offsets[chosen]]
        return out

    def _slot(self, block: int, load: _Loader) -> int:
        slot = self._where.get(block)
        if slot is not None:
            self.hits += 1
            self._where.move_to_end(block)
            return slot
        self.misses += 1
        # A block is registered only once its rows are in the arena: a load that raises (EIO, a changed
        # file) leaves its slot free, never a "hit" on the evicted block's rows or uninitialised memory.
        slot = self._free.pop() if self._free else self._where.popitem(last=False)[1]
        start = block * self.rows
        try:
            load(self.layout, start, self.arena[slot, : min(self.rows, self.n - start)])  # type: ignore[index]
        except BaseException:
            self._free.append(slot)
            raise
        self._where[block] = slot
        return slot

    def info(self) -> dict[str, int]:
        block_bytes = self.rows * self.layout.row_bytes
        return {"hits": self.hits, "misses": self.misses, "blocks": len(self._where), "slots": self.slots,
                "bytes": len(self._where) * block_bytes}
