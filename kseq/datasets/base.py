"""Dataset: a ``keras.utils.PyDataset`` composed of a Source, a Sampler and batch assembly.

# NOTE [ construction order ]
The constructor of :class:`Dataset` checks and stores its own arguments and calls no
method that a subclass overrides. The sampler is built by :meth:`Dataset.make_sampler`
the first time ``ds.sampler`` (or ``len(ds)``, or a batch) is read, so a subclass sets
its attributes before or after ``super().__init__()`` as it likes, and its
``make_sampler`` can use all of them.

Errors in the sampler's settings should still come at construction. So a constructor
ends with ``self.build_own_sampler(TheClass)``: it builds the sampler at once only when
the ``make_sampler`` in use is ``TheClass``'s own, whose inputs that constructor has
just set. When a further subclass overrides ``make_sampler``, its constructor may not be
done yet, so the sampler waits for first use (that subclass's constructor can end with
its own ``build_own_sampler`` call).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from kseq.datasets._pydataset import KerasFacing, Plan
from kseq.datasets.state import check_state, fingerprint, state_dict
from kseq.datasets.view import ModelView
from kseq.errors import KseqError, StructureError
from kseq.keras_compat import check_keras_sharding
from kseq.position import Position
from kseq.samplers import (
    BlockShuffleSampler,
    Sampler,
    SequentialSampler,
    ShuffleSampler,
    batch_rng,
    check_batch_size,
    draw_seed,
)
from kseq.samplers.shard import Part, Shard, ShardedSampler, resolve_shard
from kseq.sources import Source, as_source
from kseq.structure import ModelStructure, as_fed
from kseq.take import take
from kseq.validation import CheckReport, check
from kseq.validators import batch_index
from kseq.validators import seed as check_seed
from kseq.workers import BatchLoader, WorkerConfig, batch_context, current_batch
from kseq.workers.malloc import keep_tuned

__all__ = ["Dataset"]


class Dataset(KerasFacing):
    """A PyDataset that reads rows from a Source in the order a Sampler gives.

    Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: the same on
    any worker, in any order. ``model.fit``'s epoch ``e`` trains the dataset's epoch ``e``:
    an epoch is a pass over the batches, counted by :class:`~kseq.position.Position`
    (NOTE [ epochs are passes ]), so Keras's peeks before training move nothing.

    Subclasses override :meth:`build_batch`, which turns the rows of one batch
    (``{field: array}``) into ``(x, y)`` or ``(x, y, sample_weight)``. The default
    returns the rows as x alone (useful for ``predict``). :meth:`read_rows` (which rows
    of which fields a batch reads) and :meth:`make_sampler` (the order) may be overridden
    too; :meth:`get_batch` composes them and is the same for every kseq dataset:
    ``build_batch(read_rows(sampler.indices(epoch, index)))``. Inside either,
    :meth:`batch_position` and :meth:`batch_rng` tell the batch being built. See
    NOTE [ construction order ] for when the sampler is built.

    Args:
        source: a :class:`~kseq.sources.Source`, a dict of arrays, or a DataFrame.
        batch_size: rows per batch.
        shuffle: ``True``: draw a new sample order every epoch from ``(seed, epoch)``;
            ``"block"``: :class:`~kseq.samplers.BlockShuffleSampler` over the source's chunks
            (compressed HDF5: each chunk is read about once per epoch); ``False``: in order.
        seed: the seed; ``None`` draws one at construction, exposed as ``ds.seed`` (and
            ``ds.seed_drawn`` is true: :meth:`set_state` then adopts the seed of the state it restores).
        drop_remainder: leave out the last partial batch of each epoch.
        workers, use_multiprocessing, max_queue_size: as for ``keras.utils.PyDataset``, but
            served by kseq's own persistent pool (see below); Keras sees an inline dataset.
        shard: ``None`` (one process), ``(index, count)`` or ``"auto"`` (from ``jax.distributed``,
            ``torch.distributed`` or ``TF_CONFIG``): this process's slice of every global batch of
            ``batch_size`` rows; see NOTE [ shards of a global batch ] in :mod:`kseq.samplers.shard`.
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"`` for worker processes;
            ``None``: ``fork`` where available (``forkserver`` under the JAX backend).
        timeout: seconds a worker may spend on one batch (``None``, the default: no limit); a slower
            batch raises :class:`~kseq.errors.WorkerError` with the stuck worker's stack, and the pool
            is replaced.

    Workers: ``workers=N`` computes batches in N threads, and ``workers=N,
    use_multiprocessing=True`` in N processes that return them through shared memory.
    The pool starts on the first batch, prefetches in the order batches will be asked
    for, and is kept across epochs and ``fit`` calls until :meth:`close`, the end of a
    ``with`` block, garbage collection, or exit. Batches are identical for any worker
    count, thread or process, and start method. Random transforms in :meth:`build_batch`
    should draw from ``self.batch_rng()`` (the batch being built); in worker processes the global ``np.random`` and
    ``random`` are also reseeded from ``(seed, epoch, index)`` before every batch. A
    failure in a worker raises :class:`~kseq.errors.WorkerError` with its traceback and
    batch index; a worker that dies is reported at once, never a hang. Workers hold the
    dataset as it was when the pool started: call :meth:`close` after changing it.

    Example:
        >>> import numpy as np
        >>> ds = Dataset({"x": np.arange(10.0)}, batch_size=4, seed=7)
        >>> len(ds), ds.seed
        (3, 7)
        >>> sorted(np.concatenate([ds[i][0]["x"] for i in range(len(ds))]).tolist()) == list(range(10))
        True
    """

    def __init__(
        self,
        source: Source | dict | Any,
        *,
        batch_size: int = 32,
        shuffle: bool | Literal["block"] = True,
        seed: int | None = None,
        drop_remainder: bool = False,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        start_method: str | None = None,
        timeout: float | None = None,
        shard: Shard | tuple[int, int] | Literal["auto"] | None = None,
    ) -> None:
        # Keras iterates inline and never starts its own pool; kseq runs its own (NOTE in kseq/workers/loader.py).
        self.worker_config = WorkerConfig(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size,
            start_method=start_method, timeout=timeout,
        )
        self._loader = None if self.worker_config.mode == "inline" else BatchLoader(self.worker_config)
        self.source = as_source(source)
        self.batch_size = check_batch_size(batch_size)
        self.shuffle = _check_shuffle(shuffle)
        self.seed = draw_seed() if seed is None else check_seed(seed, "seed")
        self.seed_drawn = seed is None
        self.drop_remainder = bool(drop_remainder)
        self.shard = resolve_shard(shard)
        self.shard.check_batch_size(self.batch_size)
        self._fingerprint: dict[str, Any] | None = None
        self._position: Position | None = None  # the one position tracker, made with the sampler
        self._start_epoch = 0
        self._sampler: Sampler | None = None
        self.build_own_sampler(Dataset)

    @property
    def sampler(self) -> Sampler:
        """Which rows make each batch; built by :meth:`make_sampler` on first use (NOTE [ construction order ])."""
        if self._sampler is None:
            sampler = self.make_sampler()
            if len(sampler) == 0:
                msg = (
                    f"{type(self).__name__} has no batches: {len(self.source)} rows, batch_size={self.batch_size}, "
                    f"drop_remainder={self.drop_remainder}. Lower batch_size or set drop_remainder=False."
                )
                raise StructureError(msg)
            self._sampler = sampler
        return self._sampler

    # -- the parts a subclass may override ---------------------------------------

    def build_own_sampler(self, owner: type[Dataset]) -> None:
        """Build the sampler now if the ``make_sampler`` in use is ``owner``'s (NOTE [ construction order ])."""
        if type(self).make_sampler is owner.make_sampler:
            self.sampler  # noqa: B018 - the read builds it and refuses an empty one

    def make_sampler(self) -> Sampler:
        """The sampler of this dataset; called once, the first time ``self.sampler`` is read."""
        n = len(self.source)
        if self.shuffle == "block":
            return BlockShuffleSampler.for_source(
                self.source, batch_size=self.batch_size, seed=self.seed, drop_remainder=self.drop_remainder
            )
        if self.shuffle:
            return ShuffleSampler(n, batch_size=self.batch_size, seed=self.seed, drop_remainder=self.drop_remainder)
        return SequentialSampler(n, batch_size=self.batch_size, drop_remainder=self.drop_remainder)

    def plain_shuffle(self) -> bool:
        """``self.shuffle`` for a subclass whose sampler draws its own order; refuses ``"block"``."""
        if self.shuffle == "block":
            msg = (
                f'{type(self).__name__} draws its own order and has no block shuffle. Received shuffle="block". '
                "Pass shuffle=True (a new order every epoch) or False."
            )
            raise StructureError(msg)
        return bool(self.shuffle)

    def read_rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Read the rows of one batch; by default every field, ``source.read(indices)``."""
        return self.source.read(indices, self.fields_read)

    @property
    def fields_read(self) -> Sequence[str] | None:
        """The fields :meth:`read_rows` reads (``None``: all)."""
        return None

    def build_batch(self, rows: dict[str, np.ndarray]) -> Any:
        """Turn one batch of rows into ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``."""
        return (rows,)

    # -- the PyDataset protocol ----------------------------------------------------

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, index: int) -> tuple:
        keep_tuned()  # TF's fit resets a threshold a user's tune_malloc() set (NOTE [ malloc thresholds ])
        index = batch_index(index, len(self))
        tracker = self.tracker
        if tracker.last is None:  # the first batch of a pass: is Keras sharding this dataset too?
            check_keras_sharding(self)
        epoch = tracker.request(index)
        if self._loader is None:  # get_batch is public and a subclass may override it; ours need not check again
            own = type(self).get_batch is Dataset.get_batch
            batch = self._batch(index, epoch) if own else self.get_batch(index, epoch)
        else:
            batch = self._loader.get(self.plan, epoch, index, len(self), tracker, owner=self)
        return as_fed(self._model_structure, batch)  # named, but for the deprecated set_structure()

    def on_epoch_end(self) -> None:
        """End a pass: the epoch advances once every batch was served (NOTE [ epochs are passes ])."""
        tracker = self.tracker
        before = tracker.epoch
        tracker.end_epoch()
        if self._loader is not None and tracker.epoch != before:
            self._loader.set_epoch(tracker.epoch)

    @property
    def tracker(self) -> Position:
        """This dataset's :class:`~kseq.position.Position`: its epoch and the pass in progress."""
        if self._position is None:
            self._position = Position(len(self), self._start_epoch)
        return self._position

    @property
    def epoch(self) -> int:
        """The epoch of the pass in progress (or of the next batch, between passes)."""
        return self.tracker.epoch if self._position is not None else self._start_epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.set_epoch(value)

    @property
    def position(self) -> int:
        """The next batch of this pass: one past the last served (NOTE [ dataset state ])."""
        return self.tracker.next if self._position is not None else 0

    @property
    def plan(self) -> Plan:
        """What this dataset's workers receive: its batches without Keras (NOTE [ a Keras class only where ...])."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            plan = self.__dict__["_plan"] = Plan(self)
        return plan

    @property
    def max_queue_size(self) -> int:
        """Batches kseq's pool keeps in flight or ready (what Keras reads; it starts no pool of its own)."""
        return self.worker_config.max_queue_size

    @max_queue_size.setter
    def max_queue_size(self, value: int) -> None:
        _refuse_pool_change("max_queue_size", value)

    @property
    def workers(self) -> int:
        """What Keras reads: 1, so that it iterates inline; kseq's pool size is ``worker_config.workers``."""
        return 1

    @workers.setter
    def workers(self, value: int) -> None:
        _refuse_pool_change("workers", value)

    @property
    def use_multiprocessing(self) -> bool:
        """What Keras reads: False; kseq's own setting is ``worker_config.use_multiprocessing``."""
        return False

    @use_multiprocessing.setter
    def use_multiprocessing(self, value: bool) -> None:
        _refuse_pool_change("use_multiprocessing", value)

    # -- kseq API --------------------------------------------------------------

    def get_batch(self, index: int, epoch: int | None = None) -> tuple:
        """Batch ``index`` of ``epoch`` (default: the current one), named, not adapted to a model.

        ``build_batch(read_rows(indices))`` for this process's rows of the global batch
        (all of them without a shard). A shard's batches carry sample weights, and a short
        shard of the last global batch is padded (NOTE [ shards of a global batch ]).
        """
        return self._batch(batch_index(index, len(self)), self.epoch if epoch is None else int(epoch))

    def _batch(self, index: int, epoch: int) -> tuple:
        part = self.local_sampler.part(epoch, index)
        with batch_context(epoch, index, self):  # NOTE [ global random generators in a batch ]
            batch = self.build_batch(self.read_part(part))
        return part.finish(_as_batch_tuple(batch, type(self).__name__))

    def read_part(self, part: Part) -> dict[str, np.ndarray]:
        """Read this process's rows of a global batch: :meth:`read_rows` of ``part.read`` (a subclass whose
        rows depend on the whole global batch, as :class:`~kseq.CaptionDataset`'s, reads ``part`` itself)."""
        return self.read_rows(part.read)

    @property
    def local_sampler(self) -> ShardedSampler:
        """:attr:`sampler` cut to this process's shard: where each batch's rows come from."""
        local = self.__dict__.get("_local_sampler")
        if local is None:
            local = self.__dict__["_local_sampler"] = ShardedSampler(self.sampler, self.shard, self.batch_size)
        return local

    @property
    def local_batch_size(self) -> int:
        """Rows in each of this process's batches: ``batch_size`` over the shard's process count."""
        return self.shard.rows_per_batch(self.batch_size)

    def take(self, n: int | None = None, *, epoch: int | None = None) -> Any:
        """The first ``n`` batches (default: the whole epoch) joined into arrays: :func:`kseq.take`."""
        return take(self, n, epoch=epoch)

    def get_state(self) -> dict[str, Any]:
        """Where this dataset is, as a small JSON-serialisable dict (NOTE [ dataset state ]).

        The epoch, the next batch (:attr:`position`: one past the last batch served), the
        seed, and a fingerprint of what defines the order. Independent of workers and shard.

        Example:
            >>> import json, numpy as np
            >>> ds = Dataset({"x": np.arange(10)}, batch_size=4, seed=3)
            >>> _ = ds[0]; saved = json.dumps(ds.get_state())
            >>> again = Dataset({"x": np.arange(10)}, batch_size=4, seed=3)
            >>> again.set_state(json.loads(saved))
            >>> again.position, np.array_equal(again[1][0]["x"], ds[1][0]["x"])
            (1, True)
        """
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self)
        return state_dict(self, self.epoch, self.position, self._fingerprint, self.shard)

    def set_state(self, state: dict[str, Any]) -> None:
        """Put this dataset at ``state``'s epoch and batch; a state of another dataset raises :class:`KseqError`.

        A dataset built with ``seed=None`` (its seed drawn, ``seed_drawn``) adopts the state's seed when
        nothing else differs: resuming a run nobody gave a seed is what restoring it means. A seed the user
        chose is never replaced: the error names the saved seed to pass.
        """
        saved = state.get("seed") if isinstance(state, dict) else None
        adopt = saved if self.seed_drawn and isinstance(saved, int) and saved != self.seed else None
        drawn = self.seed
        if adopt is not None:
            self._use_seed(adopt)
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self)
        try:
            epoch, batch = check_state(state, self, self._fingerprint)
        except KseqError:
            if adopt is not None:
                self._use_seed(drawn)
            raise
        self.seed_drawn = self.seed_drawn and adopt is None
        self.tracker.set(epoch, batch)
        if self._loader is not None:
            self._loader.resume_at(epoch, batch)  # batch `batch` comes next, in order: prefetch from there

    def _use_seed(self, seed: int) -> None:
        """Rebuild the order from ``seed`` (a drawn seed replaced by a restored one)."""
        self.close()  # workers hold the old order
        self.seed, self._sampler, self._fingerprint, self._position = int(seed), None, None, None
        self.__dict__.pop("_plan", None)
        self.__dict__.pop("_local_sampler", None)  # it holds the old sampler

    def batch_position(self) -> tuple[int, int]:
        """``(epoch, index)`` of the batch being built, inside :meth:`read_rows` or :meth:`build_batch`.

        The same inline, in threads and in worker processes (where ``self.epoch`` may lag).
        For a subclass whose batch depends on its position, e.g. a width that differs for batch 1.
        """
        current = current_batch()
        if current is None:
            msg = (
                "batch_position() must be called while a batch is being built (inside read_rows or "
                "build_batch). Received a call outside a batch. Call get_batch(index, epoch) instead."
            )
            raise StructureError(msg)
        return current

    def batch_rng(self, index: int | None = None, epoch: int | None = None) -> np.random.Generator:
        """A generator for random per-sample transforms, seeded by ``(seed, epoch, index)``.

        With no arguments, inside :meth:`build_batch` or :meth:`read_rows` (or a
        :meth:`get_batch` override run by a worker), it is the batch being computed:
        the same inline, in threads and in processes. ``epoch`` defaults to the
        batch's epoch there, and to ``self.epoch`` outside a batch.
        """
        current = current_batch()
        if index is None:
            if current is None:
                msg = (
                    "batch_rng() without arguments must be called while a batch is being built (inside "
                    "build_batch or read_rows), where it knows the batch. Received a call outside a batch. "
                    "Pass the batch explicitly: batch_rng(index, epoch)."
                )
                raise StructureError(msg)
            epoch_now, index = current
            return batch_rng(self.seed, epoch_now if epoch is None else epoch, index)
        if epoch is None:
            epoch = current[0] if current is not None else self.epoch
        return batch_rng(self.seed, epoch, index)

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch`` (to resume a run: the order of every later epoch is reproduced)."""
        if self._position is None:
            self._start_epoch = int(epoch)
        else:
            self.tracker.set(int(epoch), 0)
        if self._loader is not None:
            self._loader.set_epoch(int(epoch))

    def close(self) -> None:
        """Stop this dataset's worker pool and remove its shared memory (a later batch starts a new pool)."""
        if self._loader is not None:
            self._loader.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check(self, model: Any, *, verbose: bool = True) -> CheckReport:
        """``kseq.check(model, self)``: compare batch 0 with ``model``; read-only (:meth:`for_model` adapts)."""
        return check(model, self, verbose=verbose)

    def for_model(self, model: Any) -> ModelView:
        """A new PyDataset of this dataset's batches in ``model``'s structure, checked first; see :class:`ModelView`.

        This dataset stays named (``ds[i]`` unchanged), so it can serve other models through their own views.
        """
        return ModelView(self, model)

    def set_structure(self, structure: ModelStructure | None) -> None:
        """Deprecated: train on ``ds.for_model(model)`` instead, which leaves this dataset named.

        Emits batches in ``structure``'s form from now on (``None``: named, as built), for every user of
        this dataset: another model with inputs in another order would get arrays in the wrong places.
        """
        warnings.warn(
            "Dataset.set_structure() is deprecated: it changes what ds[i] returns for every model that reads this "
            "dataset. Use view = ds.for_model(model) and pass the view to fit; ds itself stays named.",
            DeprecationWarning,
            stacklevel=2,
        )
        self._model_structure = structure

    _model_structure: ModelStructure | None = None

    @property
    def model_structure(self) -> ModelStructure | None:
        """``None``: ``ds[i]`` is named; :meth:`for_model` makes a view that adapts (:func:`~kseq.structure.as_fed`)."""
        return self._model_structure

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.source)} rows, batch_size={self.batch_size}, "
            f"{len(self)} batches, shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch}"
            + ("" if self.shard.single else f", shard {self.shard.index} of {self.shard.count}")
            + ")"
        )


