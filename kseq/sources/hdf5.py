"""HDF5Source: rows of HDF5 datasets, read through a memory map or in whole chunks.

# NOTE [ HDF5 read paths ]
The read path (the reader) is chosen per dataset, once, at construction (``src.readers``), from one
vocabulary, :data:`READERS`. ``FieldLayout.direct`` says whether a dataset's rows can be read at
their byte offsets (``memmap`` or ``pread``); a dataset that is not direct is read in ``blocks``.

* ``memmap``: contiguous, uncompressed, allocated, plain dtype. HDF5 reports where the raw data
  starts (``dataset.id.get_offset()``), so rows are numpy fancy indexing over a read-only memory
  map of the file (what ``np.memmap`` builds, without its subclass): no h5py call, no global h5py
  lock, any order, as fast as in-memory numpy once the page cache is warm. Chunked datasets
  without filters whose chunks hold whole rows are read the same way: each chunk's offset is
  recorded at construction (``chunk_iter``), and rows are gathered at their byte offsets.
* ``pread``: the same datasets beyond ``resident_mb``. Mapped file pages count towards a
  process's resident memory (RSS), and recent kernels map whole page-cache folios (a random 4 KiB
  row can map a megabyte), so a map over a file larger than memory grows RSS to the file's size.
  Releasing mapped pages (``madvise``) after every batch does not help: one fault maps a whole
  large folio, so RSS still peaked at 311 MB over a 400 MB file. So fields that do not fit the
  budget (smallest are mapped first) are read with one read per run of consecutive rows, each
  row straight into its place in the batch, a batch's runs all in one ``io_submit`` (NOTE
  [ batched reads ] in :mod:`kseq.sources._aio`; ``os.preadv`` per run where Linux AIO is not
  there), into buffers kseq lends again once a batch is gone (NOTE [ recycled pread outputs ]):
  RSS stays flat. Reading alone is about a third as fast as from a populated map; through ``fit``
  the step hides the difference (0.9-1.1x the map's epochs, 32 MB of RSS growth against 2 GB:
  benchmarks/README.md, hdf5).
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
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from kseq._renames import renamed
from kseq.errors import SourceError, StructureError
from kseq.sources._hdf5_layout import FieldLayout, _dataset_names, _layout, field_layouts, open_hdf5
from kseq.sources._hdf5_read import _preadv_all as _preadv_all  # tests import it from here
from kseq.sources._hdf5_read import _ProcessState, _stamp
from kseq.sources._hdf5_read import _read_runs as _read_runs  # tests import it from here
from kseq.sources.base import check_fields, check_indices
from kseq.validators import positive_number

__all__ = ["READERS", "FieldLayout", "HDF5Source", "Reader", "choose_readers", "field_layouts", "open_hdf5"]

Reader = Literal["memmap", "pread", "blocks"]
READERS: tuple[Reader, ...] = ("memmap", "pread", "blocks")  # NOTE [ HDF5 read paths ]
RESIDENT_MB = 1024  # HDF5Source's default resident_mb

_MB = 1 << 20

# describe() was renamed field_layouts(): kseq.batching has a describe() that returns a string.
__getattr__ = renamed(__name__, {"describe": "field_layouts"}, globals())


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

    cheap_row_reads = True  # a repeated or unsorted row costs a copy (Source: optional capability)

    def __init__(
        self,
        path: str | os.PathLike,
        fields: str | Sequence[str] | Mapping[str, str] | None = None,
        *,
        cache_mb: float = 128,
        resident_mb: float = RESIDENT_MB,
    ) -> None:
        self.path = Path(path)
        self.cache_bytes = _mib(cache_mb, "cache_mb")
        self.resident_bytes = _mib(resident_mb, "resident_mb")
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
        self._readers = choose_readers(layouts, self.resident_bytes)
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
        rows = [lay.block_rows for lay in self._layouts.values() if not lay.direct]
        return min(math.lcm(*rows), self._length) if rows else None

    @property
    def block_nbytes(self) -> int:
        """Bytes one block of :attr:`block_size` rows takes in the chunk cache (all chunk-read fields)."""
        size = self.block_size or 0
        return sum(size * lay.row_bytes for lay in self._layouts.values() if not lay.direct)

    @property
    def readers(self) -> dict[str, Reader]:
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
            if not lay.direct
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
    if not layout.direct or layout.shape[0] == 0:
        return
    last = layout.row_offsets(np.array([layout.shape[0] - 1]))[0]
    if layout.chunk_offsets is not None:
        last = max(last, layout.chunk_offsets.max() + (layout.chunks[0] - 1) * layout.row_bytes)  # type: ignore[index]
    end = int(last) + layout.row_bytes
    if end > size:
        msg = (
            f"'{file}' is truncated: field {layout.name!r} ('/{layout.dataset}') ends at byte {end}, "
            f"the file has {size}. Copy or write it again."
        )
        raise SourceError(msg)
    start = int(layout.row_offsets(np.array([0]))[0])
    expected = np.fromfile(file, dtype=layout.dtype, count=math.prod(layout.shape[1:]), offset=start)
    first = f[layout.dataset][0]
    if not np.array_equal(expected.reshape(layout.shape[1:]), first, equal_nan=layout.dtype.kind in "fc"):
        msg = f"Field {layout.name!r} of '{file}': the memory map disagrees with h5py at row 0. Write the file again."
        raise SourceError(msg)


def choose_readers(layouts: Mapping[str, FieldLayout], budget: int = RESIDENT_MB * _MB) -> dict[str, Reader]:
    """Each field's reader: ``blocks`` unless direct; direct fields memory-mapped, smallest first, while
    their bytes fit in ``budget`` (bytes), the rest ``pread`` (NOTE [ HDF5 read paths ])."""
    readers: dict[str, Reader] = {name: "blocks" for name, lay in layouts.items() if not lay.direct}
    mapped = 0
    for name, lay in sorted(layouts.items(), key=lambda item: item[1].shape[0] * item[1].row_bytes):
        if name in readers:
            continue
        mapped += lay.shape[0] * lay.row_bytes
        readers[name] = "memmap" if mapped <= budget or not hasattr(os, "preadv") else "pread"
    return {name: readers[name] for name in layouts}


def _mib(value: object, argument: str) -> int:
    return int(positive_number(value, argument, fix=f"{argument} is a size in MiB.") * _MB)
