"""Samplers: pure functions of (seed, epoch, batch) that choose the rows of each batch."""

from kseq.samplers.base import Sampler, batch_rng, check_batch_size, draw_seed, epoch_rng, num_batches
from kseq.samplers.block import BlockShuffleSampler, block_permutation
from kseq.samplers.caption import CaptionSampler
from kseq.samplers.order import SequentialSampler, ShuffleSampler, epoch_permutation
from kseq.samplers.pairs import ClassIndex, PairSampler, PKSampler, TripletSampler, positives_in
from kseq.samplers.shard import Shard, ShardedSampler
from kseq.samplers.streams import StreamLayout, StreamSampler, stream_layout

__all__ = [
    "BlockShuffleSampler",
    "CaptionSampler",
    "ClassIndex",
    "PKSampler",
    "PairSampler",
    "Sampler",
    "SequentialSampler",
    "Shard",
    "ShardedSampler",
    "ShuffleSampler",
    "StreamLayout",
    "StreamSampler",
    "TripletSampler",
    "batch_rng",
    "block_permutation",
    "check_batch_size",
    "draw_seed",
    "epoch_permutation",
    "epoch_rng",
    "num_batches",
    "positives_in",
    "stream_layout",
]
