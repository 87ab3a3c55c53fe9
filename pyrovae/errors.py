"""The errors pyrovae raises for a user's mistake, one family under :class:`PyrovaeError`.

Each subclass also derives from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""
from __future__ import annotations


class PyrovaeError(Exception):
    """Base class of every error pyrovae raises for bad input or a failed run."""


class ConfigError(PyrovaeError, ValueError):
    """A configuration file, override or component name that does not validate."""


class DataNotFoundError(PyrovaeError, FileNotFoundError):
    """The files of a data set are not in the data dir (and could not be downloaded)."""


class CheckpointError(PyrovaeError, ValueError):
    """A file that is not a readable pyrovae checkpoint, or one written for another model."""


class TrainingError(PyrovaeError, RuntimeError):
    """Training stopped: the loss or the parameters became non-finite (the last good checkpoint is kept)."""
