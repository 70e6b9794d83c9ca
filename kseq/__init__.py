"""kseq: Keras 3 PyDataset subclasses for named, seeded, fast batches.

Example:
    >>> import numpy as np, kseq
    >>> ds = kseq.MultiInputDataset({"a": np.zeros((10, 3)), "t": np.ones(10)}, inputs="a", targets="t", seed=0)
    >>> ds.seed
    0
"""

from kseq import legacy
from kseq.callbacks import ResetStates
from kseq.datasets import (
    CaptionDataset,
    Dataset,
    MultiInputDataset,
    SiamesePairDataset,
    StatefulSequenceDataset,
    TripletDataset,
)
from kseq.errors import KseqError, SourceError, StructureError, WorkerError
from kseq.legacy import GeneratorDataset
from kseq.samplers import BlockShuffleSampler, PKSampler, SequentialSampler, ShuffleSampler
from kseq.sources import ArraySource, DataFrameSource, HDF5Source, Source, as_source
from kseq.sources.pack import pack
from kseq.structure import ModelStructure
from kseq.text import Vocabulary, tokenize
from kseq.validation import CheckReport, check
from kseq.workers import tune_malloc

__version__ = "0.1.0"

__all__ = [
    "ArraySource",
    "BlockShuffleSampler",
    "CaptionDataset",
    "CheckReport",
    "DataFrameSource",
    "Dataset",
    "GeneratorDataset",
    "HDF5Source",
    "KseqError",
    "ModelStructure",
    "MultiInputDataset",
    "PKSampler",
    "ResetStates",
    "SequentialSampler",
    "ShuffleSampler",
    "SiamesePairDataset",
    "Source",
    "SourceError",
    "StatefulSequenceDataset",
    "StructureError",
    "TripletDataset",
    "Vocabulary",
    "WorkerError",
    "__version__",
    "as_source",
    "check",
    "legacy",
    "pack",
    "tokenize",
    "tune_malloc",
]
