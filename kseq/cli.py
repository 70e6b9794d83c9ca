"""``kseq`` (or ``python -m kseq``): the command line (``demo``, ``pack``, ``inspect``, ``profile``).

``pack`` and ``inspect`` are the framework-free core (numpy, h5py, pandas): they
answer without importing Keras or a backend. ``demo`` trains a model and ``profile`` times
one, so only their functions import Keras (and kseq's Keras layer), when they run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kseq.errors import KseqError, SourceError, StructureError
from kseq.sources.hdf5 import FieldLayout, choose_readers, field_layouts
from kseq.sources.pack import COMPRESSIONS, pack

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["inspect", "main", "read_inputs"]

_ARRAYS = (".npy", ".npz")
_TABLES = (".csv", ".parquet", ".pq")
_BATCH_ROWS = 65536  # table rows read (and written) at a time


def _digits() -> dict[str, np.ndarray]:
    """The digits (1,797 real 8x8 scans of the UCI set, as scikit-learn ships them; kseq/data/DIGITS.md) as named
    fields, read from the copy in the package: the demo needs no scikit-learn."""
    from importlib.resources import files

    with files("kseq").joinpath("data/digits.npz").open("rb") as f, np.load(f) as archive:
        images, target = archive["images"], archive["target"]
    pixels = (images / 16.0).astype("float32")[..., None]
    profile = np.concatenate([pixels.sum(axis=1), pixels.sum(axis=2)], axis=1).reshape(len(pixels), 16) / 8.0
    return {"pixels": pixels, "profile": profile.astype("float32"), "digit": target.astype("int64")}


def _model() -> Any:
    import keras  # here, not at the top: only the demo needs Keras; pack and inspect stay framework-free

    pixels = keras.Input((8, 8, 1), name="pixels")
    profile = keras.Input((16,), name="profile")
    h = keras.layers.Conv2D(16, 3, activation="relu")(pixels)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Concatenate()([h, keras.layers.Dense(16, activation="relu")(profile)])
    out = keras.layers.Dense(10, activation="softmax", name="digit")(h)
    model = keras.Model([pixels, profile], out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def demo(epochs: int = 8, batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Train a two-input digit classifier through MultiInputDataset and print a table."""
    import keras  # as in _model

    from kseq.datasets import MultiInputDataset  # kseq's Keras layer, for the demo only

    keras.utils.set_random_seed(seed)
    data = _digits()
    order = np.random.default_rng(seed).permutation(len(data["digit"]))
    cut = int(0.8 * len(order))
    train = {k: v[order[:cut]] for k, v in data.items()}
    test = {k: v[order[cut:]] for k, v in data.items()}
    inputs = ["pixels", "profile"]
    train_ds = MultiInputDataset(train, inputs=inputs, targets="digit", batch_size=batch_size, seed=seed)
    test_ds = MultiInputDataset(test, inputs=inputs, targets="digit", batch_size=batch_size, shuffle=False)
    model = _model()
    train_ds.check(model)  # read-only: prints what this list-built model needs
    train_view, test_view = train_ds.for_model(model), test_ds.for_model(model)  # the batches in its order
    print(f"kseq demo: digits, {cut} train / {len(order) - cut} test, inputs pixels (8,8,1) + profile (16,)")
    print(f"{'epoch':>5} {'batches/s':>10} {'loss':>8} {'train acc':>10} {'test acc':>9}")
    row: dict[str, float] = {}
    for epoch in range(epochs):
        start = time.perf_counter()
        hist = model.fit(train_view, epochs=1, verbose=0, shuffle=False).history
        rate = len(train_view) / (time.perf_counter() - start)
        test_acc = model.evaluate(test_view, verbose=0, return_dict=True)["accuracy"]
        row = {"batches_per_s": rate, "loss": hist["loss"][-1], "accuracy": hist["accuracy"][-1], "test": test_acc}
        print(f"{epoch + 1:>5} {rate:>10.0f} {row['loss']:>8.4f} {row['accuracy']:>10.3f} {test_acc:>9.3f}")
    return row


