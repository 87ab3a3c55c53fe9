"""Checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain values (numbers, strings, lists, dicts) saved with
``torch.save`` through :func:`pyrovae.files.atomic_write` (a temporary file in the same
directory, flushed to disk, then renamed over the old one): a run killed at any moment leaves the previous checkpoint or
the new one, never half of one. It is loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

from ..errors import CheckpointError
from ..files import atomic_write

FORMAT = "pyrovae-checkpoint-1"


def save(path, state: dict) -> Path:
    """Write ``state`` (tensors and plain values) to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
    return Path(path)


#: the entries of a checkpoint and the types they must have
FIELDS = {"epoch": int, "params": dict, "history": list, "rng": dict}


def load(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save`; CheckpointError (one line) if it is missing,
    corrupt or not a pyrovae checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or holding objects we refuse to unpickle
        raise CheckpointError(f"{path} is not a readable pyrovae checkpoint: the file is corrupt, truncated or "
                              f"not written by pyrovae ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyrovae checkpoint (expected format {FORMAT!r})")
    return state


def load_params(params: Dict[str, torch.Tensor], saved: Dict[str, torch.Tensor]) -> None:
    """Copy a checkpoint's parameters ``saved`` into the pair's ``params`` (name → tensor) in place;
    CheckpointError when one is missing or of another shape."""
    missing = sorted(set(params) - set(saved))
    if missing:
        raise CheckpointError(f"the checkpoint lacks parameters {missing}: it was written for another model")
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != saved[name].shape:
                raise CheckpointError(f"parameter {name} has shape {list(saved[name].shape)} in the "
                                      f"checkpoint but {list(p.shape)} in the model")
            p.copy_(saved[name])


def load_training(path, map_location="cpu") -> dict:
    """:func:`load` a training checkpoint (:meth:`pyrovae.inference.train.Trainer.state`) and check
    it: CheckpointError if an entry is missing or of the wrong type, or if a parameter holds
    NaN/Inf (a diverged run: nothing computed from it would mean anything)."""
    state = load(path, map_location)
    for key, kind in FIELDS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            got = "nothing" if key not in state else type(state[key]).__name__
            raise CheckpointError(f"{path} is damaged: its {key!r} entry must be a {kind.__name__}, got {got}")
    for name, value in state["params"].items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise CheckpointError(f"{path} is damaged: parameter {name!r} is not a floating-point tensor")
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{path} holds NaN/Inf in parameter {name!r} (a diverged run): refusing to load it")
    return state
