"""StatefulSequenceDataset: fixed-size batches of parallel, contiguous streams for stateful RNNs.

# NOTE [ stateful datasets and Keras 3.15 ]
A stateful RNN layer keeps one state per batch row and carries it into the next batch.
Keras 3.15 leaves the rest to the data:

* every batch must have the layer's batch size: a short last batch fails. Here every
  batch has exactly ``batch_size`` rows; a stream that runs out is padded, and padded
  steps get sample weight 0, so nothing is dropped and padding does not count.
* row ``i`` of batch ``k + 1`` must continue row ``i`` of batch ``k``: the layout is in
  :mod:`kseq.samplers.streams` (NOTE [ stateful streams ]).
* ``fit(shuffle=True)``, the default, asks for batches in a random order. The order is
  the meaning of a stateful stream, so ``__getitem__`` refuses any jump (batch ``k`` may
  only follow ``k - 1``; a restart at 0 is always fine: a new epoch, ``evaluate`` or
  ``predict``, and the two batches ``fit`` reads on TensorFlow to infer its signature).
  ``get_batch`` stays pure and free to call in any order.
* workers: Keras' own pool would call ``__getitem__`` from several threads at once, out of
  order even when it delivers in order. kseq's datasets never hand Keras a pool: Keras
  iterates inline, so ``__getitem__`` sees Keras' order and checks it, and kseq's pool
  (``workers=``, ``use_multiprocessing=``) computes the pure ``get_batch(index, epoch)``
  ahead, in that same order (NOTE [ prefetching and fit(shuffle=True) ] in
  :mod:`kseq.workers.loader`). So every worker setting is safe here.
* only layers have ``reset_state()`` and nothing calls it between epochs, nor between
  two sequences sharing a stream: :class:`kseq.callbacks.ResetStates` does both, from
  :meth:`StatefulSequenceDataset.starts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from kseq.datasets.base import Dataset
from kseq.errors import StructureError
from kseq.samplers.streams import StreamLayout, StreamSampler
from kseq.sources import ArraySource, Source, as_source
from kseq.sources.concat import ConcatSource
from kseq.validation import CheckReport, check_looped_rnn_rows, looped_rnn_rows
from kseq.validators import batch_index, integer, known_fields, one_of

__all__ = ["StatefulSequenceDataset"]

Names = str | Sequence[str]


class StatefulSequenceDataset(Dataset):
    """Batches of ``batch_size`` parallel streams: row ``i`` of batch ``k + 1`` continues row ``i`` of batch ``k``.

    Each batch is ``(x, y, sample_weight)``: ``x`` of shape ``(batch_size, timesteps, F)``,
    ``y`` the targets of every step (``(batch_size, timesteps, Fy)``, for a model whose
    last RNN has ``return_sequences=True``), and ``sample_weight`` of shape
    ``(batch_size, timesteps)``, 1 for real steps and 0 for padding. Step ``t`` of a
    sequence is paired with the target at ``t + target_offset``: the next step of x by
    default, or the fields named by ``targets``. Every real step is used exactly once per
    epoch, in the same order every epoch.

    With ``target_steps="last"`` (many-to-one, a model whose last RNN returns one value per
    window) ``y`` is the target of each window's last step only, ``(batch_size, Fy)``, and
    ``sample_weight`` is ``(batch_size,)``: 1 for a full window, 0 for a window that padding
    ends (the model's output there follows padded steps). So the last, partial window of a
    series trains nothing in this mode; choose ``timesteps`` dividing the series' lengths to
    use every step.

    Train with ``model.fit(ds, shuffle=False, callbacks=[kseq.ResetStates(ds)])`` and a
    model built on :meth:`keras_input`. See NOTE [ stateful datasets and Keras 3.15 ].

    Args:
        series: one series, or a list of independent series (of any lengths). A series is
            an array ``(T,)`` or ``(T, F)`` (one field, named ``"series"``), a pandas
            ``Series`` or ``DataFrame`` (fields are its columns), a dict of arrays, the path
            of an HDF5 file (its datasets are the fields), or any :class:`~kseq.sources.Source`
            (an :class:`~kseq.sources.HDF5Source` of some datasets, say). Every series must
            have the same fields.
        batch_size: rows per batch, the number of parallel streams (the model's batch size). With a
            ``shard`` over ``n`` processes it is the global count: each process gets ``batch_size / n``
            whole streams, and its model takes that many rows (:meth:`keras_input` says so).
        timesteps: steps per window: the length of truncated backpropagation.
        inputs: the field(s) that make x, concatenated on the last axis (default: all).
        targets: the field(s) that make y; ``None`` predicts x itself, ``target_offset``
            steps ahead.
        target_offset: steps from an input to its target, ``>= 0`` (``>= 1`` when
            ``targets=None``). The last ``target_offset`` steps of each series are only
            targets.
        target_steps: ``"all"`` (default): a target per step; ``"last"``: the target of each
            window's last step, for a model that returns one value per window.
        stride: steps between the starts of consecutive windows of a stream. Only
            ``timesteps`` (the default) keeps the carried state exact; any other value is
            refused with the reason (``TimeseriesGenerator`` users are used to ``stride=1``).
        split: cut series at window boundaries so that every stream is used; each cut
            starts a fresh state. Default: ``True`` for one series, ``False`` for a list.
        seed: exposed as ``ds.seed`` for :meth:`batch_rng`; the layout uses no randomness.
        shuffle: must stay ``False``.
        workers, use_multiprocessing, max_queue_size, start_method, timeout, shard: kseq's worker pool and
            this process's shard of the streams, as for
            :class:`~kseq.datasets.base.Dataset`; batches are still served strictly in order.

    Raises:
        StructureError: at construction, for ``shuffle=True``, a ``stride`` other than
            ``timesteps``, unknown or mismatched fields, a series too short for
            ``target_offset``; when served a batch out of order.

    Example:
        >>> import numpy as np
        >>> ds = StatefulSequenceDataset(np.arange(11.0), batch_size=2, timesteps=3)
        >>> len(ds)  # 10 inputs (the last step is only a target) in 4 windows, two streams
        2
        >>> x, y, w = ds[0]
        >>> x[:, :, 0].tolist(), y[:, :, 0].tolist()
        ([[0.0, 1.0, 2.0], [6.0, 7.0, 8.0]], [[1.0, 2.0, 3.0], [7.0, 8.0, 9.0]])
        >>> x, y, w = ds[1]  # the streams continue; padding weighs 0
        >>> x[:, :, 0].tolist(), w.tolist()
        ([[3.0, 4.0, 5.0], [9.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
        >>> ds[0][0].shape  # a restart at 0 is fine; a jump (ds[1] again) is refused
        (2, 3, 1)
    """

    def __init__(
        self,
        series: Any,
        *,
        batch_size: int,
        timesteps: int,
        inputs: Names | None = None,
        targets: Names | None = None,
        target_offset: int = 1,
        target_steps: Literal["all", "last"] = "all",
        stride: int | None = None,
        split: bool | None = None,
        seed: int | None = None,
        shuffle: bool = False,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        start_method: str | None = None,
        shard: Any = None,
        timeout: float | None = None,
    ) -> None:
        _refuse_shuffle(shuffle)
        self.timesteps = integer(timesteps, "timesteps", minimum=1)
        _check_stride(stride, self.timesteps)
        sources, self._several = _as_sources(series)
        fields = _common_fields(sources)
        self.inputs = _names(inputs, "inputs", fields)
        self.targets = None if targets is None else _names(targets, "targets", fields)
        self.target_offset = _check_offset(target_offset, self.targets, self.inputs)
        self.target_steps = one_of(target_steps, "target_steps", ("all", "last"))
        _check_widths(self.inputs, "inputs", fields)
        _check_widths(self.targets or self.inputs, "targets", fields)
        self.lengths = _usable_lengths(sources, self.target_offset)
        self._split_given = split
        self.split = (not self._several) if split is None else bool(split)
        self._rows = np.concatenate([[0], np.cumsum([len(s) for s in sources])[:-1]]).astype(np.int64)
        super().__init__(
            sources[0] if len(sources) == 1 else ConcatSource(sources),
            batch_size=batch_size,
            shuffle=False,
            seed=seed,
            workers=workers,
            use_multiprocessing=use_multiprocessing,
            max_queue_size=max_queue_size,
            start_method=start_method,
            shard=shard,
            timeout=timeout,
        )
        self.build_own_sampler(StatefulSequenceDataset)

    # -- the parts of Dataset this class overrides ------------------------------

    def make_sampler(self) -> StreamSampler:
        return StreamSampler(
            self.lengths, batch_size=self.batch_size, timesteps=self.timesteps, split=self.split, bases=self._rows
        )

    @property
    def sampler(self) -> StreamSampler:
        """The stream layout's sampler (typed: :meth:`starts` and :attr:`layout` read it)."""
        return cast(StreamSampler, super().sampler)

    def read_rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The steps of one batch: ``{"inputs": (B, T, F), "targets": (B, T, Fy), "real": (B, T)}``.

        ``indices`` is the sampler's ``(B, T)`` grid of step rows, ``-1`` where a stream is padded;
        padded slots are zero and ``real`` is false there. Each target is the step ``target_offset``
        after its input.
        """
        real = indices >= 0
        x_rows = indices[real]
        y_rows = x_rows + self.target_offset
        if self.targets is None:  # one read of both: the same fields, mostly the same rows
            both = _features(self.source.read(np.concatenate([x_rows, y_rows]), self.inputs), self.inputs)
            x_values, y_values = both[: len(x_rows)], both[len(x_rows) :]
        else:
            x_values = _features(self.source.read(x_rows, self.inputs), self.inputs)
            y_values = _features(self.source.read(y_rows, self.targets), self.targets)
        return {"inputs": _place(x_values, real), "targets": _place(y_values, real), "real": real}

    def build_batch(self, rows: dict[str, np.ndarray]) -> tuple:
        """``(x, y, sample_weight)``: the sample weight is 1 on real steps and 0 on padding.

        With ``target_steps="last"``: y is the last step's target and the weight 1 for full windows.
        """
        if self.target_steps == "last":  # padding only ends a window: its last step is real iff it is full
            return rows["inputs"], rows["targets"][:, -1], rows["real"][:, -1].astype(np.float32)
        return rows["inputs"], rows["targets"], rows["real"].astype(np.float32)

    def __getitem__(self, index: int) -> tuple:
        if index not in (0, self.position):  # position: one past the last batch served, or set by set_state
            raise StructureError(_order_message(index, self.position - 1 if self.position else None, len(self)))
        return super().__getitem__(index)

    def check(self, model: Any, *, verbose: bool = True) -> CheckReport:
        """:func:`kseq.check`, and the model's stateful layers and input must take ``batch_size`` rows.

        A compiled model (one meant to be fit) whose stateful recurrent layers loop over one row is refused
        on TensorFlow, where Keras 3.15 cannot train it from a PyDataset (NOTE [ a stateful RNN at batch size 1
        on TensorFlow ] in :mod:`kseq.validation`).
        """
        import keras  # kseq.callbacks imports Keras too

        from kseq.callbacks import check_stateful_model, stateful_layers

        check_stateful_model(model, self.local_batch_size)
        if getattr(model, "compiled", False):
            check_looped_rnn_rows(looped_rnn_rows(stateful_layers(model)), keras.backend.backend(), "fit")
        return super().check(model, verbose=verbose)

    # -- the stateful API -------------------------------------------------------

    @property
    def layout(self) -> StreamLayout:
        """Where every window sits (sequence, first step, real steps, starts), ``(len(ds), batch_size)`` each."""
        return self.sampler.layout

    def starts(self, index: int) -> np.ndarray:
        """A boolean per row of batch ``index``: true where a new sequence (or piece) begins.

        The state of those rows must be reset before the batch; at batch 0 every row starts.
        """
        return self.shard.take(self.sampler.starts(batch_index(index, len(self))), self.batch_size)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one step of x: ``(F,)`` for F features."""
        return _trailing(self.inputs, self.source.fields)

    def keras_input(self, *, name: str | None = None, open_time_axis: bool = False) -> Any:
        """``keras.Input(batch_shape=(batch_size, timesteps, *feature_shape))``: a stateful model's input.

        ``open_time_axis=True`` gives ``None`` timesteps: one model for windows of any length.
        """
        import keras  # here, not at the top: NOTE [ a Keras class only where Keras is fed ]

        steps = None if open_time_axis else self.timesteps
        common = np.result_type(*[self.source.fields[n][1] for n in self.inputs])
        dtype = keras.config.floatx() if common.kind == "f" else str(common)
        shape = (self.local_batch_size, steps, *self.feature_shape)
        return keras.Input(batch_shape=shape, dtype=dtype, name=name)

    def like(self, series: Any, **changes: Any) -> StatefulSequenceDataset:
        """A dataset over other series with these settings (validation data, a test period).

        ``changes`` overrides any keyword, e.g. ``batch_size=1`` to forecast one stream.
        """
        pool = self.worker_config
        settings = {
            "batch_size": self.batch_size,
            "timesteps": self.timesteps,
            "inputs": self.inputs,
            "targets": self.targets,
            "target_offset": self.target_offset,
            "target_steps": self.target_steps,
            "split": self._split_given,
            "seed": self.seed,
            "workers": pool.workers,
            "use_multiprocessing": pool.use_multiprocessing,
            "max_queue_size": pool.max_queue_size,
            "start_method": pool.start_method,
            "shard": self.shard,
            "timeout": pool.timeout,
        }
        return StatefulSequenceDataset(series, **{**settings, **changes})

    def to_series(self, predictions: Any) -> np.ndarray | list[np.ndarray]:
        """Put per-step model outputs back in the time order of each series, padding dropped.

        Args:
            predictions: ``model.predict(ds)``, of shape ``(len(ds) * batch_size, timesteps, ...)``.

        Returns:
            For each series, an array whose element ``t`` is the output for input step ``t``,
            that is the prediction of the target at ``t + target_offset``; a list when
            ``series`` was a list.
        """
        if self.target_steps == "last":
            msg = (
                'to_series puts per-step outputs back in time order; this dataset has target_steps="last" (one '
                "output per window). Expected per-step predictions: predict on ds.like(series, target_steps='all') "
                "with a model that returns sequences, or read each window's end from ds.layout."
            )
            raise StructureError(msg)
        if not self.shard.single:
            msg = (
                f"to_series needs the predictions of every stream, and this dataset is shard {self.shard.index} of "
                f"{self.shard.count}. Expected an unsharded dataset: predict on ds.like(series, shard=None) in one "
                "process."
            )
            raise StructureError(msg)
        values = np.asarray(predictions)
        expected = (len(self) * self.batch_size, self.timesteps)
        if values.shape[:2] != expected:
            msg = (
                f"Expected per-step predictions of shape {(*expected, '...')} (one row per stream slot of "
                f"every batch; the last RNN needs return_sequences=True). Received shape {values.shape}."
            )
            raise StructureError(msg)
        layout = self.layout
        offsets = np.arange(self.timesteps)
        real = offsets < layout.length[..., None]
        step = (layout.start[..., None] + offsets)[real]
        sequence = np.broadcast_to(layout.sequence[..., None], real.shape)[real]
        bounds = np.concatenate([[0], np.cumsum(self.lengths)])
        out = np.empty((bounds[-1], *values.shape[2:]), dtype=values.dtype)
        out[bounds[sequence] + step] = values.reshape(*real.shape, *values.shape[2:])[real]
        pieces = np.split(out, bounds[1:-1])
        return pieces if self._several else pieces[0]

    def __repr__(self) -> str:
        return (
            f"StatefulSequenceDataset({len(self.lengths)} series, {sum(self.lengths)} steps, "
            f"batch_size={self.batch_size}, timesteps={self.timesteps}, {len(self)} batches, "
            f"inputs={self.inputs}, targets={self.targets or 'next step'}, target_offset={self.target_offset}"
            + ("" if self.target_steps == "all" else f", target_steps={self.target_steps!r}")
            + ")"
        )


# -- construction checks ------------------------------------------------------------


def _refuse_shuffle(shuffle: object) -> None:
    if not (isinstance(shuffle, (bool, np.bool_)) and not shuffle):
        msg = (
            "StatefulSequenceDataset cannot shuffle: row i of batch k+1 must continue row i of batch k. "
            f"Expected shuffle=False. Received shuffle={shuffle!r}. Pass fit(..., shuffle=False) too."
        )
        raise StructureError(msg)


def _check_stride(stride: object, timesteps: int) -> None:
    if integer(stride, "stride", minimum=1, optional=True) in (None, timesteps):
        return
    msg = (
        f"stride must equal timesteps ({timesteps}) for a stateful model. Received stride={stride!r}. "
        "The state carried into a window is the state after the previous window's last step, so the window "
        "must start right after it: a smaller stride feeds steps twice, a larger one skips steps. Pass "
        f"stride=None; for overlapping windows use a stateless model (e.g. keras.utils.timeseries_dataset_from_array)."
    )
    raise StructureError(msg)


def _check_offset(offset: object, targets: list[str] | None, inputs: list[str]) -> int:
    offset = integer(offset, "target_offset", minimum=0)
    if targets is None and offset == 0:
        msg = (
            "With targets=None the target is x itself, target_offset steps ahead. Received target_offset=0, "
            "which asks the model to copy its input. Expected target_offset >= 1, or name targets=."
        )
        raise StructureError(msg)
    leaked = sorted(set(inputs) & set(targets or []))
    if offset == 0 and leaked:
        msg = (
            f"With target_offset=0 the target field(s) {leaked} are also inputs: the model would see its answer. "
            f"Expected inputs without them. Received inputs={inputs}, targets={targets}. "
            f"Pass inputs={[n for n in inputs if n not in leaked]}."
        )
        raise StructureError(msg)
    return offset


def _as_sources(series: Any) -> tuple[list[Source], bool]:
    several = isinstance(series, (list, tuple))
    items = list(series) if several else [series]
    if several and (not items or all(isinstance(s, (int, float, np.number)) for s in items)):
        msg = (
            "Expected one series, or a list of series (arrays, DataFrames, Sources). "
            f"Received a list of {len(items)} scalars. Pass np.asarray(values) for one series."
        )
        raise StructureError(msg)
    return [_as_source(s, j) for j, s in enumerate(items)], several


def _as_source(series: Any, position: int) -> Source:
    if isinstance(series, pd.Series):
        name = series.name if isinstance(series.name, str) else "series"
        return ArraySource({name: series.to_numpy()})
    if isinstance(series, np.ndarray):
        if series.ndim == 0:
            msg = f"Series {position} is a scalar. Expected an array of shape (T,) or (T, F)."
            raise StructureError(msg)
        return ArraySource({"series": series})
    return as_source(series)


def _common_fields(sources: list[Source]) -> Mapping[str, tuple[tuple[int, ...], np.dtype]]:
    first = sources[0].fields
    for j, source in enumerate(sources[1:], start=1):
        fields = source.fields
        same = list(fields) == list(first) and all(
            fields[n][0] == first[n][0] and np.dtype(fields[n][1]).kind == np.dtype(first[n][1]).kind for n in first
        )
        if not same:
            msg = (
                f"Every series must have the same fields, trailing shapes and kinds of dtype. Expected "
                f"{_describe(first)} (series 0). Received {_describe(fields)} (series {j})."
            )
            raise StructureError(msg)
    return first


_SERIES_FIELD = "(A bare array is the field 'series'.)"


def _names(names: Names | None, argument: str, fields: Mapping) -> list[str]:
    chosen = list(fields) if names is None else known_fields(names, fields, argument, fix=_SERIES_FIELD)
    if not chosen:
        msg = f"{argument} must be a field name or a list of field names. Received {argument}={names!r:.80}."
        raise StructureError(msg)
    return chosen


def _check_widths(names: list[str], argument: str, fields: Mapping) -> None:
    wide = [n for n in names if len(fields[n][0]) > 1]
    if len(names) > 1 and wide:
        msg = (
            f"{argument} {names} are concatenated on the feature axis, so each must be (T,) or (T, F). "
            f"Received {_describe({n: fields[n] for n in wide})}. Use that field alone, or flatten it."
        )
        raise StructureError(msg)


def _usable_lengths(sources: list[Source], offset: int) -> list[int]:
    lengths = [len(s) - offset for s in sources]
    short = {j: len(s) for j, s in enumerate(sources) if len(s) - offset < 1}
    if short:
        msg = (
            f"Series {sorted(short)} are too short: with target_offset={offset} a series needs at least "
            f"{offset + 1} steps. Received lengths {short}. Drop them or lower target_offset."
        )
        raise StructureError(msg)
    return lengths


# -- batch assembly -------------------------------------------------------------------


def _features(data: Mapping[str, np.ndarray], names: list[str]) -> np.ndarray:
    arrays = [data[n] if data[n].ndim > 1 else data[n][:, None] for n in names]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=-1)


def _place(values: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Scatter the rows of the real slots (in row-major order) into a zero-padded ``(B, T, ...)`` array."""
    if real.all():
        return values.reshape(*real.shape, *values.shape[1:])
    out = np.zeros((*real.shape, *values.shape[1:]), dtype=values.dtype)
    out[real] = values
    return out


def _trailing(names: list[str], fields: Mapping) -> tuple[int, ...]:
    shapes = [fields[n][0] or (1,) for n in names]
    if len(shapes) == 1:
        return tuple(shapes[0])
    return (sum(s[0] for s in shapes),)


def _order_message(index: int, last: int | None, length: int) -> str:
    served = "no batch yet" if last is None else f"batch {last} last"
    expected = "batch 0" if last is None or last + 1 >= length else f"batch {last + 1} (or 0 to restart)"
    return (
        f"StatefulSequenceDataset was asked for batch {index} after serving {served}. A stateful stream must be "
        f"read in order: row i of batch k+1 continues row i of batch k. Expected {expected}. "
        "Keras fit(shuffle=True), the default, asks for batches in a random order: call "
        "model.fit(ds, shuffle=False, ...). To look at one batch out of order, use ds.get_batch(index)."
    )


def _describe(fields: Mapping[str, tuple[tuple[int, ...], Any]]) -> str:
    return "{" + ", ".join(f"{k}: {shape} {np.dtype(dtype)}" for k, (shape, dtype) in fields.items()) + "}"
