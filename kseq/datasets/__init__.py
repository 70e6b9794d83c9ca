"""The kseq dataset family: PyDataset subclasses composed of a Source, a Sampler and batch assembly."""

from kseq.datasets.base import Dataset
from kseq.datasets.caption import CaptionDataset
from kseq.datasets.multi_input import MultiInputDataset
from kseq.datasets.siamese import SiamesePairDataset, TripletDataset
from kseq.datasets.stateful import StatefulSequenceDataset
from kseq.datasets.view import ModelView

__all__ = [
    "CaptionDataset",
    "Dataset",
    "ModelView",
    "MultiInputDataset",
    "SiamesePairDataset",
    "StatefulSequenceDataset",
    "TripletDataset",
]
