"""Checkpoints: written atomically, read back without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain values (numbers, strings, lists, dicts) saved with
``torch.save`` through :func:`pyrovae.files.atomic_write` (a temporary file in the same
directory, flushed to disk, then renamed over the old one): a run killed at any moment leaves the previous checkpoint or
the new one, never half of one. It is loaded with ``torch.load(weights_only=True)``.

:func:`load_params` copies its parameters into a pair's; :func:`rng_state` and
:func:`restore_rng` save and restore the random states (CPU and CUDA, per rank) that make a
resumed run continue bit for bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

from ..errors import CheckpointError
from ..files import atomic_write
from . import distributed

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


def rng_state() -> dict:
    """This process's random state: torch's CPU generator and every CUDA device's."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    """Restore this rank's random state from a checkpoint: its own when the checkpoint holds one per
    rank of the same number of ranks, else rank 0's (then reseeded per rank, :func:`distributed.reseed_rank`)."""
    ranks = state.get("rng_ranks") or []
    own = len(ranks) == distributed.world_size()
    rng = ranks[distributed.rank()] if own else state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if not own:
        distributed.reseed_rank()
