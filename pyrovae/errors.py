"""The errors pyrovae raises for a user's mistake, one family under :class:`PyrovaeError`.

Each subclass also derives from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""
from __future__ import annotations


#: what Pyro's trace messenger appends to an error raised inside a model or guide (the sites' shapes)
TRACE_SHAPES = "\nTrace Shapes:"


class PyrovaeError(Exception):
    """Base class of every error pyrovae raises for bad input or a failed run.

    Its message stays one line: the table of site shapes that Pyro appends to an error raised
    inside a model or guide (a message followed by :data:`TRACE_SHAPES`) is cut off.
    """

    def __init__(self, *args):
        if args and isinstance(args[0], str) and TRACE_SHAPES in args[0]:
            args = (args[0].split(TRACE_SHAPES, 1)[0], *args[1:])
        super().__init__(*args)


class InputError(PyrovaeError, ValueError):
    """An argument of the wrong value: the message names the argument, what was expected and what came."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type."""


class ConfigError(InputError):
    """A configuration file, override, component name or option that does not validate."""


class DataError(InputError):
    """Data of the wrong shape, dtype or values, or a data file that is corrupt."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The files of a data set are not in the data dir (and could not be downloaded)."""


class PairError(InputError):
    """A model/guide pair whose sites do not match (a latent without a guide site, and so on)."""


class CheckpointError(PyrovaeError, ValueError):
    """A file that is not a readable pyrovae checkpoint, or one written for another model."""


class TrainingError(PyrovaeError, RuntimeError):
    """Training stopped: the loss or the parameters became non-finite (the last good checkpoint is kept)."""
