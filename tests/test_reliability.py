"""Reliability: class-weight lookups, which error a missing field raises, and (below) the worker pool
under SIGKILL, a small /dev/shm, stuck workers and the global random generators."""

import h5py
import numpy as np
import pytest

from kseq.batching import ClassWeights
from kseq.errors import SourceError, StructureError
from kseq.sources import ArraySource, HDF5Source


@pytest.mark.portable
class TestClassWeights:
    def test_a_class_missing_from_the_mapping_is_refused_not_given_a_neighbours_weight(self):
        """Construction normally checks coverage; the lookup itself refuses too (class 1 sorts between 0 and 2)."""
        cw = ClassWeights({0: 1.0, 2: 3.0})
        assert cw(np.array([2, 0, 2])).tolist() == [3.0, 1.0, 3.0]
        with pytest.raises(StructureError, match=r"no weight for class\(es\) \[1\].*received keys \[0, 2\]"):
            cw(np.array([0, 1, 2]))
        with pytest.raises(StructureError, match=r"no weight for class\(es\) \[7\]"):
            cw(np.array([7]))

    @pytest.mark.parametrize("shape", [(4, 5, 3), (4, 5, 1), (4, 0)])
    def test_labels_without_one_class_per_sample_are_a_structure_error(self, shape):
        """Float per-step labels (B, T, C) used to fail inside a numpy reshape."""
        cw = ClassWeights({0: 1.0, 1: 2.0, 2: 3.0})
        with pytest.raises(StructureError, match=rf"one class per sample.*Received labels of shape \({shape[0]}, "):
            cw(np.zeros(shape, "float32"))

    def test_per_sample_ids_one_hot_and_probabilities(self):
        cw = ClassWeights({0: 1.0, 1: 2.0, 2: 3.0})
        assert cw(np.array([[2], [0]])).tolist() == [3.0, 1.0]
        assert cw(np.array([[[1]], [[2]]])).tolist() == [2.0, 3.0]
        assert cw(np.eye(3, dtype="int32")[[1, 2]]).tolist() == [2.0, 3.0]
        assert cw(np.array([[0.1, 0.7, 0.2]], "float32")).tolist() == [2.0]

    def test_non_numeric_labels_are_a_structure_error(self):
        with pytest.raises(StructureError, match=r"Received labels of shape \(2,\) \(<U1\)"):
            ClassWeights({0: 1.0})(np.array(["a", "b"]))


@pytest.mark.portable
class TestMissingField:
    """kseq/errors.py's rule: a field *name* the source lacks is a StructureError; a *file* without the
    dataset it was opened for is a SourceError."""

    def test_reading_a_field_the_source_does_not_have_is_a_structure_error(self, tmp_path):
        with h5py.File(tmp_path / "f.h5", "w") as f:
            f.create_dataset("x", data=np.arange(4.0))
        for src in (ArraySource({"x": np.arange(4.0)}), HDF5Source(tmp_path / "f.h5")):
            with pytest.raises(StructureError, match=r"fields names field\(s\) \['y'\].*Expected fields from \['x'\]"):
                src.read([0], fields=["y"])

    def test_opening_a_file_without_the_dataset_is_a_source_error(self, tmp_path):
        with h5py.File(tmp_path / "f.h5", "w") as f:
            f.create_dataset("x", data=np.arange(4.0))
        with pytest.raises(SourceError, match=r"Field 'y': '.*f\.h5' has no dataset '/y'"):
            HDF5Source(tmp_path / "f.h5", fields=["y"])
