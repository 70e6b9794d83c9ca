"""The kseq exception family: each one refines the builtin a caller would already catch."""

from __future__ import annotations

__all__ = ["KseqError", "SourceError", "StructureError", "WorkerError"]


class KseqError(Exception):
    """Base class of every error kseq raises on purpose."""


class StructureError(KseqError, ValueError):
    """Data and model (or data and configuration) do not fit together.

    The message says what was expected, what was received, and how to fix it.
    """


class SourceError(KseqError, OSError):
    """A source cannot be opened or read: missing file, missing field, corrupt file."""


class WorkerError(KseqError, RuntimeError):
    """A worker process failed: it raised, was killed, or could not be started."""
