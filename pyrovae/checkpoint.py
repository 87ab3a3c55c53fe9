"""Checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain values (numbers, strings, lists, dicts) saved with
``torch.save`` to a temporary file in the same directory, flushed to disk, then renamed over the
old one (``os.replace`` is atomic): a run killed at any moment leaves the previous checkpoint or
the new one, never half of one. It is loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "pyrovae-checkpoint-1"


class CheckpointError(ValueError):
    """A file that is not a readable pyrovae checkpoint."""


def save(path, state: dict) -> Path:
    """Write ``state`` (tensors and plain values) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save`; CheckpointError if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or holding objects we refuse to unpickle
        raise CheckpointError(f"{path} is not a readable pyrovae checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyrovae checkpoint (expected format {FORMAT!r})")
    return state
