"""Position: the epoch of each batch request (NOTE [ epochs are passes ] in kseq/position.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kseq.position import PEEK_BATCHES, Position

pytestmark = pytest.mark.portable


def serve(position, indices):
    return [position.request(i) for i in indices]


class TestKerasPeeks:
    def test_tensorflow_s_signature_peek_moves_no_epoch(self):
        """TF reads batches 0 and 1, ends an epoch, then trains: epoch 0 is trained, each batch once."""
        p = Position(5)
        assert serve(p, [0, 1]) == [0, 0]
        p.end_epoch()
        assert serve(p, range(5)) == [0] * 5
        p.end_epoch()
        assert p.epoch == 1
        assert serve(p, range(5)) == [1] * 5

    @given(st.randoms(use_true_random=False), st.integers(3, 40), st.integers(1, 4))
    @settings(max_examples=200, deadline=None)
    def test_a_shuffled_peek_and_shuffled_epochs_keep_every_epoch_whole(self, random, length, epochs):
        """JAX/torch under fit(shuffle=True): one batch at a random index, then shuffled epochs."""
        p = Position(length)
        p.request(random.randrange(length))
        p.end_epoch()
        for epoch in range(epochs):
            order = list(range(length))
            random.shuffle(order)
            assert serve(p, order) == [epoch] * length
            assert not p.in_order or order == sorted(order)
            p.end_epoch()
        assert p.epoch == epochs


class TestPartialEpochs:
    @given(st.integers(PEEK_BATCHES + 1, 9), st.integers(10, 30))
    @settings(max_examples=100, deadline=None)
    def test_steps_per_epoch_below_len_serves_every_batch_once_per_epoch(self, steps, length):
        """fit(steps_per_epoch=k): Keras continues one index stream across its epochs; each dataset epoch
        is still every batch exactly once."""
        p = Position(length)
        stream = [i % length for i in range(length * 4)]
        epochs = []
        for start in range(0, len(stream), steps):
            epochs += serve(p, stream[start : start + steps])
            p.end_epoch()
        counts = np.bincount(epochs)
        assert counts[:4].tolist() == [length] * 4

    def test_a_loop_that_reads_part_of_an_epoch_then_ends_it_moves_on(self):
        p = Position(6)
        serve(p, [0, 1, 2])
        p.end_epoch()
        assert serve(p, [0, 1, 2]) == [1, 1, 1]

    def test_an_epoch_end_with_nothing_asked_for_changes_nothing(self):
        """tf.data read the batches ahead: Keras ends an epoch that asked for none (steps_per_epoch)."""
        p = Position(4)
        serve(p, [0, 1, 2, 3])
        p.end_epoch()
        p.end_epoch()
        assert serve(p, [0]) == [1]


class TestReaders:
    def test_a_reader_that_runs_ahead_gets_the_next_epoch_before_on_epoch_end(self):
        p = Position(3)
        assert serve(p, [0, 1, 2, 0, 1]) == [0, 0, 0, 1, 1]
        p.end_epoch()  # Keras's end of epoch 0 arrives late: the pass of epoch 1 stays open
        assert serve(p, [2]) == [1]
        p.end_epoch()
        assert p.epoch == 2

    def test_reading_a_batch_again_inside_a_pass_starts_the_pass_again(self):
        """A user's ds[0] before fit, or predict's signature: the same epoch again, in order."""
        p = Position(4)
        serve(p, [0])
        assert serve(p, [0, 1, 2, 3]) == [0, 0, 0, 0]
        assert p.in_order
        assert p.complete

    def test_a_restored_position_counts_the_batches_before_it(self):
        p = Position(5)
        p.set(3, 2)
        assert (p.epoch, p.next) == (3, 2)
        assert serve(p, [2, 3, 4, 0]) == [3, 3, 3, 4]
