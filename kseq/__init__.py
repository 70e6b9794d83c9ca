"""kseq: Keras 3 PyDataset subclasses for named, seeded, fast batches.

Two layers: a framework-free core (errors, sources, samplers, ``pack``, text,
workers), imported here at once, and the Keras layer (the datasets, ``check``,
callbacks, ``legacy``), whose names resolve on first use through the module
``__getattr__``. So ``import kseq``, a worker process and ``python -m kseq inspect``
import no framework; ``kseq.Dataset`` imports Keras the first time it is read.

Example:
    >>> import numpy as np, kseq
    >>> ds = kseq.MultiInputDataset({"a": np.zeros((10, 3)), "t": np.ones(10)}, inputs="a", targets="t", seed=0)
    >>> ds.seed
    0
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from kseq import _tf_exit
from kseq.errors import KseqError, SourceError, StructureError, WorkerError
from kseq.samplers import BlockShuffleSampler, PKSampler, SequentialSampler, ShuffleSampler
from kseq.sources import ArraySource, FileSource, HDF5Source, Source, as_source
from kseq.sources.pack import pack
from kseq.take import take
from kseq.text import Vocabulary, tokenize
from kseq.workers import tune_malloc

_tf_exit.collect_at_exit()  # NOTE [ tf.data iterators at exit ]: a failed fit must not hang the exit

if TYPE_CHECKING:  # the Keras layer and DataFrameSource (pandas), for type checkers; at run time see __getattr__
    from kseq import legacy
    from kseq.callbacks import ResetStates
    from kseq.datasets import (
        CaptionDataset,
        Dataset,
        ModelView,
        MultiInputDataset,
        SiamesePairDataset,
        StatefulSequenceDataset,
        TripletDataset,
    )
    from kseq.legacy import GeneratorDataset
    from kseq.profiling import Profile, profile
    from kseq.resume import BackupAndRestore
    from kseq.sources.dataframe import DataFrameSource
    from kseq.structure import ModelStructure
    from kseq.validation import CheckReport, check

__version__ = "0.2.0"

# The Keras layer: public name -> the module that defines it (the name itself for a subpackage).
_LAZY: dict[str, str] = {
    "BackupAndRestore": "kseq.resume",
    "CaptionDataset": "kseq.datasets",
    "CheckReport": "kseq.validation",
    "DataFrameSource": "kseq.sources.dataframe",
    "Dataset": "kseq.datasets",
    "GeneratorDataset": "kseq.legacy",
    "ModelStructure": "kseq.structure",
    "ModelView": "kseq.datasets",
    "MultiInputDataset": "kseq.datasets",
    "Profile": "kseq.profiling",
    "ResetStates": "kseq.callbacks",
    "SiamesePairDataset": "kseq.datasets",
    "StatefulSequenceDataset": "kseq.datasets",
    "TripletDataset": "kseq.datasets",
    "check": "kseq.validation",
    "legacy": "kseq.legacy",
    "profile": "kseq.profiling",
}

__all__ = [
    "ArraySource",
    "BackupAndRestore",
    "BlockShuffleSampler",
    "CaptionDataset",
    "CheckReport",
    "DataFrameSource",
    "Dataset",
    "FileSource",
    "GeneratorDataset",
    "HDF5Source",
    "KseqError",
    "ModelStructure",
    "ModelView",
    "MultiInputDataset",
    "PKSampler",
    "Profile",
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
    "profile",
    "take",
    "tokenize",
    "tune_malloc",
]


def __getattr__(name: str) -> object:
    """Import a Keras-layer name on first use and keep it in the module, so later reads are plain."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'kseq' has no attribute {name!r}"
        raise AttributeError(msg)
    value = importlib.import_module(module)
    if module != f"kseq.{name}":
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
