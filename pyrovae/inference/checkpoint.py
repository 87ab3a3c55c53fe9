"""Checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain values (numbers, strings, lists, dicts) saved with
``torch.save`` through :func:`pyrovae.files.atomic_write` (a temporary file in the same
directory, flushed to disk, then renamed over the old one): a run killed at any moment leaves the previous checkpoint or
the new one, never half of one. It is loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..files import atomic_write

FORMAT = "pyrovae-checkpoint-1"


def save(path, state: dict) -> Path:
    """Write ``state`` (tensors and plain values) to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
    return Path(path)


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
