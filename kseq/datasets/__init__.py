"""The kseq dataset family: PyDataset subclasses composed of a Source, a Sampler and batch assembly."""

from kseq.datasets.base import Dataset
from kseq.datasets.multi_input import MultiInputDataset

__all__ = ["Dataset", "MultiInputDataset"]