def read_inputs(specs: Sequence[str], *, batch_rows: int = _BATCH_ROWS) -> tuple[Any, int | None]:
    """Open ``pack``'s inputs lazily: ``[name=]file.npy`` (memory-mapped), ``[name=]file.npz`` (its
    arrays, under ``name/`` if given), or one CSV or Parquet table (``[name=]``: its columns under
    ``name/``), read ``batch_rows`` rows at a time. Returns what :func:`kseq.pack` takes, and the
    total rows when known without reading everything (``None`` for CSV).

    A table is read twice: a first pass fixes each column's dtype over the whole file (the widest
    number type any batch has; strings as ``S<n>``, ``n`` the longest in UTF-8 bytes), and every
    batch is cast to those dtypes, so a later batch with longer strings or a decimal point fits.

    Raises:
        StructureError: a table with other inputs, an unsupported file type, or two inputs that
            give one field name (``a/x.npy b/x.npy``; rename one with ``name=``).
        SourceError: an input file that does not exist.

    Example:
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> np.save(os.path.join(folder, "x.npy"), np.arange(6).reshape(3, 2))
        >>> fields, rows = read_inputs([os.path.join(folder, "x.npy"), "y=" + os.path.join(folder, "x.npy")])
        >>> sorted(fields), fields["y"].shape, rows
        (['x', 'y'], (3, 2), None)
    """
    parsed = [_parse_spec(spec) for spec in specs]
    tables = [(name, path) for name, path in parsed if path.suffix.lower() in _TABLES]
    if tables and len(parsed) > 1:
        msg = (
            f"A CSV or Parquet input must be the only input. Received {list(specs)}. "
            "Pack tables and arrays into separate files, or convert the arrays into table columns."
        )
        raise StructureError(msg)
    if tables:
        return _read_table(*tables[0], batch_rows)
    fields: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for spec, (name, path) in zip(specs, parsed, strict=True):
        if path.suffix.lower() == ".npy":
            found = {name or path.stem: np.load(path, mmap_mode="r")}
        else:
            with np.load(path) as archive:
                found = {f"{name}/{key}" if name else key: archive[key] for key in archive.files}
        for field, array in found.items():
            if field in fields:
                msg = (
                    f"Field {field!r} comes from two inputs: '{origin[field]}' and '{spec}'. Expected one "
                    f"input per field name. Rename one with name=, e.g. 'other_{field.split('/')[0]}={spec}'."
                )
                raise StructureError(msg)
            fields[field], origin[field] = array, spec
    return fields, None


def _parse_spec(spec: str) -> tuple[str | None, Path]:
    head, sep, rest = spec.partition("=")
    name, path = (head, Path(rest)) if sep and not Path(spec).exists() else (None, Path(spec))
    if path.suffix.lower() not in _ARRAYS + _TABLES:
        msg = f"Input '{spec}': unsupported file type {path.suffix!r}. Expected one of {list(_ARRAYS + _TABLES)}."
        raise StructureError(msg)
    if not path.is_file():
        msg = f"Input file not found: '{path}' (field {name or path.stem!r}). Expected an existing file."
        raise SourceError(msg)
    return name, path


def _read_table(name: str | None, path: Path, batch_rows: int) -> tuple[Iterator[dict[str, np.ndarray]], int | None]:
    if path.suffix.lower() == ".csv":
        import pandas as pd  # here: only tables need pandas, so inspect and array packing start faster

        dtypes, text = _csv_dtypes(path, batch_rows)
        frames = pd.read_csv(path, chunksize=batch_rows, dtype=dict.fromkeys(text, str))
        return _cast(frames, dtypes, name, path), None
    try:
        import pyarrow.parquet as pq  # optional: Parquet input only
    except ImportError as e:
        msg = f"Reading Parquet ('{path}') needs pyarrow. Install it: pip install pyarrow."
        raise StructureError(msg) from e
    table = pq.ParquetFile(path)
    dtypes = _parquet_dtypes(table, batch_rows)
    frames = (batch.to_pandas() for batch in table.iter_batches(batch_size=batch_rows))
    return _cast(frames, dtypes, name, path), table.metadata.num_rows


def _cast(
    frames: Iterable[pd.DataFrame], dtypes: dict[str, np.dtype], name: str | None, path: Path
) -> Iterator[dict[str, np.ndarray]]:
    """Each batch as ``{field: array}`` in the dtypes fixed over the whole table (UTF-8 for text)."""
    from kseq.sources.dataframe import DataFrameSource  # pandas, as in _read_table

    for frame in frames:
        arrays = DataFrameSource(frame).arrays
        batch = {}
        for column, array in arrays.items():
            dtype = dtypes[column]
            value = np.char.encode(array, "utf-8") if array.dtype.kind == "U" else array
            if not np.can_cast(value.dtype, dtype, casting="safe"):
                msg = (
                    f"Column {column!r} of '{path}': a batch of dtype {value.dtype} does not fit {dtype}, the "
                    "dtype of the whole column found by a first pass. Was the file changed while it was packed?"
                )
                raise StructureError(msg)
            batch[f"{name}/{column}" if name else column] = value.astype(dtype, copy=False)
        yield batch


