"""CaptionDataset: image features and variable-length captions, for teacher forcing.

# NOTE [ variable-length batches and the TF signature ]
On the TensorFlow backend ``fit`` builds a ``tf.data`` signature from batches 0
and 1 only (``data_adapter_utils.get_tensor_spec``): a dimension becomes ``None``
(variable) only when those two batches differ in it. Two batches padded to the
same longest caption fix the time dimension, and the first later batch with a
different longest caption stops ``fit`` ("`generator` yielded an element of shape
(32, 15) where an element of shape (None, 12) was expected"). The JAX
backend has no signature, but compiles the train step once per distinct shape.

So CaptionDataset, when its batch widths can vary at all:

  * makes batch 1 of every epoch ``pad_to_multiple`` columns wider than batch 0
    when the two would otherwise have the same width, so Keras declares the time
    dimension variable. The extra columns are padding with zero weight, and may
    pass ``max_length - 1``; a model with a fixed sequence length (positional
    embeddings) should use ``fixed_length=True``;
  * pads a dataset of a single batch per epoch to the widest possible width;
  * rounds widths up to ``pad_to_multiple`` (e.g. 8) on request, which bounds
    the distinct shapes, hence the compiles on JAX, to ``max_length / 8``: on
    JAX, fewer compiles make a run of a few epochs several times shorter
    (benchmarks/README.md, captioning).

``fixed_length=True`` pads every batch to ``max_length - 1`` (or the longest
caption): one shape, one compile, and a fixed ``Input(shape=(length,))`` works.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from kseq.batching import as_batch
from kseq.datasets.base import Dataset
from kseq.errors import StructureError
from kseq.samplers.caption import CaptionSampler
from kseq.samplers.shard import Part
from kseq.sources import ArraySource, Source, as_source
from kseq.text import TokenTable
from kseq.validators import integer, one_of
from kseq.validators import name as check_name

__all__ = ["CaptionDataset", "CaptionSampler"]  # CaptionSampler lives in kseq.samplers; kept here for 0.1.0 imports

Weighting = Literal["mean", "mask"] | None


class CaptionDataset(Dataset):
    """Image features with token-id captions, as ``(x, y, sample_weight)`` for teacher forcing.

    Batch ``i`` is ``({features_input: (B, *feature_shape), decoder_input: (B, T)},
    {output_name: (B, T)}, {output_name: (B, T)})``: ``decoder_input`` is each caption
    without its last token, ``decoder_output`` without its first, both post-padded with
    ``pad_value`` to the batch's longest caption, and the weights are zero on padding.
    See NOTE [ variable-length batches and the TF signature ] for ``T`` on TF and JAX.
    A model built from lists or with one output takes no target dict in Keras 3: train it
    on ``ds.for_model(model)``, which puts each batch in that model's order.

    Args:
        features: one row per image: an array or ``np.memmap``; or a Source (a dict of
            arrays, a DataFrame, an HDF5 source or file path) with ``features_field=``
            naming the field (optional when the source has one field).
        captions: token-id sequences, in one of three forms: a list (one entry per image)
            of lists of sequences; a flat list of sequences, or a post-padded 2-D array,
            with ``image_ids=``; a padded 3-D array ``(images, captions, tokens)`` whose
            all-padding rows are unused slots. A 2-D array without ``image_ids`` is one
            caption per image. Each caption should start and end with marker tokens
            (see :func:`kseq.text.tokenize`); trailing ``pad_value`` is stripped.
        image_ids: the image (row of ``features``) each caption describes, flat forms only.
        features_field: the field of a Source that holds the features.
        captions_per_image: ``"one"``: each epoch, one caption per image, drawn from
            ``(seed, epoch)`` (with ``shuffle=False``, drawn once from ``seed``: the same
            captions every epoch, as validation wants); ``"all"``: every (image, caption)
            pair once per epoch.
        pad_value: the padding id; it may not occur inside a caption.
        max_length: truncate captions to this many tokens (decoder sequences ``max_length - 1``);
            longer captions are counted in ``num_truncated`` and warned about once.
        pad_to_multiple: round each batch's width up to a multiple of this.
        fixed_length: pad every batch to ``sequence_length`` (``max_length - 1`` or the longest).
        bucket_by_length: group captions of similar length into batches to cut padding.
        bucket_window: with bucketing, sort within windows of this many batches.
        input_names: the model's ``(features input, decoder input)`` names.
        output_name: the model's output name.
        weighting: ``"mean"``: 0 on padding and ``B*T / real tokens`` elsewhere, so the
            default ``sum_over_batch_size`` loss is the mean over real tokens however much
            padding a batch has (what Keras does for its own masks); ``"mask"``: 0/1;
            ``None``: no weights, batches are ``(x, y)``. (Named ``sample_weight=`` in 0.1.0;
            that name still works and warns: in :class:`MultiInputDataset` ``sample_weight`` is a field.)
        **kwargs: batch_size, shuffle, seed, drop_remainder, workers, ...: see :class:`Dataset`.

    Raises:
        StructureError: at construction, for captions of images that do not exist, captions
            shorter than 2 tokens, ``pad_value`` inside a caption, or a bad argument.

    Example:
        >>> import numpy as np
        >>> feats = np.arange(6.0).reshape(3, 2)
        >>> caps = [[[2, 5, 3], [2, 5, 6, 7, 3]], [[2, 8, 3]], [[2, 9, 9, 3]]]
        >>> ds = CaptionDataset(feats, caps, captions_per_image="all", batch_size=4, shuffle=False)
        >>> x, y, w = ds[0]
        >>> x["decoder_input"].tolist()
        [[2, 5, 0, 0], [2, 5, 6, 7], [2, 8, 0, 0], [2, 9, 9, 0]]
        >>> y["decoder_output"].tolist()
        [[5, 3, 0, 0], [5, 6, 7, 3], [8, 3, 0, 0], [9, 9, 3, 0]]
        >>> (w["decoder_output"] > 0).sum(axis=1).tolist(), x["transfer_values_input"][:, 0].tolist()
        ([2, 4, 2, 3], [0.0, 0.0, 2.0, 4.0])
    """

    def __init__(
        self,
        features: Any,
        captions: Any,
        *,
        image_ids: Sequence[int] | np.ndarray | None = None,
        features_field: str | None = None,
        captions_per_image: Literal["one", "all"] = "one",
        pad_value: int = 0,
        max_length: int | None = None,
        pad_to_multiple: int = 1,
        fixed_length: bool = False,
        bucket_by_length: bool = False,
        bucket_window: int = 20,
        input_names: Sequence[str] = ("transfer_values_input", "decoder_input"),
        output_name: str = "decoder_output",
        weighting: Weighting = "mean",
        **kwargs: Any,
    ) -> None:
        if "sample_weight" in kwargs:
            weighting = _renamed_sample_weight(kwargs.pop("sample_weight"))
        source, self.features_field = _features_source(features, features_field)
        super().__init__(source, **kwargs)
        self.captions_per_image = one_of(captions_per_image, "captions_per_image", ("one", "all"))
        self.weighting = one_of(weighting, "weighting", ("mean", "mask", None))
        self.pad_value = integer(pad_value, "pad_value")
        self.max_length = None if max_length is None else integer(max_length, "max_length", minimum=2)
        self.pad_to_multiple = integer(pad_to_multiple, "pad_to_multiple", minimum=1)
        self.bucket_window = integer(bucket_window, "bucket_window", minimum=1)
        self.fixed_length, self.bucket_by_length = bool(fixed_length), bool(bucket_by_length)
        self.input_names = _input_names(input_names)
        self.output_name = check_name(output_name, "output_name")
        self.table, self.image_of, self._rows = _parse_captions(captions, image_ids, len(source), self.pad_value)
        full = self.table.lengths[self._rows]
        self.lengths = full if self.max_length is None else np.minimum(full, self.max_length)
        self.num_truncated = int((full > self.lengths).sum())
        self._warn_about_data(len(source))
        self._sequence_length: int | bool | None = False  # False: not computed yet
        self.build_own_sampler(CaptionDataset)

    @property
    def sequence_length(self) -> int | None:
        """The one width ``T`` of every batch, or ``None`` where widths vary by batch."""
        if self._sequence_length is False:
            self._sequence_length = self._constant_width()
        return self._sequence_length  # type: ignore[return-value]

    @property
    def sample_weight_mode(self) -> Weighting:
        """Deprecated name of :attr:`weighting` (0.1.0)."""
        warnings.warn("CaptionDataset.sample_weight_mode is now .weighting.", DeprecationWarning, stacklevel=2)
        return self.weighting

    @property
    def input_order(self) -> tuple[str, str]:
        """``input_names``: a model whose Inputs have generated names takes (features, decoder input) by position.

        See NOTE [ inputs matched by position ] in :mod:`kseq.structure`.
        """
        return self.input_names

    def structure_fix(self, role: str, names: list[str]) -> str:
        """How to make this dataset's keys the model's ``names`` (for :func:`kseq.check`'s errors)."""
        if role == "input":
            if len(names) == 2:
                return f"Pass input_names={tuple(names)!r} to CaptionDataset (features input, decoder input)."
            return f"CaptionDataset gives two inputs {list(self.input_names)}: (features, decoder input)."
        if len(names) == 1:
            return f"Pass output_name={names[0]!r} to CaptionDataset."
        return f"CaptionDataset gives one output {self.output_name!r}: build the model with one output."

    # -- batches -------------------------------------------------------------------

    def make_sampler(self) -> CaptionSampler:
        return CaptionSampler(
            self.image_of,
            self.lengths,
            one_per_image=self.captions_per_image == "one",
            batch_size=self.batch_size,
            seed=self.seed,
            shuffle=self.plain_shuffle(),
            drop_remainder=self.drop_remainder,
            bucket_window=self.bucket_window if self.bucket_by_length else None,
        )

    def read_rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The captions ``indices`` (caption ids from the sampler) and their images' features.

        Returns ``{"features": (B, *feature_shape), "tokens": (B, T + 1), "steps": (B,),
        "mean_scale": ()}``: each caption's tokens post-padded to the batch's width ``T``
        (:meth:`batch_width`) plus one, its number of decoder steps (tokens - 1), and the
        weight of a real token under ``weighting="mean"`` (global batch positions over
        real tokens).
        """
        epoch, index = self.batch_position()
        return self._read(self.local_sampler.part(epoch, index), indices)

    def read_part(self, part: Part) -> dict[str, np.ndarray]:
        """The rows of this process's part of a global batch: the batch's width and the "mean" scale come
        from the whole global batch (all shards; NOTE [ shards of a global batch ] in kseq/samplers/shard.py)."""
        if type(self).read_rows is not CaptionDataset.read_rows:  # a subclass reads its own rows
            return self.read_rows(part.read)
        return self._read(part, part.read)

    def _read(self, part: Part, indices: np.ndarray) -> dict[str, np.ndarray]:
        whole = part.whole
        steps = self.lengths[indices] - 1
        width = self.batch_width(part.index, part.epoch)
        tokens = self.table.gather(self._rows[indices], width=width + 1, lengths=steps + 1)
        scale = np.float32(len(whole) * width / max(int((self.lengths[whole] - 1).sum()), 1))
        return {"features": self._features(indices), "tokens": tokens, "steps": steps, "mean_scale": scale}

    def build_batch(self, rows: dict[str, np.ndarray]) -> tuple:
        """Teacher forcing: x is the features and the caption but its last token, y the caption but its first."""
        tokens, steps = rows["tokens"], rows["steps"]
        real = np.arange(tokens.shape[1] - 1) < steps[:, None]
        x = {
            self.input_names[0]: rows["features"],
            self.input_names[1]: np.where(real, tokens[:, :-1], np.int32(self.pad_value)),
        }
        y = {self.output_name: tokens[:, 1:]}
        if self.weighting is None:
            return as_batch(x, y)
        weights = real.astype(np.float32)
        if self.weighting == "mean":
            weights *= rows["mean_scale"]
        return as_batch(x, y, {self.output_name: weights})

    def batch_width(self, index: int, epoch: int | None = None) -> int:
        """The time dimension ``T`` of batch ``index`` of ``epoch``, read from lengths only."""
        if self.sequence_length is not None:
            return self.sequence_length
        epoch = self.epoch if epoch is None else int(epoch)
        width = self._width(self.sampler.indices(epoch, index))
        if index == 1 and width == self._width(self.sampler.indices(epoch, 0)):
            width += self.pad_to_multiple  # NOTE [ variable-length batches and the TF signature ]
        return width

    def padding_fraction(self, epoch: int | None = None) -> float:
        """The fraction of decoder positions that are padding over one epoch."""
        epoch = self.epoch if epoch is None else int(epoch)
        real = total = 0
        for i in range(len(self)):
            ids = self.sampler.indices(epoch, i)
            real += int(self.lengths[ids].sum()) - len(ids)
            total += len(ids) * self.batch_width(i, epoch)
        return 1.0 - real / total

    # -- helpers -------------------------------------------------------------------

    def _features(self, ids: np.ndarray) -> np.ndarray:
        rows = self.source.read(self.image_of[ids], [self.features_field])[self.features_field]
        return np.asarray(rows)  # a plain array, not an np.memmap view

    def _width(self, ids: np.ndarray) -> int:
        return _round_up(int(self.lengths[ids].max()) - 1, self.pad_to_multiple)

    def _constant_width(self) -> int | None:
        widest = _round_up(int(self.lengths.max()) - 1, self.pad_to_multiple)
        if self.fixed_length:
            return _round_up((self.max_length or int(self.lengths.max())) - 1, self.pad_to_multiple)
        narrowest = _round_up(int(self.lengths.min()) - 1, self.pad_to_multiple)
        return widest if narrowest == widest or len(self) == 1 else None

    def _warn_about_data(self, n_images: int) -> None:
        """One warning per kind of problem, with its count."""
        uncaptioned = n_images - len(np.unique(self.image_of))
        if uncaptioned:
            warnings.warn(
                f"{uncaptioned} of {n_images} images have no caption; they are left out of every epoch.",
                UserWarning,
                stacklevel=3,
            )
        if self.num_truncated:
            warnings.warn(
                f"{self.num_truncated} of {len(self.lengths)} captions are longer than max_length="
                f"{self.max_length} tokens (longest {int(self.table.lengths[self._rows].max())}); they are "
                "truncated and lose their end marker. Raise max_length to keep them whole.",
                UserWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        return (
            f"CaptionDataset({len(self.source)} images, {len(self.lengths)} captions, "
            f"captions_per_image={self.captions_per_image!r}, batch_size={self.batch_size}, {len(self)} batches, "
            f"shuffle={self.shuffle}, bucket_by_length={self.bucket_by_length}, seed={self.seed}, epoch={self.epoch})"
        )


def _features_source(features: Any, field: str | None) -> tuple[Source, str]:
    if type(features).__module__.startswith("h5py"):
        msg = (
            "features is an open h5py object; its handle cannot be pickled to workers. Expected a source that "
            "holds the path: pass features=kseq.sources.HDF5Source(path) (or the path itself) with "
            "features_field='<dataset name>'."
        )
        raise StructureError(msg)
    if isinstance(features, (Source, Mapping, pd.DataFrame, str, os.PathLike)):
        source = as_source(features)
        names = list(source.fields)
        if field is None and len(names) == 1:
            field = names[0]
        if field not in names:
            msg = (
                f"features_field must name the field that holds the image features. Expected one of {names}. "
                f"Received features_field={field!r}."
            )
            raise StructureError(msg)
        return source, field
    if field is not None:
        msg = f"features_field is for a Source; features is an array. Received features_field={field!r}."
        raise StructureError(msg)
    return ArraySource({"features": features}), "features"


def _parse_captions(
    captions: Any, image_ids: Any, n_images: int, pad: int
) -> tuple[TokenTable, np.ndarray, np.ndarray]:
    """The token table, each used caption's image (sorted), and its row in the table."""
    drop_empty = False
    if isinstance(captions, np.ndarray) and captions.ndim == 3 and image_ids is None:
        n, k, width = captions.shape
        _check_count(n, n_images, "captions has {} rows of captions")
        table = TokenTable(captions.reshape(n * k, width), pad_value=pad)
        owner, drop_empty = np.repeat(np.arange(n), k), True
    elif image_ids is not None:
        table = TokenTable(captions, pad_value=pad)
        owner = np.asarray(image_ids)
        owner = owner if owner.size else owner.astype(np.int64)  # [] is float
        if owner.shape != (len(table),) or owner.dtype.kind not in "iu":
            msg = (
                f"image_ids must hold one integer per caption: {len(table)} captions. "
                f"Received shape {owner.shape} dtype {owner.dtype}."
            )
            raise StructureError(msg)
    elif isinstance(captions, np.ndarray) and captions.ndim == 2:
        _check_count(len(captions), n_images, "captions is a 2-D array of {} captions, one per image")
        table, owner = TokenTable(captions, pad_value=pad), np.arange(len(captions))
    else:
        table, owner = _nested(captions, n_images, pad)
    _check_owners(owner, n_images)
    rows = np.arange(len(table))
    if drop_empty:
        rows = rows[table.lengths > 0]
    if not rows.size:
        msg = "captions holds no caption. Expected at least one token sequence of 2 or more tokens."
        raise StructureError(msg)
    _check_tokens(table, rows, pad)
    order = np.argsort(owner[rows], kind="stable")
    return table, owner[rows][order], rows[order]


def _nested(captions: Any, n_images: int, pad: int) -> tuple[TokenTable, np.ndarray]:
    if isinstance(captions, np.ndarray) and captions.dtype == object:
        captions = list(captions)
    if not isinstance(captions, Sequence) or isinstance(captions, str):
        msg = (
            "captions must be a list (one per image) of lists of token sequences, a flat list or 2-D array "
            f"with image_ids=, or a 3-D array. Received {type(captions).__name__}."
        )
        raise StructureError(msg)
    first = next((c for c in captions if len(c)), None)
    if isinstance(first, str) or (first is not None and isinstance(first[0], str)):
        msg = (
            f"captions holds text ({first!r:.60}); expected token ids. Tokenize first: "
            "ids, vocab = kseq.text.tokenize(captions)."
        )
        raise StructureError(msg)
    if first is not None and np.ndim(first[0]) == 0:
        msg = (
            "captions looks like a flat list of token sequences (its first entry is a sequence of ints). "
            "Pass image_ids=[image of each caption], or nest one list of captions per image."
        )
        raise StructureError(msg)
    _check_count(len(captions), n_images, "captions has {} entries (one list of captions per image)")
    flat = [seq for per_image in captions for seq in per_image]
    owner = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    return TokenTable(flat, pad_value=pad), owner


def _check_count(count: int, n_images: int, what: str) -> None:
    if count != n_images:
        msg = (
            f"{what.format(count)} but features has {n_images} rows. Expected one entry per image; "
            "for captions of some images only, pass a flat list with image_ids=."
        )
        raise StructureError(msg)


def _check_owners(owner: np.ndarray, n_images: int) -> None:
    missing = np.flatnonzero((owner < 0) | (owner >= n_images))
    if missing.size:
        msg = (
            f"{missing.size} captions refer to missing images: features has {n_images} rows (ids 0..{n_images - 1}). "
            f"Received image ids {owner[missing[:5]].tolist()} for captions {missing[:5].tolist()}. "
            "Drop those captions or add their images."
        )
        raise StructureError(msg)


def _check_tokens(table: TokenTable, rows: np.ndarray, pad: int) -> None:
    short = rows[table.lengths[rows] < 2]
    if short.size:
        msg = (
            f"{short.size} captions have fewer than 2 tokens (first: caption {short[0]}, length "
            f"{table.lengths[short[0]]}). Expected start and end markers around the words, e.g. "
            "kseq.text.tokenize(texts). Remove empty captions."
        )
        raise StructureError(msg)
    inner = np.intersect1d(table.inner_pad_rows(), rows)
    if inner.size:
        seq = table.gather(inner[:1], width=int(table.lengths[inner[0]]))[0].tolist()
        msg = (
            f"{inner.size} captions contain pad_value={pad} inside them (first: caption {inner[0]}: {seq}). "
            "It would be read as padding. Reserve pad_value for padding: shift token ids, or pass another pad_value."
        )
        raise StructureError(msg)


def _round_up(n: int, multiple: int) -> int:
    return max(1, -(-n // multiple) * multiple)


def _renamed_sample_weight(value: Any) -> Any:
    warnings.warn(
        "CaptionDataset(sample_weight=...) is now weighting=... (sample_weight names a field elsewhere in kseq).",
        DeprecationWarning,
        stacklevel=3,
    )
    return value


def _input_names(names: Sequence[str]) -> tuple[str, str]:
    if not isinstance(names, Sequence) or isinstance(names, str) or len(names) != 2 or len(set(names)) != 2:
        msg = (
            "input_names must be two distinct names: (features input, decoder input). "
            f"Received {names!r}."
        )
        raise StructureError(msg)
    return check_name(names[0], "input_names[0]"), check_name(names[1], "input_names[1]")
