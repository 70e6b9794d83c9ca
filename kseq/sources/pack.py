"""pack: write arrays, a DataFrame, or a stream of batches to an HDF5 file laid out for fast reads.

Layout rules (see NOTE [ HDF5 read paths ] in :mod:`kseq.sources.hdf5`):

* uncompressed (the default) -> contiguous: :class:`~kseq.sources.HDF5Source` reads it through a
  memory map, in any order, as fast as in-memory numpy;
* compressed -> chunked, every field with the same number of rows per chunk (about 1 MiB for
  the widest field), so one block of rows is whole chunks of every field and
  :class:`~kseq.samplers.BlockShuffleSampler` reads each chunk about once an epoch.

# NOTE [ compression ]
gzip, in every HDF5 library, decodes too slowly for training: a block-shuffled epoch over a
gzip file ran at 0.02x the rate of contiguous reads on 2 cores. ``compression="lz4"``, ``"zstd"``
or ``"blosc"`` use the filters of hdf5plugin (a maintained package of HDF5 filter plugins;
the ``compression`` extra): several times faster to decode, at similar ratios on numbers
(benchmarks/README.md, hdf5). HDF5 finds such a filter only in a process that has imported
hdf5plugin, so a file's layout records it (``FieldLayout.plugin``) and every process imports
hdf5plugin before its first read, spawned and forkserver workers included; where it is not
installed, ``HDF5Source`` and ``pack`` raise a SourceError at construction that names it.

A Source (a :class:`~kseq.sources.FileSource` of images, say) is read in blocks of rows by
``workers`` processes, in order, and written as they come: decoding a folder of JPEGs once, in
parallel, makes every later epoch a read of uint8 arrays at memory speed (NOTE [ packing a source ]).

Data bigger than memory is written batch by batch and never held whole. A stream of unknown
length is written to growable (chunked) datasets; if the layout asked for is contiguous it is
then copied into contiguous datasets, block by block. Pass ``length=`` to skip that copy. The file
appears under its name only when complete: an interrupted pack leaves nothing behind.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any, TextIO

import h5py
import numpy as np

from kseq.errors import SourceError, StructureError
from kseq.sources._hdf5_layout import load_filter_plugins
from kseq.sources._pack_source import source_batches
from kseq.sources.array import ArraySource
from kseq.sources.base import Source, is_dataframe
from kseq.sources.hdf5 import HDF5Source
from kseq.validators import integer, one_of

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["pack"]

_CHUNK_BYTES = 1 << 20  # target bytes of one chunk of the widest field
_WRITE_BYTES = 64 << 20  # rows written (or copied) per HDF5 call
# Datasets and chunks of 64 KiB or more start on a 4 KiB page: a 4 KiB row then lies on one page, not two
# (shuffled 4 KiB rows: memmap 1.27x, pread 1.17x the rates of the same file unaligned; benchmarks/README.md).
_ALIGN = {"alignment_threshold": 64 << 10, "alignment_interval": 4096}


def pack(
    path: str | os.PathLike,
    fields: Mapping[str, Any] | pd.DataFrame | Source | Iterable[Mapping[str, Any] | pd.DataFrame],
    *,
    chunks: int | bool | EllipsisType | None = ...,
    compression: str | None = None,
    compression_opts: int | None = None,
    length: int | None = None,
    dtypes: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool | TextIO = True,
    workers: int | None = None,
) -> HDF5Source:
    """Write ``fields`` to the HDF5 file ``path`` and return an :class:`HDF5Source` over it.

    Args:
        path: the file to write.
        fields: ``{name: array}`` (arrays or memmaps of equal length; ``"group/name"`` nests),
            a DataFrame (one field per column), a Source (every field, every row: a
            :class:`~kseq.sources.FileSource` of images is decoded by ``workers`` processes), or an
            iterable of batches, each such a dict or DataFrame with the same fields, trailing shapes
            and dtypes (data bigger than memory).
        chunks: ``...`` (default) contiguous when uncompressed, else chunked with about 1 MiB
            per chunk; ``None``/``False`` contiguous; ``True`` chunked, rows chosen for you; an
            int, rows per chunk (the same for every field).
        compression: ``None``, ``"gzip"``, ``"lzf"``, or a fast codec of the hdf5plugin package
            (``pip install 'kseq[compression]'``): ``"lz4"``, ``"zstd"``, ``"blosc"`` (LZ4 with byte
            shuffle). Needs chunks; every process that reads the file imports hdf5plugin by itself
            (NOTE [ compression ]).
        compression_opts: the level of gzip (0-9), zstd (1-22) or blosc (0-9).
        length: the total rows of an iterable, when known: writes contiguous datasets directly.
        dtypes: ``{name: dtype}`` to store fields with, instead of the first batch's dtypes: for a
            stream whose later batches are wider (``"int64"``, ``"float64"``, ``"S64"`` for strings
            of up to 64 UTF-8 bytes). Every batch must cast to its field's dtype without loss.
        overwrite: replace an existing file.
        progress: a progress bar on stderr (``True``), none (``False``), or a stream to draw it on.
        workers: processes that read a Source (default: one per core for a source whose reads
            are not cheap, such as files; else none); ``0`` reads in this process.

    Strings (numpy ``U`` or DataFrame text columns) are stored as UTF-8 fixed-length bytes.

    Raises:
        StructureError: fields of unequal length, batches that disagree in fields or shapes, a
            batch that does not cast to its field's dtype without loss (``int64`` rows into an
            ``int32`` field), a stream whose length differs from ``length``, or a bad option.
        SourceError: ``path`` exists (without ``overwrite``) or cannot be written.

    Example:
        >>> import tempfile, numpy as np
        >>> path = tempfile.mkdtemp() + "/train.h5"
        >>> src = pack(path, {"x": np.ones((100, 8), "float32"), "y": np.arange(100)}, progress=False)
        >>> len(src), src.layouts["x"].layout, src.read([99])["y"].tolist()
        (100, 'contiguous', [99])
    """
    path = Path(path)
    if path.exists() and not overwrite:
        msg = f"'{path}' already exists. Expected a new file name; pass overwrite=True (--overwrite) to replace it."
        raise SourceError(msg)
    compressed = _check_compression(compression, compression_opts)
    stored = _check_dtypes(dtypes)
    batches, total = _batches(fields, length, workers)
    chunk_rows = _chunk_rows(chunks, compressed)
    contiguous = chunk_rows is None
    bar = _Progress(total, f"pack {path.name}", progress)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    staged = tmp.with_name(tmp.name + ".staged")
    try:
        if contiguous and total is None:
            _write(staged, batches, None, "auto", None, None, bar, stored)
            _copy_contiguous(staged, tmp, _Progress(None, f"lay out {path.name}", progress))
        else:
            _write(tmp, batches, total, chunk_rows, compression, compression_opts, bar, stored)
        os.replace(tmp, path)
        _report_bad_files(fields, path)
    finally:
        for leftover in (tmp, staged):
            leftover.unlink(missing_ok=True)
    return HDF5Source(path)


_IN_H5PY = (None, "gzip", "lzf")  # compressions every h5py decodes; the others are hdf5plugin's
COMPRESSIONS = (*_IN_H5PY, "lz4", "zstd", "blosc")
_LEVELS = {"gzip": (0, 9), "zstd": (1, 22), "blosc": (0, 9)}  # compression_opts: the level, for these only


def _check_compression(compression: str | None, level: int | None) -> bool:
    one_of(compression, "compression", COMPRESSIONS)
    if level is not None and compression not in _LEVELS:
        msg = (
            f"compression_opts is the level of {' / '.join(_LEVELS)}; {compression!r} takes none. "
            f"Received compression_opts={level!r} with {compression=}. Leave compression_opts out."
        )
        raise StructureError(msg)
    if compression in _LEVELS:
        low, high = _LEVELS[compression]
        fix = f"It is the {compression} level."
        integer(level, "compression_opts", minimum=low, maximum=high, optional=True, fix=fix)
    if compression not in _IN_H5PY:
        load_filter_plugins(f"pack(compression={compression!r})")  # at the call, not after the first batch
    return compression is not None


def _filter_options(compression: str | None, level: int | None) -> dict[str, Any]:
    """h5py ``create_dataset`` options for ``compression`` (NOTE [ compression ])."""
    if compression in _IN_H5PY:
        return {"compression": compression, "compression_opts": level}
    hdf5plugin = load_filter_plugins(f"pack(compression={compression!r})")
    if compression == "lz4":
        return dict(hdf5plugin.LZ4())
    if compression == "zstd":
        return dict(hdf5plugin.Zstd(clevel=3 if level is None else level))
    shuffle = hdf5plugin.Blosc.SHUFFLE  # bytes of equal significance together: numbers compress better
    return dict(hdf5plugin.Blosc(cname="lz4", clevel=5 if level is None else level, shuffle=shuffle))


def _check_dtypes(dtypes: Mapping[str, Any] | None) -> dict[str, np.dtype]:
    if dtypes is None:
        return {}
    if not isinstance(dtypes, Mapping):
        msg = f"dtypes must be {{field_name: dtype}}. Received {type(dtypes).__name__}."
        raise StructureError(msg)
    stored = {}
    for name, dtype in dtypes.items():
        try:
            stored[str(name)] = np.dtype(dtype)
        except TypeError as e:
            msg = f"dtypes[{name!r}] = {dtype!r} is not a numpy dtype ({e}). Expected e.g. 'int64', 'float32', 'S64'."
            raise StructureError(msg) from e
        if stored[str(name)].kind not in "biufcS":
            msg = (
                f"dtypes[{name!r}] = {stored[str(name)]} cannot be stored as fixed-size rows. Expected numbers, "
                "booleans or fixed-length bytes ('S<n>', n the longest string in UTF-8 bytes)."
            )
            raise StructureError(msg)
    return stored


def _chunk_rows(chunks: object, compressed: bool) -> int | str | None:
    """``None`` for contiguous, ``"auto"`` for about 1 MiB per chunk, or rows per chunk."""
    if chunks is ...:
        return "auto" if compressed else None
    if chunks is None or chunks is False:
        if compressed:
            msg = "Compression needs a chunked layout. Received chunks=None with compression; pass chunks=True."
            raise StructureError(msg)
        return None
    if chunks is True:
        return "auto"
    return integer(chunks, "chunks", minimum=1, fix="Or pass ... (the default), None, True or False.")


def _batches(
    fields: object, length: int | None, workers: int | None
) -> tuple[Iterator[dict[str, np.ndarray]], int | None]:
    """The rows to write as an iterator of ``{name: array}`` batches, and their total if known."""
    if workers is not None and not isinstance(fields, Source):
        msg = f"workers is for packing a Source. Received workers={workers!r} with {type(fields).__name__}."
        raise StructureError(msg)
    if isinstance(fields, Source) and not isinstance(fields, Mapping) and not is_dataframe(fields):
        if length is not None and length != len(fields):
            msg = f"A Source gives its own row count ({len(fields)}). Received length={length!r}; leave it out."
            raise StructureError(msg)
        encoded = (_batch_arrays(b, i) for i, b in enumerate(source_batches(fields, workers)))
        return encoded, len(fields)
    if is_dataframe(fields):
        fields = _frame_arrays(fields)
    if isinstance(fields, Mapping):
        arrays = ArraySource({k: _storable(k, v) for k, v in fields.items()}).arrays
        total = len(next(iter(arrays.values())))
        if length is not None and length != total:
            msg = (
                f"length is for a stream of batches; arrays give their own row count. Expected length=None or "
                f"length={total}. Received length={length!r}. Leave length out for arrays."
            )
            raise StructureError(msg)
        return _slices(arrays, total), total
    if isinstance(fields, (str, bytes, np.ndarray)) or not isinstance(fields, Iterable):
        msg = (
            "pack expects {name: array}, a DataFrame, or an iterable of such batches. "
            f"Received {type(fields).__name__}. Name a bare array: {{'x': array}}."
        )
        raise StructureError(msg)
    length = integer(length, "length", minimum=1, optional=True, fix="It is the stream's total number of rows.")
    return (_batch_arrays(b, i) for i, b in enumerate(fields)), length


def _report_bad_files(fields: object, path: Path) -> None:
    """Warn, with the count, when a FileSource with ``on_error="skip"`` zeroed rows of ``path``."""
    bad_files = getattr(fields, "bad_files", None)
    bad = bad_files() if callable(bad_files) else []
    if bad:
        shown = ", ".join(f"row {b.row}: '{b.path}'" for b in bad[:5])
        warnings.warn(
            f"pack wrote {len(bad)} bad files of {len(fields)} as zeros with {fields.ok_field}=0 "  # type: ignore[arg-type, attr-defined]
            f"into '{path}' ({shown}{' ...' if len(bad) > 5 else ''}); source.bad_files() lists them.",
            stacklevel=3,
        )


def _slices(arrays: dict[str, np.ndarray], total: int) -> Iterator[dict[str, np.ndarray]]:
    row_bytes = max(1, sum(a[:1].nbytes for a in arrays.values()))
    step = max(1, _WRITE_BYTES // row_bytes)
    for start in range(0, total, step):
        yield {name: np.asarray(a[start : start + step]) for name, a in arrays.items()}


def _batch_arrays(batch: object, number: int) -> dict[str, np.ndarray]:
    if is_dataframe(batch):
        batch = _frame_arrays(batch)
    if not isinstance(batch, Mapping):
        msg = f"Batch {number} of the stream is a {type(batch).__name__}. Expected {{name: array}} or a DataFrame."
        raise StructureError(msg)
    return {str(k): _storable(k, v) for k, v in ArraySource(batch).arrays.items()}


def _storable(name: object, value: object) -> np.ndarray:
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind == "U":
        return np.char.encode(array, "utf-8")
    if array.dtype.kind not in "biufcS":
        msg = (
            f"Field {name!r} has dtype {array.dtype}, which HDF5 cannot store as fixed-size rows. "
            "Expected numbers, booleans or strings; convert it (e.g. datetimes with .astype('int64'))."
        )
        raise StructureError(msg)
    return array


def _write(
    target: Path,
    batches: Iterator[dict[str, np.ndarray]],
    total: int | None,
    chunk_rows: int | str | None,
    compression: str | None,
    level: int | None,
    bar: _Progress,
    dtypes: Mapping[str, np.dtype],
) -> None:
    written = 0
    # The first batch before the file is open: a stream that starts worker processes (a FileSource's readers, a
    # kseq dataset's pool) forks them without the open file, whose lock a forked child would otherwise keep
    # holding after pack closed it, so that opening the packed file failed with "unable to lock file".
    first = next(batches, None)
    try:
        with h5py.File(target, "w", track_order=True, **_ALIGN) as f:
            datasets: dict[str, h5py.Dataset] = {}
            for number, batch in enumerate(itertools.chain([] if first is None else [first], batches)):
                if not datasets:
                    datasets = _create(f, batch, total, chunk_rows, compression, level, dtypes)
                _check_batch(batch, datasets, number)
                n = len(next(iter(batch.values())))
                if total is not None and written + n > total:
                    msg = f"The stream has more rows than length={total} (batch {number} ends at row {written + n})."
                    raise StructureError(msg)
                for name, dset in datasets.items():
                    if total is None:
                        dset.resize(written + n, axis=0)
                    dset[written : written + n] = batch[name]
                written += n
                bar.update(written)
    except OSError as e:
        msg = f"Cannot write '{target}' (fields so far: {written} rows): {e}."
        raise SourceError(msg) from e
    bar.close()
    if written == 0 or (total is not None and written != total):
        msg = f"The stream gave {written} rows; expected {total or 'at least 1'}. Nothing was written."
        raise StructureError(msg)


def _create(
    f: h5py.File,
    first: dict[str, np.ndarray],
    total: int | None,
    chunk_rows: int | str | None,
    compression: str | None,
    level: int | None,
    dtypes: Mapping[str, np.dtype],
) -> dict[str, h5py.Dataset]:
    unknown = sorted(set(dtypes) - set(first))
    if unknown:
        msg = f"dtypes names {unknown}, which are not fields. Expected names among {list(first)}."
        raise StructureError(msg)
    widest = max(max(1, a[:1].nbytes) for a in first.values())
    rows = max(1, _CHUNK_BYTES // widest) if chunk_rows == "auto" else chunk_rows
    if rows is None and total is None:
        rows = max(1, _CHUNK_BYTES // widest)
    if rows is not None and total is not None:
        rows = min(rows, total)
    datasets = {}
    for name, array in first.items():
        trailing = array.shape[1:]
        datasets[name] = _create_dataset(
            f,
            name,
            shape=(total or 0, *trailing),
            maxshape=None if total else (None, *trailing),
            dtype=dtypes.get(name, array.dtype),
            chunks=None if rows is None else (rows, *trailing),
            **_filter_options(compression, level),
        )
    return datasets


def _create_dataset(f: h5py.File, name: str, **options: Any) -> h5py.Dataset:
    """``f.create_dataset`` whose intermediate groups also keep their members in insertion order."""
    parent = f
    *groups, leaf = name.strip("/").split("/")
    for group in groups:
        parent = parent[group] if group in parent else parent.create_group(group, track_order=True)
    return parent.create_dataset(leaf, **options)


def _check_batch(batch: dict[str, np.ndarray], datasets: Mapping[str, h5py.Dataset], number: int) -> None:
    if list(batch) != list(datasets):
        msg = f"Batch {number} has fields {list(batch)}; the first batch had {list(datasets)}. Expected the same."
        raise StructureError(msg)
    for name, dset in datasets.items():
        array = batch[name]
        if array.shape[1:] != dset.shape[1:]:
            msg = (
                f"Field {name!r}: batch {number} has rows of shape {array.shape[1:]}; the first batch had "
                f"{dset.shape[1:]}. Expected one shape per field; pad rows to a common shape."
            )
            raise StructureError(msg)
        if array.dtype.kind == "S" and array.dtype.itemsize > dset.dtype.itemsize:
            msg = (
                f"Field {name!r}: batch {number} has strings of {array.dtype.itemsize} bytes; the first batch "
                f"fixed {dset.dtype.itemsize}. Pass dtypes={{{name!r}: 'S<n>'}} with n the longest string in "
                "UTF-8 bytes, or cast the column to one width first, e.g. .astype('S64')."
            )
            raise StructureError(msg)
        if not np.can_cast(array.dtype, dset.dtype, casting="safe"):
            msg = (
                f"Field {name!r}: batch {number} has dtype {array.dtype}, which does not fit the field's "
                f"{dset.dtype} (fixed by the first batch or dtypes=) without loss. Make the first batch the "
                f"wider dtype, or pass dtypes={{{name!r}: '{np.result_type(array.dtype, dset.dtype)}'}}."
            )
            raise StructureError(msg)


def _copy_contiguous(source: Path, target: Path, bar: _Progress) -> None:
    """Copy every dataset of ``source`` into contiguous datasets of ``target``, block by block."""
    with h5py.File(source, "r") as src, h5py.File(target, "w", track_order=True, **_ALIGN) as dst:
        names = _in_file_order(src)
        total = src[names[0]].shape[0]
        bar.total = total * len(names)
        done = 0
        for name in names:
            dset = src[name]
            out = _create_dataset(dst, name, shape=dset.shape, dtype=dset.dtype)
            step = max(1, _WRITE_BYTES // max(1, math.prod(dset.shape[1:]) * dset.dtype.itemsize))
            for start in range(0, total, step):
                out[start : start + step] = dset[start : start + step]
                done += min(step, total - start)
                bar.update(done)
    bar.close()


def _in_file_order(group: h5py.Group, prefix: str = "") -> list[str]:
    names: list[str] = []
    for key, item in group.items():
        names += [prefix + key] if isinstance(item, h5py.Dataset) else _in_file_order(item, f"{prefix}{key}/")
    return names


class _Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second.

    Not ``keras.utils.Progbar``: ``python -m kseq pack`` is framework-free, and importing Keras
    imports its backend, measured at seconds and hundreds of MB against about a second for this
    module (benchmarks/README.md, "core"). Not tqdm: not a kseq dependency.
    """

    def __init__(self, total: int | None, label: str, enabled: bool | TextIO) -> None:
        if not isinstance(enabled, (bool, np.bool_)) and not callable(getattr(enabled, "write", None)):
            msg = f"progress must be True, False or a text stream (with .write). Received progress={enabled!r:.80}."
            raise StructureError(msg)
        self.total, self.label = total, label
        self.stream: TextIO | None = (sys.stderr if enabled is True else enabled) or None  # type: ignore[assignment]
        self.start = self.last = time.perf_counter()
        self.done = self.drawn = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if self.stream is not None and now - self.last >= 0.1:
            self.last = now
            self._draw(now)

    def close(self) -> None:
        if self.stream is not None:
            if self.drawn != self.done or self.done == 0:
                self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        if self.total:
            filled = int(30 * self.done / self.total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {self.done:,}/{self.total:,} rows"
        else:
            bar = f"{self.done:,} rows"
        self.drawn = self.done
        self.stream.write(f"\r{self.label}: {bar}, {rate:,.0f} rows/s")  # type: ignore[union-attr]
        self.stream.flush()  # type: ignore[union-attr]


def _frame_arrays(frame: Any) -> dict[str, np.ndarray]:
    from kseq.sources.dataframe import DataFrameSource  # pandas: the caller passed a DataFrame

    return DataFrameSource(frame).arrays