def _csv_dtypes(path: Path, batch_rows: int) -> tuple[dict[str, np.dtype], list[str]]:
    """A first pass over a CSV file: each column's dtype over all batches, and its text columns."""
    import pandas as pd  # as in _read_table

    numeric: dict[str, np.dtype] = {}
    text: set[str] = set()
    for frame in pd.read_csv(path, chunksize=batch_rows):
        for column in frame.columns:
            kind = frame[column].dtype
            if isinstance(kind, np.dtype) and kind.kind in "biuf":
                numeric[column] = np.result_type(numeric.get(column, kind), kind)
            else:
                text.add(column)
    widths = dict.fromkeys(text, 1)
    if text:  # again, the text columns only, read as text (a column may hold numbers in some batches)
        for frame in pd.read_csv(path, chunksize=batch_rows, usecols=sorted(text), dtype=str):
            for column in text:
                longest = frame[column].dropna().str.encode("utf-8").str.len().max()
                widths[column] = max(widths[column], 0 if pd.isna(longest) else int(longest))
    dtypes = {column: np.dtype(f"S{width}") for column, width in widths.items()}
    return {**numeric, **dtypes}, sorted(text)


def _parquet_dtypes(table: Any, batch_rows: int) -> dict[str, np.dtype]:
    """A first pass over a Parquet file: strings' longest UTF-8 length; integers with nulls (which
    pandas turns into float64); every other column's dtype from the schema."""
    import pyarrow as pa  # optional, as above
    import pyarrow.compute as pc

    schema = table.schema_arrow
    texts = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    widths = dict.fromkeys(texts, 1)
    nulls: set[str] = set()
    for batch in table.iter_batches(batch_size=batch_rows):
        for column, values in zip(batch.schema.names, batch.columns, strict=True):
            if column in widths:
                longest = pc.max(pc.binary_length(values)).as_py()
                widths[column] = max(widths[column], longest or 0)
            elif values.null_count:
                nulls.add(column)
    dtypes = {}
    for f in schema:
        if f.name in widths:
            dtypes[f.name] = np.dtype(f"S{widths[f.name]}")
        else:
            dtype = np.dtype(f.type.to_pandas_dtype())
            dtypes[f.name] = np.dtype("float64") if f.name in nulls and dtype.kind in "iu" else dtype
    return dtypes


