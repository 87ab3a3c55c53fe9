"""Data-parallel training over several processes (``torchrun``) with ``torch.distributed``.

``torchrun --nproc_per_node=W -m pyrovae train --config ...`` starts W processes (ranks) with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment;
:func:`init_from_env` joins them into one process group (gloo on the CPU, NCCL on CUDA, each rank
on GPU ``LOCAL_RANK``). In a script, call it before :func:`pyrovae.train`; without a process group
(or with one process) everything here is a no-op and training is the single-process one.

What one step does on W ranks (:class:`pyrovae.inference.train.Trainer`):

* Data. Every epoch's permutation is the same on every rank (seeded by the data's seed and the
  epoch); it is cut into global minibatches of B, and rank r takes part r of each
  (:func:`shard_chunks`: ``chunk.tensor_split(W)[r]``, sizes b_r differing by at most one). A last
  global minibatch of fewer than W points joins the one before it, so every point is used every
  epoch; minibatches smaller than W (``train.batch_size`` < W) are a ConfigError, not an epoch
  without a step.
* Gradients. Rank r's loss is ℓ_r = (N/b_r) Σ_{i ∈ shard r} ℓ_i (each minibatch scaled to the data
  set, ``ScaleData``), so its gradient is g_r = (N/b_r) Σ_{i ∈ r} ∇ℓ_i. One all-reduce sums
  b_r·g_r, b_r·ℓ_r and b_r over the ranks (:func:`average_step`) and every rank takes
      g = Σ_r b_r g_r / Σ_r b_r = (N/B) Σ_{i ∈ global minibatch} ∇ℓ_i,
  the gradient of one process on the global minibatch of B = Σ_r b_r with its scale N/B (for
  equal shards, the plain mean of the ranks' gradients). The loss is combined the same way, so
  every rank sees the same loss and takes the same decisions (divergence, skipped steps). A
  parameter without a gradient on every rank keeps ``grad = None`` (Adam skips it, as one process would).
* Parameters start equal: :func:`broadcast_params` copies rank 0's after the first trace creates them.
  Each rank then draws its own Monte Carlo noise (torch's generator reseeded by rank, :func:`reseed_rank`).
* Evaluation (the test ELBO of each epoch) is sharded: rank r scores every W-th chunk, and the
  sums are all-reduced (:func:`mean_parts`): every rank holds the same history.
* Files. Rank 0 alone writes checkpoints, metrics and plots (:func:`is_main`); the others wait at
  a barrier. A checkpoint holds every rank's random state (:func:`gather_objects`), so a run
  resumed with the same W continues exactly; ``--resume`` loads it on every rank.
"""
from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ..errors import ConfigError, PyrovaeError, TrainingError

#: the variables torchrun sets (MASTER_PORT too) that :func:`init_from_env` reads
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")


