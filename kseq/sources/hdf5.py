"""HDF5Source: rows of HDF5 datasets, read through a memory map or in whole chunks.

# NOTE [ HDF5 read paths ]
The read path is chosen per dataset, once, at construction (``src.readers``):

* ``memmap``: contiguous, uncompressed, allocated, plain dtype. HDF5 reports where the raw data
  starts (``dataset.id.get_offset()``), so rows are numpy fancy indexing over a read-only memory
  map of the file (what ``np.memmap`` builds, without its subclass): no h5py call, no global h5py
  lock, any order, as fast as in-memory numpy once the page cache is warm. Chunked datasets
  without filters whose chunks hold whole rows are read the same way: each chunk's offset is
  recorded at construction (``chunk_iter``), and rows are gathered at their byte offsets.
* ``pread``: the same datasets beyond ``resident_mb``. Mapped file pages count towards a
  process's resident memory (RSS), and recent kernels map whole page-cache folios (a random 4 KiB
  row can map a megabyte), so a map over a file larger than memory grows RSS to the file's size.
  Releasing mapped pages (``madvise``) and mapping them again costs more than reading: measured
  here, 300-500 batches/s against 900-1,350 for ``os.preadv`` and 2,900-3,300 for the map. So
  fields that do not fit the budget (smallest are mapped first) are read with one ``preadv``
  per run of consecutive rows, each row straight into its place in the batch: RSS stays flat.
* ``blocks``: compressed or otherwise filtered (or chunked across a row, or partly written).
  Rows are read in blocks of whole chunks along the first axis (``c`` rows, the chunk's first
  dimension), one HDF5 read per block into a per-process arena of ``cache_mb``, least recently
  used evicted first; a batch is gathered from the arena with one fancy index. A random
  sample-level order touches a new block for nearly every row (one chunk decompressed per row);
  :class:`kseq.samplers.BlockShuffleSampler` shuffles whole blocks, then rows within a window of
  blocks, so an epoch reads each chunk about once.

Every way, rows come back in the order asked. The source holds the path and this metadata only:
handles are opened lazily in each process, reopened when the process id changes (fork), and
dropped when pickled (spawn, forkserver).

# NOTE [ HDF5 file changes ]
The file's size, modification time, inode and device are recorded at construction (the stamp).
Each process opens one descriptor and checks it with ``os.fstat`` against the stamp, checks the
h5py handle the same way when it opens it, and re-checks the descriptor before every read
(about a microsecond), so a file edited in place, replaced (``os.replace``) or rewritten
(h5py ``"w"`` truncates the same inode: touching a mapped page past the new end is a SIGBUS) is
refused with a SourceError before the memory map is touched, never read as other data. A change
between that check and the read, or within the file system's timestamp granularity, is not seen.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from kseq.errors import KseqError, SourceError, StructureError
from kseq.sources.base import check_fields, check_indices

__all__ = ["FieldLayout", "HDF5Source", "describe", "open_hdf5"]

_LAYOUTS = {h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked", h5py.h5d.COMPACT: "compact"}
_TARGET_BLOCK_BYTES = 1 << 20  # block rows for datasets without chunks (compact, external, unallocated)
_MB = 1 << 20
_IOV_MAX = 1024  # buffers per os.preadv call (POSIX guarantees at least 16; Linux and macOS allow 1024)
_MAX_READ = 0x7FFFF000  # bytes Linux transfers per read call at most (MAX_RW_COUNT); more comes back short


@dataclass(frozen=True, eq=False)
class FieldLayout:
    """How one HDF5 dataset is stored, and how kseq reads it.

    ``offset`` is the byte offset of a contiguous dataset's rows; ``chunk_offsets[k]`` that of
    chunk ``k`` of an unfiltered dataset chunked along rows only. Either makes it ``direct``.
    """

    name: str
    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str
    chunks: tuple[int, ...] | None
    compression: str | None
    offset: int | None
    storage_bytes: int
    chunk_offsets: np.ndarray | None = None

    @property
    def reader(self) -> str:
        """``"direct"`` (rows read at their byte offsets) or ``"blocks"``: see NOTE [ HDF5 read paths ]."""
        return "direct" if self.offset is not None or self.chunk_offsets is not None else "blocks"

    def row_offsets(self, idx: np.ndarray) -> np.ndarray:
        """The byte offset in the file of each row in ``idx`` (``direct`` layouts only)."""
        if self.offset is not None:
            return self.offset + idx * self.row_bytes
        rows = self.chunks[0]  # type: ignore[index]
        return self.chunk_offsets[idx // rows] + (idx % rows) * self.row_bytes  # type: ignore[index]

    @property
    def block_rows(self) -> int:
        """Rows per block read: the chunk's first dimension, or about 1 MiB of rows."""
        if self.chunks:
            return max(1, min(self.chunks[0], self.shape[0]))
        row = max(1, math.prod(self.shape[1:]) * self.dtype.itemsize)
        return max(1, min(self.shape[0] if self.shape else 1, _TARGET_BLOCK_BYTES // row))

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def native_dtype(self) -> np.dtype:
        return self.dtype.newbyteorder("=") if self.dtype.byteorder not in "=|" else self.dtype


@contextmanager
def open_hdf5(path: str | os.PathLike, fields: object = None) -> Iterator[h5py.File]:
    """Open ``path`` read-only, turning every failure into a :class:`SourceError` naming file and fields."""
    path = Path(path)
    what = "all fields" if fields is None else f"field(s) {fields}"
    if not path.exists():
        msg = (
            f"HDF5 file not found: '{path}' (asked for {what}). Expected an existing HDF5 file. "
            "Check the path, or write one with kseq.pack(path, arrays) or `python -m kseq pack`."
        )
        raise SourceError(msg)
    if path.is_dir():
        msg = f"'{path}' is a directory (asked for {what}). Expected an HDF5 file inside it."
        raise SourceError(msg)
    try:
        handle = h5py.File(path, "r")
    except OSError as e:
        raise SourceError(_open_failure(path, what, e)) from e
    try:
        yield handle
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        if isinstance(e, KseqError):
            raise
        msg = f"'{path}' is corrupt or unreadable (asked for {what}): {e}. Copy or write it again."
        raise SourceError(msg) from e
    finally:
        handle.close()


def _open_failure(path: Path, what: str, error: Exception) -> str:
    size = path.stat().st_size
    if not h5py.is_hdf5(path):
        with path.open("rb") as fh:
            head = fh.read(16)
        return (
            f"'{path}' is not an HDF5 file (asked for {what}): no HDF5 signature in its {size} bytes "
            f"(it starts {head!r}). Expected a file written by kseq.pack or h5py. Convert .npy, .npz, "
            "CSV or Parquet files with `python -m kseq pack OUT.h5 INPUT...`."
        )
    if "truncated" in str(error):
        return (
            f"'{path}' is truncated (asked for {what}): {size} bytes on disk, fewer than the file records "
            f"({error}). Copy or write it again; a pack that was interrupted leaves no file behind."
        )
    return f"'{path}' is corrupt or unreadable (asked for {what}): {error}. Copy or write it again."


def describe(path: str | os.PathLike) -> list[FieldLayout]:
    """Every dataset in the file, in file order, with its layout (for ``python -m kseq inspect``).

    Example:
        >>> import tempfile, h5py, numpy as np
        >>> path = tempfile.mkdtemp() + "/d.h5"
        >>> with h5py.File(path, "w") as f:
        ...     _ = f.create_dataset("train/x", data=np.zeros((4, 3), "float32"))
        >>> [(d.name, d.shape, d.layout, d.reader) for d in describe(path)]
        [('train/x', (4, 3), 'contiguous', 'direct')]
    """
    with open_hdf5(path) as f:
        return [_layout(path, name, name, f[name]) for name in _dataset_names(f)]


def _dataset_names(group: h5py.Group, prefix: str = "") -> list[str]:
    names = []
    for key, item in group.items():
        if isinstance(item, h5py.Dataset):
            names.append(prefix + key)
        elif isinstance(item, h5py.Group):
            names += _dataset_names(item, f"{prefix}{key}/")
    return names


def _layout(file: str | os.PathLike, name: str, path: str, dset: h5py.Dataset) -> FieldLayout:
    try:
        plist = dset.id.get_create_plist()
        layout = "external" if plist.get_external_count() else _LAYOUTS.get(plist.get_layout(), "virtual")
        filters = [plist.get_filter(i)[3].decode() for i in range(plist.get_nfilters())]
        compression = None
        if dset.compression is not None:
            level = dset.compression_opts
            compression = dset.compression + ("" if level is None else f"({level})")
        elif filters:
            compression = "+".join(filters)
        storage = dset.id.get_storage_size()
        plain = storage > 0 and _mappable(dset.dtype)
        offset = dset.id.get_offset() if layout == "contiguous" and plain else None
        direct = layout == "chunked" and plain and not filters and dset.chunks[1:] == dset.shape[1:]
        chunk_offsets = _chunk_offsets(dset) if direct else None
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        msg = f"Cannot read the layout of field {name!r} (dataset '/{path}') in '{file}': {e}. Write the file again."
        raise SourceError(msg) from e
    return FieldLayout(
        name, path, dset.shape, dset.dtype, layout, dset.chunks, compression, offset, storage, chunk_offsets
    )


def _chunk_offsets(dset: h5py.Dataset) -> np.ndarray | None:
    """Byte offset of every chunk of a dataset chunked along rows only; ``None`` if any is unallocated."""
    rows = dset.chunks[0]
    offsets = np.full(-(-dset.shape[0] // rows), -1, dtype=np.int64)

    def note(info: h5py.h5d.StoreInfo) -> None:
        offsets[info.chunk_offset[0] // rows] = info.byte_offset

    if hasattr(dset.id, "chunk_iter"):
        dset.id.chunk_iter(note)
    else:
        for i in range(dset.id.get_num_chunks()):
            note(dset.id.get_chunk_info(i))
    return None if (offsets < 0).any() else offsets


def _mappable(dtype: np.dtype) -> bool:
    plain = dtype.kind in "biufcS" and dtype.fields is None and dtype.subdtype is None
    return plain and (dtype.kind == "b" or h5py.check_dtype(enum=dtype) is None)


class HDF5Source:
    """A Source over datasets of one HDF5 file, each a field with one row per sample.

    Holds the path, never an open handle: each process opens the file lazily, reopens it when
    its process id changes, and drops it when pickled, so the source works under fork, spawn and
    forkserver. Uncompressed datasets (contiguous, or chunked along rows) are read directly at
    each row's byte offset, through a memory map or, beyond ``resident_mb``, ``os.preadv``, in
    any order; compressed ones in whole chunks with a bounded per-process cache (NOTE [ HDF5 read
    paths ]). For compressed files, train with :class:`kseq.samplers.BlockShuffleSampler` so
    each chunk is read about once an epoch.

    Args:
        path: the HDF5 file (``kseq.pack`` writes one laid out for fast reads).
        fields: ``None`` for every dataset in the file; a dataset path (``"train/images"``); a list
            of them; or ``{field_name: dataset_path}`` to rename.
        cache_mb: the chunk cache of each process, in MiB (blocks of compressed datasets).
        resident_mb: the most MiB of uncompressed fields each process memory-maps. Mapped pages
            count towards its resident memory (RSS); fields beyond the budget are read with
            ``os.preadv`` instead, which keeps RSS flat on files larger than memory.

    Raises:
        SourceError: missing file, not HDF5, truncated or corrupt file, missing field, a group where
            a dataset was expected, unequal first dimensions; each message names file and field.
        StructureError: a scalar or variable-length dataset, or a bad ``cache_mb``/``resident_mb``.

    Example:
        >>> import tempfile, h5py, numpy as np
        >>> path = tempfile.mkdtemp() + "/rows.h5"
        >>> with h5py.File(path, "w") as f:
        ...     _ = f.create_dataset("x", data=np.arange(12.0).reshape(6, 2))
        ...     _ = f.create_dataset("y", data=np.arange(6), chunks=(2,), compression="gzip")
        >>> src = HDF5Source(path)
        >>> src.read([5, 0, 5])["y"].tolist(), src.readers
        ([5, 0, 5], {'x': 'memmap', 'y': 'blocks'})
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fields: str | Sequence[str] | Mapping[str, str] | None = None,
        *,
        cache_mb: float = 128,
        resident_mb: float = 1024,
    ) -> None:
        self.path = Path(path)
        self.cache_bytes = _positive_bytes(cache_mb, "cache_mb")
        self.resident_bytes = _positive_bytes(resident_mb, "resident_mb")
        requested = _field_map(fields)
        with open_hdf5(self.path, None if requested is None else list(requested)) as f:
            names = {n: n for n in _dataset_names(f)} if requested is None else requested
            layouts = {name: _field_layout(self.path, f, name, dpath) for name, dpath in names.items()}
            stat = os.fstat(f.id.get_vfd_handle())
            for layout in layouts.values():
                _check_extent(self.path, f, layout, stat.st_size)
        if not layouts:
            msg = f"'{self.path}' holds no datasets. Expected at least one; write some with kseq.pack."
            raise SourceError(msg)
        self._layouts = layouts
        self._length = _common_length(self.path, layouts)
        self._readers = _choose_readers(layouts, self.resident_bytes)
        self._stamp = _stamp(stat)
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()
        self._proc: _ProcessState | None = None

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{n}: {lay.shape[1:]} {lay.dtype} {self._readers[n]}" for n, lay in self._layouts.items()
        )
        return f"HDF5Source('{self.path}', {self._length} rows, fields={{{fields}}})"

    @property
    def fields(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {name: (lay.shape[1:], lay.native_dtype) for name, lay in self._layouts.items()}

    @property
    def layouts(self) -> dict[str, FieldLayout]:
        """Each field's storage layout and read path."""
        return dict(self._layouts)

    @property
    def block_size(self) -> int | None:
        """Rows per block that is whole chunks of every chunk-read field (their lcm); ``None`` if none is."""
        rows = [lay.block_rows for lay in self._layouts.values() if lay.reader == "blocks"]
        return min(math.lcm(*rows), self._length) if rows else None

    @property
    def block_nbytes(self) -> int:
        """Bytes one block of :attr:`block_size` rows takes in the chunk cache (all chunk-read fields)."""
        size = self.block_size or 0
        return sum(size * lay.row_bytes for lay in self._layouts.values() if lay.reader == "blocks")

    @property
    def readers(self) -> dict[str, str]:
        """How each field is read: ``"memmap"``, ``"pread"`` or ``"blocks"`` (NOTE [ HDF5 read paths ])."""
        return dict(self._readers)

    def read(
        self, indices: Sequence[int] | np.ndarray, fields: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        idx = check_indices(indices, self._length)
        state = self._state()
        state.check()
        return {
            name: state.read(self._layouts[name], self._readers[name], idx)
            for name in check_fields(fields, self._layouts)
        }

    def cache_info(self) -> dict[str, dict[str, int]]:
        """This process's chunk caches, per chunk-read field: ``hits``, ``misses`` (blocks read from the
        file), ``blocks`` held, ``slots`` (capacity in blocks) and ``bytes`` held."""
        return {name: cache.info() for name, cache in self._state().caches.items()}

    def _cache_slots(self) -> dict[str, tuple[FieldLayout, int]]:
        """Cache slots per chunk-read field: each holds the same number of :attr:`block_size` blocks,
        ``cache_bytes // block_nbytes`` of them (at least one block of its own)."""
        size, total = self.block_size or 1, max(1, self.block_nbytes)
        per_block = self.cache_bytes // total
        return {
            name: (lay, max(1, min(math.ceil(per_block * size / lay.block_rows), -(-self._length // lay.block_rows))))
            for name, lay in self._layouts.items()
            if lay.reader == "blocks"
        }

    def close(self) -> None:
        """Drop this process's handles (they are reopened on the next read)."""
        self._proc = None

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.update(_lock=None, _lock_pid=None, _proc=None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock, self._lock_pid = threading.Lock(), os.getpid()

    def _state(self) -> _ProcessState:
        proc, pid = self._proc, os.getpid()
        if proc is not None and proc.pid == pid:
            return proc
        if self._lock_pid != pid:  # a forked copy of the lock may have been held at fork time
            self._lock, self._lock_pid = threading.Lock(), pid
        with self._lock:
            if self._proc is None or self._proc.pid != pid:
                self._proc = _ProcessState(self, pid)
            return self._proc


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
        self._map: mmap.mmap | None = None
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise SourceError(f"{self.what} cannot be opened any more: {e}.") from e
        weakref.finalize(self, os.close, self._fd)
        _check_unchanged(self._fd, self.stamp, self.what)
        self._views: dict[str | int, np.ndarray] = {}
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
        """Rows read with ``os.preadv``: one call per run of consecutive rows, each row straight into
        its place in the output (NOTE [ HDF5 read paths ])."""
        out = np.empty((idx.size, *layout.shape[1:]), layout.dtype)
        row = layout.row_bytes
        if idx.size == 0 or row == 0:
            return out
        offsets = layout.row_offsets(idx)
        order = np.argsort(offsets, kind="stable")
        offsets = offsets[order]
        starts = np.flatnonzero(np.r_[True, np.diff(offsets) != row]).tolist()
        flat = memoryview(out).cast("B")  # type: ignore[arg-type]  # ndarray exports the buffer protocol
        views = [flat[p * row : (p + 1) * row] for p in order.tolist()]
        for first, stop in _read_groups(starts, idx.size, row):
            want = (stop - first) * row
            got = _preadv_all(self._fd, views[first:stop], int(offsets[first]))
            if got != want:
                msg = (
                    f"Field {layout.name!r} (dataset '/{layout.path}') of '{self.path}': read {got} of "
                    f"{want} bytes at byte {int(offsets[first])}. The file is truncated; write it again."
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
                f"Cannot read field {layout.name!r} (dataset '/{layout.path}', rows {start} to "
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
            dset = self._file[layout.path].id
            found = self._datasets[layout.name] = (dset, dset.get_space())
        return found


def _read_groups(starts: Sequence[int], size: int, row: int, max_bytes: int = _MAX_READ) -> Iterator[tuple[int, int]]:
    """``(first, stop)`` slices of rows for one ``preadv`` each: runs of consecutive rows (``starts``,
    among ``size`` rows), split into at most ``_IOV_MAX`` rows and ``max_bytes`` bytes (at least one row)."""
    step = max(1, min(_IOV_MAX, max_bytes // max(1, row)))
    for start, stop in zip(starts, [*starts[1:], size], strict=True):
        for first in range(start, stop, step):
            yield first, min(stop, first + step)


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
        self._where: OrderedDict[int, int] = OrderedDict()  # block -> slot
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
        slot = self._where.popitem(last=False)[1] if len(self._where) >= self.slots else len(self._where)
        start = block * self.rows
        self._where[block] = slot
        load(self.layout, start, self.arena[slot, : min(self.rows, self.n - start)])  # type: ignore[index]
        return slot

    def info(self) -> dict[str, int]:
        block_bytes = self.rows * self.layout.row_bytes
        return {"hits": self.hits, "misses": self.misses, "blocks": len(self._where), "slots": self.slots,
                "bytes": len(self._where) * block_bytes}


def _field_map(fields: str | Sequence[str] | Mapping[str, str] | None) -> dict[str, str] | None:
    if fields is None:
        return None
    if isinstance(fields, str):
        mapping = {fields.strip("/"): fields}
    elif isinstance(fields, Mapping):
        mapping = {str(k): v for k, v in fields.items()}
    elif isinstance(fields, Sequence):
        mapping = {str(f).strip("/"): f for f in fields}
    else:
        mapping = {}
    if not mapping or not all(isinstance(v, str) and v.strip("/") for v in mapping.values()):
        msg = (
            "fields must be None, a dataset path, a list of dataset paths, or {field_name: dataset_path}. "
            f"Received {fields!r:.80}."
        )
        raise StructureError(msg)
    return {name: dpath.strip("/") for name, dpath in mapping.items()}


def _field_layout(file: Path, f: h5py.File, name: str, dpath: str) -> FieldLayout:
    try:
        item = f.get(dpath)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        msg = f"Cannot open field {name!r} (dataset '/{dpath}') in '{file}': {e}. The file may be corrupt."
        raise SourceError(msg) from e
    if item is None:
        msg = (
            f"Field {name!r}: '{file}' has no dataset '/{dpath}'. "
            f"Expected one of {_dataset_names(f)}. Pass fields=[...] with existing dataset paths."
        )
        raise SourceError(msg)
    if not isinstance(item, h5py.Dataset):
        msg = (
            f"Field {name!r}: '/{dpath}' in '{file}' is a group, not a dataset. "
            f"Expected a dataset; the group holds {_dataset_names(item, dpath + '/')}."
        )
        raise SourceError(msg)
    if item.ndim == 0:
        msg = f"Field {name!r} ('/{dpath}' in '{file}') is a scalar; expected an array with one row per sample."
        raise StructureError(msg)
    if item.dtype.hasobject or h5py.check_dtype(vlen=item.dtype) is not None:
        msg = (
            f"Field {name!r} ('/{dpath}' in '{file}') has variable-length elements (dtype {item.dtype}); "
            "expected fixed-size rows. Store strings as fixed-length bytes (kseq.pack does, dtype 'S<n>')."
        )
        raise StructureError(msg)
    return _layout(file, name, dpath, item)


def _common_length(file: Path, layouts: Mapping[str, FieldLayout]) -> int:
    lengths = {name: lay.shape[0] for name, lay in layouts.items()}
    if len(set(lengths.values())) != 1:
        msg = (
            f"The fields of '{file}' have unequal first dimensions: {lengths}. Expected one row per sample "
            "in every field. Pass fields=[...] naming datasets of one length."
        )
        raise SourceError(msg)
    n = next(iter(lengths.values()))
    if n == 0:
        msg = f"The fields {list(layouts)} of '{file}' have 0 rows. Expected at least 1 row."
        raise SourceError(msg)
    return n


def _check_extent(file: Path, f: h5py.File, layout: FieldLayout, size: int) -> None:
    """A field read directly must lie inside the file and agree with h5py on its first row."""
    if layout.reader != "direct" or layout.shape[0] == 0:
        return
    last = layout.row_offsets(np.array([layout.shape[0] - 1]))[0]
    if layout.chunk_offsets is not None:
        last = max(last, layout.chunk_offsets.max() + (layout.chunks[0] - 1) * layout.row_bytes)  # type: ignore[index]
    end = int(last) + layout.row_bytes
    if end > size:
        msg = (
            f"'{file}' is truncated: field {layout.name!r} ('/{layout.path}') ends at byte {end}, "
            f"the file has {size}. Copy or write it again."
        )
        raise SourceError(msg)
    start = int(layout.row_offsets(np.array([0]))[0])
    expected = np.fromfile(file, dtype=layout.dtype, count=math.prod(layout.shape[1:]), offset=start)
    first = f[layout.path][0]
    if not np.array_equal(expected.reshape(layout.shape[1:]), first, equal_nan=layout.dtype.kind in "fc"):
        msg = f"Field {layout.name!r} of '{file}': the memory map disagrees with h5py at row 0. Write the file again."
        raise SourceError(msg)


def _choose_readers(layouts: Mapping[str, FieldLayout], budget: int) -> dict[str, str]:
    """Memory-map direct fields, smallest first, while their bytes fit in ``budget``; pread the rest."""
    readers = {name: "blocks" for name, lay in layouts.items() if lay.reader == "blocks"}
    mapped = 0
    for name, lay in sorted(layouts.items(), key=lambda item: item[1].shape[0] * item[1].row_bytes):
        if name in readers:
            continue
        mapped += lay.shape[0] * lay.row_bytes
        readers[name] = "memmap" if mapped <= budget or not hasattr(os, "preadv") else "pread"
    return {name: readers[name] for name in layouts}


def _positive_bytes(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        msg = f"{name} must be a positive number of MiB. Received {name}={value!r}."
        raise StructureError(msg)
    return int(value * _MB)
