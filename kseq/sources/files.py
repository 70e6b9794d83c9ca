"""FileSource: one file per row (images, ``.npy`` arrays, or anything a ``load(path)`` reads), decoded per batch.

# NOTE [ files as rows ]
A FileSource holds paths, never open files or decoded pixels: it pickles small, and every
``read`` opens and decodes the files of that batch's rows in the process that builds the batch.
With ``workers=N, use_multiprocessing=True`` that is kseq's worker processes, so decoding runs
in parallel beside training. Its field has one shape and dtype, fixed at construction: for images
``(*image_size, channels)`` uint8 when ``image_size`` is given (every image is resized to it), else
the first file's size, which every other file must then have. For ``.npy`` files and ``load`` the
first file fixes both. Rows are read once per batch, in sorted order (no ``cheap_row_reads``):
a repeated row would be a second decode.

# NOTE [ bad files ]
What can be checked cheaply is checked at construction: every file exists (one ``stat`` each,
``check_files=False`` to skip it on a slow network store), and the first file fixes the field's
shape: read whole for ``.npy`` and ``load``, its header for an image without ``image_size``. What cannot
(a truncated JPEG in row 9,000; an image of another size) is found by the read that decodes it,
and reported then as a SourceError naming the row and the file; in a worker process it reaches
``fit`` as a WorkerError with that message.

``on_error="skip"`` keeps training instead, and loses nothing silently. A batch has a fixed size,
so a bad row cannot be left out of it: its pixels are zeros, and the extra field ``"{field}_ok"``
(float32) is 0 for it and 1 for every good row. Pass that field as the sample weight
(``MultiInputDataset(..., sample_weight="image_ok")``) and a bad row counts for nothing in the
loss. Each bad file is recorded, with its row and the error, in a log file (``error_log``, one
line per failure, appended by whichever process hit it; a temporary file by default), and
:meth:`FileSource.bad_files` lists them in any process; each process warns at its first bad file.
Replacing a bad row by another row was not chosen: the label of the row (or, for pairs, the class
index built at construction) would no longer describe what was trained on.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from kseq.errors import SourceError, StructureError
from kseq.sources import _decode
from kseq.sources.array import ArraySource
from kseq.sources.base import check_fields, check_indices
from kseq.validators import integer, one_of
from kseq.validators import name as check_name

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["IMAGE_EXTENSIONS", "BadFile", "FileSource"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_SHOWN = 5  # bad files named in one message


class BadFile(NamedTuple):
    """A file that could not be read: its row, its path, and why (:meth:`FileSource.bad_files`).

    Example:
        >>> BadFile(3, "/data/cat/3.jpg", "missing file").row
        3
    """

    row: int
    path: str
    error: str


class FileSource:
    """A Source whose rows are files: a list of paths, plus optional columns as further fields.

    See NOTE [ files as rows ] and NOTE [ bad files ] in :mod:`kseq.sources.files`.

    Args:
        paths: one path per row (``str`` or ``os.PathLike``); relative paths are taken from ``root``.
        columns: further fields, ``{name: array}`` with one row per path (labels, tabular inputs).
        field: the name of the files' field; ``"image"`` for images, ``"data"`` otherwise.
        load: ``"image"`` (decoded by Pillow: ``pip install 'kseq[images]'``), ``"npy"``, or a
            callable ``load(path) -> array`` (picklable for spawn and forkserver workers).
        image_size: ``(height, width)`` to resize every image to; ``None`` keeps the first image's
            size, which every image must then have.
        color_mode: ``"rgb"`` (3 channels), ``"grayscale"`` (1) or ``"rgba"`` (4), as in
            ``keras.utils.image_dataset_from_directory``.
        interpolation: the resize filter: ``"bilinear"``, ``"nearest"``, ``"bicubic"``, ``"lanczos"``,
            ``"box"`` or ``"hamming"``.
        decoder: ``"auto"``: OpenCV where it is installed (``pip install 'kseq[opencv]'``) and does the
            ``color_mode`` and ``interpolation`` asked, Pillow otherwise; ``"pillow"`` or ``"opencv"`` to
            pin one. The same file decodes to the same pixels in both; a resize differs (OpenCV's does
            not antialias, as ``tf.image.resize`` in Keras's image loader; Pillow's does). See NOTE [ two
            image decoders ] in :mod:`kseq.sources._decode`. :attr:`decoder` says which one reads.
        root: the folder relative paths start from (default: the current directory).
        on_error: ``"raise"``: a bad file raises a SourceError naming it and its row; ``"skip"``:
            its row is zeros with ``"{field}_ok"`` 0, and it is logged (NOTE [ bad files ]).
        check_files: check at construction that every file exists (one ``stat`` per file).
        error_log: the log of bad files under ``on_error="skip"``; default a new temporary file.

    Raises:
        StructureError: no paths, columns of another length, or a bad option.
        SourceError: missing files (with ``on_error="raise"``), a first file that cannot be read,
            or Pillow not installed for ``load="image"``.

    Example:
        >>> import tempfile, numpy as np
        >>> folder = tempfile.mkdtemp()
        >>> for i in range(3):
        ...     np.save(f"{folder}/{i}.npy", np.full((2, 2), i, "float32"))
        >>> src = FileSource([f"{i}.npy" for i in range(3)], root=folder, load="npy", columns={"y": [0, 1, 1]})
        >>> src.fields["data"], src.read([2, 0])["data"][:, 0, 0].tolist()
        (((2, 2), dtype('float32')), [2.0, 0.0])
    """

    cheap_row_reads = False  # a repeated row would be decoded twice (NOTE [ files as rows ])

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        columns: Mapping[str, Any] | None = None,
        field: str | None = None,
        load: Literal["image", "npy"] | Callable[[str], Any] = "image",
        image_size: tuple[int, int] | None = None,
        color_mode: str = "rgb",
        interpolation: str = "bilinear",
        decoder: Literal["auto", "pillow", "opencv"] = "auto",
        root: str | os.PathLike | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        check_files: bool = True,
        error_log: str | os.PathLike | None = None,
    ) -> None:
        if not callable(load):
            one_of(load, "load", ("image", "npy"), fix="Or pass a callable load(path) -> array.")
        self.load = load
        self.field = check_name(("image" if load == "image" else "data") if field is None else field, "field")
        self.image_size = _check_size(image_size, load)
        self.color_mode = one_of(color_mode, "color_mode", tuple(_decode.COLOR_MODES))
        self.interpolation = one_of(interpolation, "interpolation", _decode.INTERPOLATIONS)
        one_of(decoder, "decoder", _decode.DECODERS)
        self.decoder = _decode.choose_decoder(decoder, self.color_mode, self.interpolation) if load == "image" else None
        self.on_error = one_of(on_error, "on_error", ("raise", "skip"))
        self.paths = _absolute(paths, root)
        self.columns = _columns(columns, len(self.paths), self.field)
        self.error_log = _error_log(error_log) if self.on_error == "skip" else None
        self.class_names: tuple[str, ...] | None = None  # set by from_directory
        self._warned = False
        missing = _missing(self.paths) if check_files else []
        if missing:
            self._missing_files(missing)
        absent = set(missing)
        first = next((i for i in range(len(self.paths)) if i not in absent), None)
        if first is None:
            msg = f"None of the {len(self.paths)} files exists. Expected at least one readable file."
            raise SourceError(msg)
        self._shape, self._dtype = self._probe(first)

    # -- constructors for common layouts -----------------------------------------

    @classmethod
    def from_directory(
        cls,
        directory: str | os.PathLike,
        *,
        class_names: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        label: str = "label",
        **kwargs: Any,
    ) -> FileSource:
        """Images in one sub-folder per class, as ``keras.utils.image_dataset_from_directory`` reads them.

        Fields ``"image"`` and ``label`` (int32: the class's position in :attr:`class_names`, which
        is the sorted sub-folder names unless ``class_names`` is given). Files are found in each
        class folder and its sub-folders, in sorted order; other files are ignored.

        Args:
            directory: the folder holding one folder per class.
            class_names: the classes, in label order (default: every sub-folder, sorted).
            extensions: the file endings taken as images (case-insensitive).
            label: the name of the label field.
            **kwargs: as for :class:`FileSource` (``image_size``, ``color_mode``, ``on_error``, ...).

        Example:
            >>> import tempfile, numpy as np
            >>> from PIL import Image
            >>> root = tempfile.mkdtemp()
            >>> for name in ("cat", "dog"):
            ...     os.makedirs(f"{root}/{name}")
            ...     Image.fromarray(np.zeros((4, 6, 3), "uint8")).save(f"{root}/{name}/a.png")
            >>> src = FileSource.from_directory(root, image_size=(8, 8))
            >>> src.class_names, src.fields["image"], src.read([0, 1])["label"].tolist()
            (('cat', 'dog'), ((8, 8, 3), dtype('uint8')), [0, 1])
        """
        root = Path(directory)
        if not root.is_dir():
            msg = f"from_directory expects a folder with one sub-folder per class. Received '{root}', not a folder."
            raise SourceError(msg)
        names = _class_names(root, class_names)
        endings = tuple(e.lower() for e in extensions)
        paths: list[str] = []
        labels: list[int] = []
        for number, name in enumerate(names):
            found = sorted(str(p) for p in (root / name).rglob("*") if p.suffix.lower() in endings and p.is_file())
            paths += found
            labels += [number] * len(found)
        if not paths:
            msg = (
                f"No files ending in {list(endings)} under the class folders {names} of '{root}'. "
                "Expected images in each class folder; pass extensions=[...] for other endings."
            )
            raise SourceError(msg)
        label = check_name(label, "label")
        source = cls(paths, columns={label: np.asarray(labels, np.int32)}, **kwargs)
        source.class_names = tuple(names)
        return source

    @classmethod
    def from_dataframe(cls, df: pd.DataFrame, column: str = "path", **kwargs: Any) -> FileSource:
        """The paths in ``df[column]``, every other column a further field (labels, tabular inputs).

        Example:
            >>> import tempfile, numpy as np, pandas as pd
            >>> folder = tempfile.mkdtemp()
            >>> np.save(f"{folder}/a.npy", np.arange(3))
            >>> src = FileSource.from_dataframe(pd.DataFrame({"path": ["a.npy"], "y": [7]}), root=folder, load="npy")
            >>> sorted(src.fields), src.read([0])["y"].tolist()
            (['data', 'y'], [7])
        """
        from kseq.sources.dataframe import DataFrameSource  # pandas: the caller passed a DataFrame

        if column not in df.columns:
            msg = f"Column {column!r} is not in the DataFrame. Expected the column of paths among {list(df.columns)}."
            raise StructureError(msg)
        others = [c for c in df.columns if c != column]
        columns = DataFrameSource(df, columns=others).arrays if others else None
        return cls(df[column].astype(str).tolist(), columns=columns, **kwargs)

    @classmethod
    def from_csv(cls, csv: str | os.PathLike, column: str = "path", **kwargs: Any) -> FileSource:
        """:meth:`from_dataframe` of a CSV file; relative paths start from the CSV's folder unless ``root`` says."""
        import pandas as pd  # a CSV is read with pandas

        kwargs.setdefault("root", Path(csv).resolve().parent)
        return cls.from_dataframe(pd.read_csv(csv), column, **kwargs)

    # -- the Source protocol -----------------------------------------------------

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fields(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        out = {self.field: (self._shape, self._dtype)}
        if self.on_error == "skip":
            out[self.ok_field] = ((), np.dtype(np.float32))
        return out | ({} if self.columns is None else self.columns.fields)

    @property
    def ok_field(self) -> str:
        """``"{field}_ok"``: 1.0 for a row read, 0.0 for a bad file skipped (``on_error="skip"`` only)."""
        return f"{self.field}_ok"

    def read(self, indices: Sequence[int] | np.ndarray, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        idx = check_indices(indices, len(self))
        names = check_fields([fields] if isinstance(fields, str) else fields, self.fields)
        out: dict[str, np.ndarray] = {}
        if self.field in names or self.ok_field in names:
            data, ok = self._read_files(idx)
            out[self.field] = data
            if self.on_error == "skip":
                out[self.ok_field] = ok
        others = [n for n in names if self.columns is not None and n in self.columns.fields]
        if others:
            out |= self.columns.read(idx, others)  # type: ignore[union-attr]
        return {n: out[n] for n in names}

    def __repr__(self) -> str:
        shape = ", ".join(map(str, self._shape))
        extra = "" if self.columns is None else f", columns={sorted(self.columns.fields)}"
        extra += "" if self.decoder is None else f", decoder={self.decoder!r}"
        return (
            f"FileSource({len(self)} files, {self.field}: ({shape}) {self._dtype}{extra}, on_error={self.on_error!r})"
        )

    # -- bad files ---------------------------------------------------------------

    def bad_files(self) -> list[BadFile]:
        """Every bad file logged so far by any process (``on_error="skip"``), one per row, by row."""
        if self.error_log is None or not os.path.exists(self.error_log):
            return []
        seen: dict[int, BadFile] = {}
        with open(self.error_log, encoding="utf-8") as log:
            for line in log:
                row, path, error = line.rstrip("\n").split("\t", 2)
                seen.setdefault(int(row), BadFile(int(row), path, error))
        return [seen[r] for r in sorted(seen)]

    def _read_files(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        data = np.zeros((len(idx), *self._shape), dtype=self._dtype)
        ok = np.ones(len(idx), dtype=np.float32)
        for j, row in enumerate(idx.tolist()):
            try:
                data[j] = self._read_one(row)
            except SourceError as e:
                if self.on_error == "raise":
                    raise
                ok[j] = 0.0
                self._log_bad(row, str(e))
        return data, ok

    def _read_one(self, row: int) -> np.ndarray:
        """The array of ``row``'s file, of this source's shape; any failure a SourceError naming row and file."""
        path = self.paths[row]
        try:
            array = self._decode(path)
        except Exception as e:
            failure = f"{type(e).__name__}: {e}"
        else:
            if array.shape != self._shape:
                fix = "Pass image_size=(height, width) to resize every image." if self.load == "image" else ""
                msg = (
                    f"Row {row}, file '{path}': expected shape {self._shape} (fixed by the first file), "
                    f"received {array.shape}. {fix}".rstrip()
                )
                raise SourceError(msg)
            if not np.can_cast(array.dtype, self._dtype, casting="same_kind"):
                msg = (
                    f"Row {row}, file '{path}': expected dtype {self._dtype} (fixed by the first file), "
                    f"received {array.dtype}."
                )
                raise SourceError(msg)
            return array
        msg = f"Row {row}, file '{path}' cannot be read ({failure})."
        if self.on_error == "raise":
            msg += (
                " Fix or remove the file, or pass on_error='skip' to train on with this row zeroed and counted "
                "(NOTE [ bad files ] in kseq/sources/files.py)."
            )
        raise SourceError(msg)

    def _decode(self, path: str) -> np.ndarray:
        if self.load == "image":
            read = _decode.read_image_opencv if self.decoder == "opencv" else _decode.read_image
            return read(path, self.image_size, self.color_mode, self.interpolation)
        if self.load == "npy":
            return _decode.read_npy(path)
        return _decode.call_load(self.load, path)  # type: ignore[arg-type]

    def _probe(self, row: int) -> tuple[tuple[int, ...], np.dtype]:
        """The field's shape and dtype, from the first file (read, or for images its header only)."""
        path = self.paths[row]
        try:
            if self.load == "image":
                channels = _decode.COLOR_MODES[self.color_mode][1]
                if self.decoder == "opencv":  # Pillow may be absent: decode the first image once
                    size = self.image_size or self._decode(path).shape[:2]
                else:
                    _decode.pillow()  # missing Pillow is an error here, not a bad file in every row later
                    size = self.image_size or _decode.image_header(path)
                return (*size, channels), np.dtype(np.uint8)
            if self.load == "npy":
                return _decode.npy_header(path)
            array = _decode.call_load(self.load, path)  # type: ignore[arg-type]
        except SourceError:
            raise
        except Exception as e:
            msg = (
                f"Row {row}, file '{path}' cannot be read ({type(e).__name__}: {e}); the first file fixes the "
                "shape and dtype of the field. Fix or remove it."
            )
            raise SourceError(msg) from e
        if array.dtype == object:
            msg = f"load({path!r}) returned dtype object. Expected a numeric array of one shape per file."
            raise SourceError(msg)
        return tuple(array.shape), array.dtype

    def _missing_files(self, missing: list[int]) -> None:
        shown = ", ".join(f"row {r}: '{self.paths[r]}'" for r in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        if self.on_error == "raise":
            msg = (
                f"{len(missing)} of {len(self.paths)} files do not exist ({shown}{more}). Expected every path to "
                "name a file. Fix the paths (relative ones start from root=), drop those rows, or pass "
                "on_error='skip' to train with them zeroed and counted."
            )
            raise SourceError(msg)
        for r in missing:
            self._log_bad(r, "missing file", warn=False)
        warnings.warn(
            f"FileSource: {len(missing)} of {len(self.paths)} files do not exist ({shown}{more}); their rows read as "
            f"zeros with {self.ok_field}=0. source.bad_files() lists them.",
            stacklevel=3,
        )
        self._warned = True  # reading them again warns no further

    def _log_bad(self, row: int, error: str, *, warn: bool = True) -> None:
        line = f"{row}\t{self.paths[row]}\t{' '.join(error.split())}\n".encode()
        fd = os.open(self.error_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # type: ignore[arg-type]
        try:
            os.write(fd, line)  # one write of one line: lines from several processes do not interleave
        finally:
            os.close(fd)
        if warn and not self._warned:
            self._warned = True
            warnings.warn(
                f"FileSource skipped row {row} ({error.rstrip('.')}). Its row reads as zeros with {self.ok_field}=0; "
                f"further bad files are logged without a warning in {self.error_log} (source.bad_files()).",
                stacklevel=4,
            )


def _check_size(size: object, load: object) -> tuple[int, int] | None:
    if size is None:
        return None
    if load != "image":
        msg = f"image_size resizes images; load={load!r} reads arrays as stored. Received image_size={size!r}."
        raise StructureError(msg)
    if not isinstance(size, Sequence) or len(size) != 2:
        msg = f"image_size must be (height, width). Received image_size={size!r}."
        raise StructureError(msg)
    h, w = (integer(v, "image_size", minimum=1, fix="It is (height, width) in pixels.") for v in size)
    return h, w


def _absolute(paths: object, root: str | os.PathLike | None) -> list[str]:
    if isinstance(paths, (str, bytes, os.PathLike)) or not hasattr(paths, "__iter__"):
        msg = (
            "FileSource expects a list of paths, one per row. Received "
            f"{type(paths).__name__}: {paths!r:.80}. For a folder of class folders use FileSource.from_directory."
        )
        raise StructureError(msg)
    listed = [os.fspath(p) for p in paths]  # type: ignore[attr-defined]
    if not listed:
        msg = "FileSource received no paths. Expected at least one file."
        raise StructureError(msg)
    base = os.path.abspath(root if root is not None else os.getcwd())
    return [os.path.join(base, p) for p in listed]  # an absolute path stays as it is


def _columns(columns: Mapping[str, Any] | None, n: int, field: str) -> ArraySource | None:
    if columns is None or (isinstance(columns, Mapping) and not columns):
        return None
    source = ArraySource(columns)
    if len(source) != n:
        msg = f"columns have {len(source)} rows; there are {n} paths. Expected one row per path."
        raise StructureError(msg)
    clash = [c for c in source.fields if c in (field, f"{field}_ok")]
    if clash:
        msg = f"columns {clash} clash with the files' field {field!r}. Expected other names; pass field='...'."
        raise StructureError(msg)
    return source


def _missing(paths: list[str]) -> list[int]:
    return [row for row, p in enumerate(paths) if not os.path.isfile(p)]


def _error_log(error_log: str | os.PathLike | None) -> str:
    if error_log is not None:
        return os.path.abspath(error_log)
    fd, path = tempfile.mkstemp(prefix="kseq-bad-files-", suffix=".tsv")
    os.close(fd)
    return path


def _class_names(root: Path, class_names: Sequence[str] | None) -> list[str]:
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if class_names is None:
        if not found:
            msg = f"'{root}' has no sub-folders. Expected one folder per class, e.g. {root}/cat/1.jpg."
            raise SourceError(msg)
        return found
    names = [str(c) for c in class_names]
    absent = [c for c in names if c not in found]
    if absent:
        msg = f"class_names {absent} are not folders of '{root}'. Expected names among {found}."
        raise SourceError(msg)
    return names
