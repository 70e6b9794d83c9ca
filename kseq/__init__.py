"""kseq: Keras 3 PyDataset subclasses for named, seeded, fast batches.

Example:
    >>> import numpy as np, kseq
    >>> ds = kseq.MultiInputDataset({"a": np.zeros((10, 3)), "t": np.ones(10)}, inputs="a", targets="t", seed=0)
    >>> ds.seed
    0
"""

from kseq.datasets import Dataset, MultiInputDataset
from kseq.errors import KseqError, SourceError, StructureError, WorkerError
from kseq.samplers import SequentialSampler, ShuffleSampler
from kseq.sources import ArraySource, DataFrameSource, Source, as_source
from kseq.structure import ModelStructure
from kseq.validation import CheckReport, check

__version__ = "0.1.0"

__all__ = [
    "ArraySource",
    "CheckReport",
    "DataFrameSource",
    "Dataset",
    "KseqError",
    "ModelStructure",
    "MultiInputDataset",
    "SequentialSampler",
    "ShuffleSampler",
    "Source",
    "SourceError",
    "StructureError",
    "WorkerError",
    "__version__",
    "as_source",
    "check",
]
