"""How an HDF5 file's datasets are stored: :class:`FieldLayout`, :func:`field_layouts`, :func:`open_hdf5`.

Re-exported by :mod:`kseq.sources.hdf5`, which holds NOTE [ HDF5 read paths ].
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np

from kseq._renames import warn_renamed
from kseq.errors import KseqError, SourceError

__all__ = ["PLUGIN_FILTERS", "FieldLayout", "field_layouts", "load_filter_plugins", "open_hdf5"]

_LAYOUTS = {h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked", h5py.h5d.COMPACT: "compact"}
# Filters of the hdf5plugin package, by their registered id: a short name for tables and messages.
_BUILT_IN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}  # deflate, shuffle, fletcher32, szip, nbit, scaleoffset; h5py's lzf
PLUGIN_FILTERS = {32001: "blosc", 32004: "lz4", 32015: "zstd", 32026: "blosc2", 32008: "bitshuffle", 307: "bzip2"}
_TARGET_BLOCK_BYTES = 1 << 20  # block rows for datasets without chunks (compact, external, unallocated)


@dataclass(frozen=True, eq=False)
class FieldLayout:
    """How one HDF5 dataset is stored, and how kseq can read it.

    ``name`` is the field's name, ``dataset`` the dataset's path inside the file (the file's own
    path is :attr:`HDF5Source.path`). ``offset`` is the byte offset of a contiguous dataset's rows;
    ``chunk_offsets[k]`` that of chunk ``k`` of an unfiltered dataset chunked along rows only.
    Either makes it :attr:`direct`: read at byte offsets (``"memmap"`` or ``"pread"``), else in
    ``"blocks"``; NOTE [ HDF5 read paths ] in :mod:`kseq.sources.hdf5`.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "f.h5")
        >>> with h5py.File(path, "w") as f:
        ...     _ = f.create_dataset("g/x", data=np.zeros((4, 2), "float32"))
        ...     _ = f.create_dataset("y", data=np.zeros(40), chunks=(8,), compression="gzip")
        >>> [(lay.name, lay.layout, lay.chunks, lay.direct) for lay in field_layouts(path)]
        [('g/x', 'contiguous', None, True), ('y', 'chunked', (8,), False)]
    """

    name: str
    dataset: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str
    chunks: tuple[int, ...] | None
    compression: str | None
    offset: int | None
    storage_bytes: int
    chunk_offsets: np.ndarray | None = None
    plugin: bool = False  # decoded by a filter that hdf5plugin registers (each process imports it to read)

    @property
    def direct(self) -> bool:
        """Rows can be read at their byte offsets (``"memmap"`` or ``"pread"``); else only in ``"blocks"``."""
        return self.offset is not None or self.chunk_offsets is not None

    @property
    def path(self) -> str:
        """Deprecated: the dataset's path inside the file is :attr:`dataset` (``path`` is a file's, elsewhere)."""
        warn_renamed("FieldLayout.path", "FieldLayout.dataset")
        return self.dataset

    @property
    def reader(self) -> str:
        """Deprecated: ``"direct"`` or ``"blocks"``. Use :attr:`direct`, or ``HDF5Source.readers`` for the
        read path of each field (``"memmap"``, ``"pread"`` or ``"blocks"``)."""
        warn_renamed("FieldLayout.reader", "FieldLayout.direct (or HDF5Source.readers)")
        return "direct" if self.direct else "blocks"

    def row_offsets(self, idx: np.ndarray) -> np.ndarray:
        """The byte offset in the file of each row in ``idx`` (:attr:`direct` layouts only)."""
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


def field_layouts(path: str | os.PathLike) -> list[FieldLayout]:
    """Every dataset in the file, in file order, with its layout (for ``python -m kseq inspect``).

    Example:
        >>> import tempfile, h5py, numpy as np
        >>> path = tempfile.mkdtemp() + "/d.h5"
        >>> with h5py.File(path, "w") as f:
        ...     _ = f.create_dataset("train/x", data=np.zeros((4, 3), "float32"))
        >>> [(d.name, d.dataset, d.shape, d.layout, d.direct) for d in field_layouts(path)]
        [('train/x', 'train/x', (4, 3), 'contiguous', True)]
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


def _layout(file: str | os.PathLike, name: str, dataset: str, dset: h5py.Dataset) -> FieldLayout:
    try:
        plist = dset.id.get_create_plist()
        layout = "external" if plist.get_external_count() else _LAYOUTS.get(plist.get_layout(), "virtual")
        ids = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        filters = [PLUGIN_FILTERS.get(i) or plist.get_filter(k)[3].decode() for k, i in enumerate(ids)]
        compression = None
        if dset.compression is not None:
            level = dset.compression_opts
            compression = dset.compression + ("" if level is None else f"({level})")
        elif filters:
            compression = "+".join(filters)
        plugin = _check_filters(file, name, dataset, ids, filters)
        storage = dset.id.get_storage_size()
        plain = storage > 0 and _mappable(dset.dtype)
        offset = dset.id.get_offset() if layout == "contiguous" and plain else None
        direct = layout == "chunked" and plain and not filters and dset.chunks[1:] == dset.shape[1:]
        chunk_offsets = _chunk_offsets(dset) if direct else None
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        msg = f"Cannot read the layout of field {name!r} (dataset '/{dataset}') in '{file}': {e}. Write the file again."
        raise SourceError(msg) from e
    return FieldLayout(
        name, dataset, dset.shape, dset.dtype, layout, dset.chunks, compression, offset, storage, chunk_offsets, plugin
    )


def load_filter_plugins(why: str) -> ModuleType:
    """Import hdf5plugin, which registers its HDF5 filters (LZ4, Zstd, Blosc, ...) in this process."""
    try:
        import hdf5plugin
    except ImportError as e:
        msg = (
            f"{why} needs the HDF5 filters of the hdf5plugin package, which is not installed ({e}). "
            "Install it: pip install hdf5plugin (or pip install 'kseq[compression]')."
        )
        raise SourceError(msg) from e
    return hdf5plugin


def _check_filters(file: str | os.PathLike, name: str, dataset: str, ids: list[int], filters: list[str]) -> bool:
    """Whether reading needs hdf5plugin's filters (loaded here if so); refuse a filter nothing here can decode.
    Any filter but HDF5's own and h5py's LZF needs them, wherever this process found them."""
    plugin = [(i, f) for i, f in zip(ids, filters, strict=True) if i not in _BUILT_IN_FILTERS]
    if not plugin:
        return False
    what = f"Field {name!r} (dataset '/{dataset}') of '{file}', compressed with {', '.join(f for _, f in plugin)},"
    try:
        load_filter_plugins(what)
    except SourceError:
        if all(h5py.h5z.filter_avail(i) for i, _ in plugin):
            return False  # found on HDF5_PLUGIN_PATH, which worker processes inherit
        raise
    missing = [(i, f) for i, f in plugin if not h5py.h5z.filter_avail(i)]
    if missing:
        still = [f"{f} (filter id {i})" for i, f in missing]
        msg = (
            f"{what} cannot be decoded here: no HDF5 filter for {', '.join(still)}, not even in hdf5plugin. "
            "Install the filter's plugin (HDF5_PLUGIN_PATH), or write the file again with another compression."
        )
        raise SourceError(msg)
    return True


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