def active() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes W (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return rank() == 0


def launched() -> bool:
    """Whether the environment says this process was started by torchrun with WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def backend_for(device: torch.device) -> str:
    """``"nccl"`` for CUDA, ``"gloo"`` for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


#: the environment variable that sets how long a rank waits for the others in a collective, in minutes
TIMEOUT_VAR = "PYROVAE_DIST_TIMEOUT_MINUTES"
#: its default: long enough for rank 0's checkpoints and plots while the others wait, short enough
#: that a stopped rank does not hold the others for torch's 30 minutes
DEFAULT_TIMEOUT_MINUTES = 10.0
#: the timeout this process joined its group with (:func:`init_from_env`)
_WAIT: Dict[str, Optional[float]] = {"minutes": None}


def default_timeout() -> float:
    """How long a rank waits for the others: ``$PYROVAE_DIST_TIMEOUT_MINUTES``, else
    :data:`DEFAULT_TIMEOUT_MINUTES`; ConfigError unless a positive number."""
    text = os.environ.get(TIMEOUT_VAR, "")
    if not text:
        return DEFAULT_TIMEOUT_MINUTES
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{TIMEOUT_VAR} must be a positive number of minutes, got {text!r}")
    return value


def init_from_env(device: Optional[str] = None, timeout_minutes: Optional[float] = None) -> bool:
    """Join the process group torchrun described in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); returns True when there are several processes.

    ``device``: the training device (``train.device``: ``"auto"``/None is CUDA when available);
    on CUDA each rank uses GPU ``LOCAL_RANK`` (``torch.cuda.set_device``) and NCCL, else gloo.
    Without the variables, or with WORLD_SIZE = 1, nothing is done. A ConfigError names a variable
    that is missing or not an integer, or a CUDA run with more local ranks than GPUs.
    ``timeout_minutes``: how long a collective waits for a rank (default :func:`default_timeout`).
    """
    if not launched() or dist.is_initialized():
        return active()
    missing = [v for v in ENV_VARS + ("MASTER_PORT",) if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE = {os.environ['WORLD_SIZE']} asks for several processes, but the "
                          f"environment lacks {', '.join(missing)}: start them with torchrun")
    try:
        local = int(os.environ["LOCAL_RANK"])
    except ValueError:
        raise ConfigError(f"LOCAL_RANK must be an integer, got {os.environ['LOCAL_RANK']!r}") from None
    use_cuda = device in (None, "auto") and torch.cuda.is_available() or str(device).startswith("cuda")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} has no GPU: this node has {torch.cuda.device_count()}; "
                              f"run at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(local)
    _WAIT["minutes"] = timeout_minutes if timeout_minutes is not None else default_timeout()
    dist.init_process_group(backend_for(torch.device("cuda" if use_cuda else "cpu")),
                            timeout=datetime.timedelta(minutes=_WAIT["minutes"]))
    return active()


def on_main(fn: Callable, *args, **kwargs) -> None:
    """``fn(*args, **kwargs)`` on rank 0 alone (e.g. preparing the run dir), the others waiting; a
    user error it raises (a PyrovaeError, an OSError) is raised on every rank, so each says the
    same line instead of waiting for a rank that has stopped."""
    error = None
    if is_main():
        try:
            fn(*args, **kwargs)
        except (PyrovaeError, OSError) as err:
            error = err
    if active():
        shared = [error]
        dist.broadcast_object_list(shared, src=0)  # among this run's own processes
        error = shared[0]
    if error is not None:
        raise error


def _lost_peer(err: BaseException) -> str:
    """'timeout' or 'lost' when ``err`` is a collective that failed for want of another rank, else ''."""
    text = str(err)
    if not isinstance(err, dist.DistError) and not (isinstance(err, RuntimeError) and "gloo" in text.lower()):
        return ""
    return "timeout" if "timed out" in text.lower() or "timeout" in text.lower() else "lost"


def _others() -> str:
    others = [r for r in range(world_size()) if r != rank()]
    return f"rank {others[0]}" if len(others) == 1 else f"one of ranks {others}"


@contextmanager
def peers_watched():
    """Within the block, a collective that fails because another rank was killed, failed or
    stopped answering becomes one TrainingError line naming it (and the timeout, when that fired);
    the last checkpoint stays as it was."""
    try:
        yield
    except RuntimeError as err:
        kind = _lost_peer(err) if active() else ""
        if not kind:
            raise
        if kind == "timeout":
            what = (f"{_others()} did not answer for {_WAIT['minutes'] or default_timeout():g} minutes ({TIMEOUT_VAR}): it is stopped "
                    f"or hung")
        else:
            what = f"{_others()} stopped (killed, or failed: see its own error)"
        raise TrainingError(f"rank {rank()} of {world_size()}: {what}; this rank stops too. The last checkpoint "
                            f"is kept: --resume continues the run") from None


def shutdown() -> None:
    """Leave the process group (at the end of a run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def _collective_device() -> torch.device:
    """Where the buffers of a collective must live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- data ---------------------------------------------------------------------------------------------
