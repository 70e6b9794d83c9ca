"""Token sequences: a word vocabulary with start/end markers, and ragged token tables.

A captioning model reads token ids, not strings. :class:`Vocabulary` turns raw
captions into ids wrapped in start and end markers and back again, with the same
reserved ids as ``keras.layers.TextVectorization`` (0 padding, 1 out-of-vocabulary).
:class:`TokenTable` holds many variable-length sequences flat, so a batch of them
is gathered and padded with one vectorised numpy call.

# NOTE [ tokens from keras.layers.TextVectorization ]
TextVectorization (it needs TensorFlow installed, whatever the backend) gives the
same layout: 0 pads, 1 is OOV, rows are post-padded. Its default standardisation
strips punctuation, so ``<start>`` would become ``start``; use plain marker words::

    marked = ["startseq " + t + " endseq" for t in texts]
    vectorize = keras.layers.TextVectorization(output_mode="int")
    vectorize.adapt(marked)
    ids = keras.ops.convert_to_numpy(vectorize(marked))   # (n, longest), 0-padded
    ds = CaptionDataset(features, ids, image_ids=image_of_each_text)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kseq.errors import StructureError
from kseq.validators import integer
from kseq.validators import name as check_name

__all__ = ["TokenTable", "Vocabulary", "standardize", "tokenize"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # Unicode letters and digits, inner apostrophes kept


def standardize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words, dropping punctuation.

    Example:
        >>> standardize("A red Circle, on the left!")
        ['a', 'red', 'circle', 'on', 'the', 'left']
    """
    return _WORD.findall(text.lower())


class Vocabulary:
    """Words <-> token ids, with padding, out-of-vocabulary, start and end markers.

    Ids 0..3 are reserved: 0 padding, 1 out-of-vocabulary, 2 start, 3 end; words
    follow from 4, most frequent first when built with :meth:`fit`. ``len(vocab)``
    is the ``input_dim`` of an ``Embedding`` and the width of the output softmax.

    Args:
        words: the words, in id order (from id 4); no duplicates, no marker words.
        start, end, oov: the marker strings shown by :meth:`decode` when asked.

    Example:
        >>> vocab = Vocabulary.fit(["a red circle", "a blue square"])
        >>> ids = vocab.encode("a red square")
        >>> ids.tolist()
        [2, 4, 7, 8, 3]
        >>> vocab.decode(ids)
        'a red square'
        >>> len(vocab)
        9
    """

    PAD, OOV, START, END = 0, 1, 2, 3

    def __init__(
        self, words: Sequence[str], *, start: str = "<start>", end: str = "<end>", oov: str = "<unk>"
    ) -> None:
        if isinstance(words, str) or not isinstance(words, Iterable):
            msg = f"words must be a list of strings (the vocabulary). Received words={words!r:.80}."
            raise StructureError(msg)
        start, end, oov = (check_name(v, k) for k, v in (("start", start), ("end", end), ("oov", oov)))
        words = [str(w) for w in words]
        markers = {"": "padding", oov: "oov", start: "start", end: "end"}
        clash = sorted({w for w in words if w in markers})
        duplicates = sorted(w for w, c in Counter(words).items() if c > 1)
        if clash or duplicates:
            msg = (
                f"Vocabulary words must be unique and differ from the markers {sorted(markers)}. "
                f"Received duplicates {duplicates[:10]} and marker words {clash}. Remove them from words=."
            )
            raise StructureError(msg)
        self.words = ["", oov, start, end, *words]
        self._ids = {w: i for i, w in enumerate(self.words) if i > self.END}

    @classmethod
    def fit(
        cls, texts: Iterable[Any], *, max_words: int | None = None, min_count: int = 1, **markers: str
    ) -> Vocabulary:
        """Build a vocabulary from raw texts (nested lists allowed), most frequent words first.

        Args:
            texts: strings, or (nested) lists of strings such as one list of captions per image.
            max_words: keep at most this many words (the rest become out-of-vocabulary).
            min_count: drop words seen fewer times.
            **markers: ``start=``, ``end=``, ``oov=`` as for the constructor.
        """
        max_words = integer(max_words, "max_words", minimum=0, optional=True)
        min_count = integer(min_count, "min_count", minimum=1)
        counts = Counter(w for text in _flatten_texts(texts) for w in standardize(text))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(ranked[:max_words], **markers)

    def __len__(self) -> int:
        return len(self.words)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} ids: {len(self) - 4} words + pad, oov, start, end)"

    def encode(self, text: str) -> np.ndarray:
        """``[START, *word ids, END]`` as int32; unknown words map to ``OOV``."""
        ids = [self._ids.get(w, self.OOV) for w in standardize(text)]
        return np.array([self.START, *ids, self.END], dtype=np.int32)

    def decode(self, ids: Iterable[int], *, markers: bool = False) -> str:
        """The words of ``ids`` up to the first end marker or padding; ``markers=True`` keeps them."""
        out = []
        for i in (int(i) for i in ids):
            if i in (self.END, self.PAD):
                if markers and i == self.END:
                    out.append(self.words[i])
                break
            if i != self.START or markers:
                out.append(self.words[i] if 0 <= i < len(self.words) else self.words[self.OOV])
        return " ".join(out)


