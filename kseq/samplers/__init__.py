"""Samplers: pure functions of (seed, epoch, batch) that choose the rows of each batch."""

from kseq.samplers.base import Sampler, batch_rng, check_batch_size, draw_seed, epoch_rng, num_batches
from kseq.samplers.block import BlockShuffleSampler, block_permutation
from kseq.samplers.order import SequentialSampler, ShuffleSampler, epoch_permutation

__all__ = [
    "BlockShuffleSampler",
    "Sampler",
    "SequentialSampler",
    "ShuffleSampler",
    "batch_rng",
    "block_permutation",
    "check_batch_size",
    "draw_seed",
    "epoch_permutation",
    "epoch_rng",
    "num_batches",
]