def _refuse_pool_change(name: str, value: object) -> None:
    msg = (
        f"Cannot set {name}={value!r} on a kseq dataset after construction: kseq runs its own worker pool, "
        f"configured once. Pass {name}= to the constructor instead."
    )
    raise StructureError(msg)


def _check_shuffle(shuffle: object) -> bool | Literal["block"]:
    if shuffle == "block":
        return "block"
    if isinstance(shuffle, (bool, np.bool_)):
        return bool(shuffle)
    msg = f'shuffle must be True, False or "block". Received shuffle={shuffle!r}.'
    raise StructureError(msg)


def _as_batch_tuple(batch: Any, owner: str) -> tuple:
    if isinstance(batch, tuple) and 1 <= len(batch) <= 3:
        return batch
    if isinstance(batch, list):
        msg = (
            f"{owner}.build_batch returned a list of {len(batch)}. Keras reads a list as (x, y), so "
            "[x1, x2] would train x2 as a target. Expected a tuple (x,), (x, y) or (x, y, sample_weight); "
            "return ({'in1': x1, 'in2': x2}, y) for several inputs."
        )
        raise StructureError(msg)
    if isinstance(batch, tuple):
        msg = f"{owner}.build_batch returned a tuple of {len(batch)}; expected 1 to 3 (x, y, sample_weight)."
        raise StructureError(msg)
    return (batch,)