def tokenize(texts: Any, vocabulary: Vocabulary | None = None, **fit_kwargs: Any) -> tuple[Any, Vocabulary]:
    """Encode texts with start/end markers, keeping their nesting; fit a vocabulary if none is given.

    Args:
        texts: a string, a list of strings, or a list (one per image) of lists of strings.
        vocabulary: an existing :class:`Vocabulary` (for validation and test splits).
        **fit_kwargs: ``max_words``, ``min_count``, markers: see :meth:`Vocabulary.fit`.

    Returns:
        ``(token_ids, vocabulary)``, token_ids nested like ``texts`` with int32 arrays as leaves:
        exactly the ``captions=`` form :class:`~kseq.datasets.caption.CaptionDataset` takes.

    Example:
        >>> ids, vocab = tokenize([["a red circle", "red circle"], ["a blue square"]])
        >>> [[c.tolist() for c in per_image] for per_image in ids]
        [[[2, 4, 6, 5, 3], [2, 6, 5, 3]], [[2, 4, 7, 8, 3]]]
    """
    vocab = Vocabulary.fit(texts, **fit_kwargs) if vocabulary is None else vocabulary
    return _map_texts(texts, vocab.encode), vocab


def _flatten_texts(texts: Any) -> Iterable[str]:
    if isinstance(texts, str):
        yield texts
        return
    if not isinstance(texts, Iterable):
        msg = f"Expected a string or (nested) lists of strings. Received {type(texts).__name__}: {texts!r:.60}."
        raise StructureError(msg)
    for t in texts:
        yield from _flatten_texts(t)


def _map_texts(texts: Any, fn: Any) -> Any:
    if isinstance(texts, str):
        return fn(texts)
    return [_map_texts(t, fn) for t in texts]


class TokenTable:
    """Variable-length integer sequences stored flat, gathered into padded batches.

    Sequences may carry trailing padding (rows of a post-padded array): their length
    stops at the last token that is not ``pad_value``. :meth:`inner_pad_rows` lists the
    sequences with ``pad_value`` before that point, which a model would read as padding.

    Args:
        sequences: a list of 1-D integer sequences, or a 2-D post-padded integer array.
        pad_value: the padding id.

    Example:
        >>> table = TokenTable([[2, 7, 3], [2, 3, 0, 0]], pad_value=0)
        >>> table.lengths.tolist()
        [3, 2]
        >>> table.gather(np.array([1, 0]), width=4).tolist()
        [[2, 3, 0, 0], [2, 7, 3, 0]]
    """

    def __init__(self, sequences: Sequence[Sequence[int]] | np.ndarray, *, pad_value: int = 0) -> None:
        self.pad_value = integer(pad_value, "pad_value")
        flat, offsets = _flat(sequences)
        self.tokens = _as_int32(flat)
        self.offsets = offsets
        self.lengths, self.inner_pads = _lengths(self.tokens, offsets, self.pad_value)

    def __len__(self) -> int:
        return len(self.lengths)

    def gather(self, ids: np.ndarray, *, width: int, lengths: np.ndarray | None = None) -> np.ndarray:
        """Sequences ``ids`` post-padded (or truncated) to ``width``, int32, shape ``(len(ids), width)``.

        ``lengths`` overrides each sequence's length (to truncate further); by default its own.
        """
        used = self.lengths[ids] if lengths is None else lengths
        cols = np.arange(width)
        valid = cols < used[:, None]
        pos = np.minimum(self.offsets[ids][:, None] + cols, max(len(self.tokens) - 1, 0))
        if not len(self.tokens):
            return np.full((len(ids), width), self.pad_value, dtype=np.int32)
        return np.where(valid, self.tokens[pos], np.int32(self.pad_value))

    def inner_pad_rows(self) -> np.ndarray:
        """Indices of sequences with ``pad_value`` inside them (before their last real token)."""
        return np.flatnonzero(self.inner_pads)


def _flat(sequences: Sequence[Sequence[int]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(sequences, np.ndarray) and sequences.dtype != object:
        if sequences.ndim != 2:
            msg = f"Expected a 2-D post-padded array of token ids. Received shape {sequences.shape}."
            raise StructureError(msg)
        n, width = sequences.shape
        return sequences.reshape(-1), np.arange(n + 1, dtype=np.int64) * width
    arrays = [a if a.size else a.astype(np.int32) for a in (np.asarray(s) for s in sequences)]  # [] is float
    bad = [i for i, a in enumerate(arrays) if a.ndim != 1]
    if bad:
        msg = (
            f"Expected every token sequence to be 1-D. Received sequence {bad[0]} with shape "
            f"{arrays[bad[0]].shape} ({len(bad)} such). Pass one list of token ids per caption."
        )
        raise StructureError(msg)
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)
    return flat, offsets


def _as_int32(flat: np.ndarray) -> np.ndarray:
    if flat.size == 0:
        return flat.astype(np.int32)
    if flat.dtype.kind not in "iu":
        msg = (
            f"Expected integer token ids. Received dtype {flat.dtype} (first values {flat[:5].tolist()}). "
            "Tokenize raw text first, e.g. kseq.text.tokenize(texts)."
        )
        raise StructureError(msg)
    if flat.min() < np.iinfo(np.int32).min or flat.max() > np.iinfo(np.int32).max:
        msg = f"Token ids must fit in int32. Received ids from {flat.min()} to {flat.max()}."
        raise StructureError(msg)
    return flat.astype(np.int32, copy=False)


def _lengths(flat: np.ndarray, offsets: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: length up to its last non-pad token, and whether a pad occurs before that."""
    n = len(offsets) - 1
    raw = np.diff(offsets)
    lengths = np.zeros(n, dtype=np.int64)
    real = np.zeros(n, dtype=np.int64)
    nonempty = raw > 0
    if flat.size and nonempty.any():
        starts = offsets[:-1][nonempty]
        is_real = flat != pad
        last = np.maximum.reduceat(np.where(is_real, np.arange(1, flat.size + 1), 0), starts)
        lengths[nonempty] = np.where(last > 0, last - starts, 0)
        real[nonempty] = np.add.reduceat(is_real.astype(np.int64), starts)
    return lengths, real != lengths