def shard_chunks(chunks: Iterable[torch.Tensor], rank_: int, world: int) -> List[torch.Tensor]:
    """Rank ``rank_``'s part of each global minibatch of indices: ``chunk.tensor_split(world)[rank_]``
    (contiguous, sizes differing by at most one). A last chunk of fewer than ``world`` indices
    joins the one before it (that global minibatch has B + r points, r < W: no point is left out
    and no rank runs an empty minibatch). ConfigError when a chunk still has fewer than ``world``
    (minibatches, or the data, smaller than the number of processes): no rank could take a step."""
    chunks = list(chunks)
    if len(chunks) > 1 and len(chunks[-1]) < world:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    if any(len(c) < world for c in chunks):
        raise ConfigError(f"a global minibatch of {min(len(c) for c in chunks)} point(s) cannot be shared by "
                          f"{world} processes (each needs at least one): set train.batch_size to at least "
                          f"{world}, with at least {world} datapoints, or run fewer processes")
    return [c.tensor_split(world)[rank_] for c in chunks]


def shard_of(n: int) -> range:
    """This rank's share of ``n`` items (every W-th, from its rank): the chunks of evaluation it scores."""
    return range(rank(), n, world_size())


# -- parameters and gradients ---------------------------------------------------------------------------
def broadcast_params(params: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values into every rank's ``params`` (in place), so all ranks start equal."""
    if not active():
        return
    with torch.no_grad():
        for p in params:
            buffer = p.detach().to(_collective_device())
            dist.broadcast(buffer, src=0)
            p.copy_(buffer)


def reseed_rank() -> None:
    """Give each rank > 0 its own stream of torch's random numbers (CPU and CUDA), derived from the
    seed training started with and the rank; rank 0 keeps its stream."""
    if active() and rank() > 0:
        seed = (torch.initial_seed() * 1_000_003 + rank()) % (2 ** 63)
        torch.manual_seed(seed)


def average_step(params: Sequence[torch.Tensor], loss: float, points: int) -> Tuple[float, int]:
    """All-reduce one step over the ranks: every parameter's ``.grad`` becomes
    Σ_r b_r g_r / Σ_r b_r, the loss Σ_r b_r ℓ_r / Σ_r b_r (b_r = ``points``, this rank's minibatch
    size; see the module doc for why this is one process's step on the global minibatch). Returns
    (the combined loss, B = Σ_r b_r). Two all-reduces: (b_r ℓ_r, b_r, which parameters have a
    gradient) in float64, then the gradients flattened into one buffer per dtype. Without a
    process group, (loss, points) unchanged."""
    if not active():
        return loss, points
    params = list(params)
    device = _collective_device()
    head = torch.tensor([points * loss, float(points)] + [float(p.grad is not None) for p in params],
                        dtype=torch.float64, device=device)
    dist.all_reduce(head, op=dist.ReduceOp.SUM)
    total = head[1].item()
    for group in _by_dtype(params).values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        flat = flat.to(device) * (points / total)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for p, g in zip(group, flat.split([p.numel() for p in group])):
            p.grad = g.view_as(p).to(p.device)
    for p, has in zip(params, head[2:].tolist()):
        if not has:  # no rank computed a gradient for it: Adam skips it, as one process would
            p.grad = None
    return head[0].item() / total, int(total)


def _by_dtype(params: Sequence[torch.Tensor]) -> Dict[torch.dtype, List[torch.Tensor]]:
    groups: Dict[torch.dtype, List[torch.Tensor]] = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    return groups


# -- evaluation -----------------------------------------------------------------------------------------
def mean_parts(parts: Sequence[Dict[str, torch.Tensor]], keys: Sequence[str]) -> Dict[str, float]:
    """The mean over all datapoints of each ``key`` of ``parts`` (dicts of per-datapoint values
    ``[b]``, this rank's chunks); with several ranks the sums and counts are all-reduced, so every
    rank returns the mean over every rank's datapoints."""
    if not active():
        return {k: torch.cat([p[k] for p in parts]).mean().item() for k in keys}
    device = _collective_device()
    sums = [sum(float(p[k].double().sum()) for p in parts) for k in keys]
    count = sum(len(p[keys[0]]) for p in parts)
    buffer = torch.tensor(sums + [float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return {k: (buffer[i] / buffer[-1]).item() for i, k in enumerate(keys)}


# -- random states ----------------------------------------------------------------------------------------
def gather_objects(value) -> List:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` alone."""
    if not active():
        return [value]
    out: List = [None] * world_size()
    dist.all_gather_object(out, value)
    return out