def inspect(path: str | Path) -> str:
    """A table of every dataset in an HDF5 file: shape, dtype, layout, chunks, compression, size, and the
    reader a default ``HDF5Source`` would use (``memmap``, ``pread`` or ``blocks``: NOTE [ HDF5 read paths ]).

    Example:
        >>> import os, tempfile
        >>> from kseq.sources.pack import COMPRESSIONS, pack
        >>> path = os.path.join(tempfile.mkdtemp(), "f.h5")
        >>> _ = pack(path, {"x": np.zeros((4, 2), "float32")}, progress=False)
        >>> print(inspect(path))
        /...f.h5: ... kB, 1 datasets, 4 rows
        field  shape   dtype    layout      chunks  compression  stored  read as
        x      (4, 2)  float32  contiguous  -       -            32 B    memmap
    """
    layouts = field_layouts(path)
    size = Path(path).stat().st_size
    if not layouts:
        return f"{path}: {_size(size)}, 0 datasets\nnote: no datasets to read; write some with `python -m kseq pack`"
    lengths = {lay.shape[0] for lay in layouts if lay.shape}
    many = "first dimensions differ" if lengths else "only scalars"
    rows = f"{min(lengths):,} rows" if len(lengths) == 1 else many
    lines = [f"{path}: {_size(size)}, {len(layouts)} datasets, {rows}"]
    header = ("field", "shape", "dtype", "layout", "chunks", "compression", "stored", "read as")
    readers = choose_readers({lay.name: lay for lay in layouts if lay.shape})
    table = [header, *(_row(lay, readers.get(lay.name, "-")) for lay in layouts)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    if len(lengths) > 1:
        lines.append("note: datasets differ in length; choose fields of one length: HDF5Source(path, fields=[...])")
    scalars = [lay.name for lay in layouts if not lay.shape]
    if scalars:
        lines.append(f"note: scalar datasets {scalars} have no rows; HDF5Source reads arrays with one row per sample")
    return "\n".join(lines)


def _row(lay: FieldLayout, reader: str) -> tuple[str, ...]:
    chunks = "-" if lay.chunks is None else str(lay.chunks)
    return (lay.name, str(lay.shape), str(lay.dtype), lay.layout, chunks, lay.compression or "-",
            _size(lay.storage_bytes), reader)


def _size(count: int) -> str:
    nbytes = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def _chunks(value: str) -> Any:
    if value in ("auto", "none"):
        return ... if value == "auto" else None
    if value.isdigit() and int(value) > 0:
        return int(value)
    msg = f"expected auto, none or a positive number of rows; received {value!r}"
    raise argparse.ArgumentTypeError(msg)


def _pack(args: argparse.Namespace) -> None:
    fields, length = read_inputs(args.inputs, batch_rows=_BATCH_ROWS)
    pack(args.output, fields, chunks=args.chunks, compression=args.compression, compression_opts=args.level,
         length=length, overwrite=args.overwrite, progress=not args.quiet)
    print(inspect(args.output))


def _profile(args: argparse.Namespace) -> None:
    from kseq.profiling import load_target, profile  # kseq's Keras layer, for profile only (as demo)

    ds, model = load_target(args.target, model=args.model, batch_size=args.batch_size, shuffle=args.shuffle,
                            workers=args.workers, processes=args.processes)
    try:
        result = profile(ds, model, batches=args.batches, epochs=args.epochs)
    finally:
        getattr(ds, "close", lambda: None)()
    print(result.table())
    if args.plot:
        result.plot().savefig(args.plot, dpi=120)


def main(argv: Sequence[str] | None = None, prog: str = "kseq") -> int:
    """The ``kseq`` console script (``python -m kseq`` calls it with that ``prog``); returns the exit status."""
    description = (__doc__ or "").replace("``", "")  # plain text in --help; the markup is for the API pages
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="train a two-input model on the digits shipped with kseq")
    p_demo.add_argument("--epochs", type=int, default=8)
    p_demo.add_argument("--seed", type=int, default=0)
    p_pack = sub.add_parser("pack", help="write .npy/.npz/CSV/Parquet inputs to one HDF5 file laid out for fast reads")
    p_pack.add_argument("output", help="the HDF5 file to write")
    p_pack.add_argument("inputs", nargs="+", help="[name=]file.npy|.npz, or one [name=]file.csv|.parquet")
    p_pack.add_argument("--compression", choices=[c for c in COMPRESSIONS if c],
                        help="compress (chunked layout); lz4, zstd and blosc need hdf5plugin")
    p_pack.add_argument("--level", type=int, help="level of gzip (0-9), zstd (1-22) or blosc (0-9)")
    p_pack.add_argument("--chunks", type=_chunks, default=..., help="auto (default), none, or rows per chunk")
    p_pack.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p_pack.add_argument("--quiet", action="store_true", help="no progress bar")
    p_inspect = sub.add_parser("inspect", help="print an HDF5 file's fields, shapes, dtypes, layout, chunks, size")
    p_inspect.add_argument("file")
    p_profile = sub.add_parser("profile", help="time a dataset's stages; with --model, whether training waits on it")
    p_profile.add_argument("target", help="an HDF5 file, or module:function returning a dataset (or (dataset, model))")
    p_profile.add_argument("--model", help="module:function returning a compiled Keras model")
    p_profile.add_argument("--batch-size", type=int, default=64, help="HDF5 file: rows per batch")
    p_profile.add_argument("--shuffle", choices=["true", "false", "block"], default="true", help="HDF5 file: the order")
    p_profile.add_argument("--workers", type=int, default=1, help="HDF5 file: threads (or processes) computing batches")
    p_profile.add_argument("--processes", action="store_true", help="HDF5 file: worker processes, not threads")
    p_profile.add_argument("--batches", type=int, help="batches per pass (default: min(len, 20))")
    p_profile.add_argument("--epochs", type=int, default=2, help="timed passes")
    p_profile.add_argument("--plot", help="also save the stage bars and batches/s to this image file")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(epochs=args.epochs, seed=args.seed)
        return 0
    try:
        if args.command == "pack":
            _pack(args)
        elif args.command == "profile":
            _profile(args)
        else:
            print(inspect(args.file))
    except KseqError as e:
        print(f"kseq {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0
