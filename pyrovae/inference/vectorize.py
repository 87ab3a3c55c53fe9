"""Vectorized particles, verified before they are trusted.

The estimators and the trainer draw r particles z⁽¹⁾..z⁽ʳ⁾ in one pass: a plate of size r at
dimension −(nesting + 1), left of the pair's plates, so every tensor the pair computes from a
latent gains a leading dimension, ``[r, B, ...]`` instead of ``[B, ...]``. That is right only
when every network of the pair broadcasts over leading dimensions. One that does not need not
fail: ``nn.BatchNorm1d(B)`` reads a ``[r, B, B]`` input as (N, C, L) when the batch size equals its
width and normalises over the wrong axes, and the ELBO is silently wrong.

:func:`particles_agree` therefore runs the pair once with 2 vectorized particles and replays the
same draws one particle at a time (particle j's values of every guide site, with the particle
dimension removed, replayed into the guide and the model: the sequential computation Pyro's ELBOs
make with ``vectorize_particles=False``). Every sample site's log-density, element by element —
so every per-datapoint value log p(x, z) − log q(z|x), which is their sum — must agree to float
rounding (relative and absolute tolerance :data:`RTOL`, :data:`ATOL`). Otherwise, or where the
vectorized run raises, the caller runs the particles one at a time, and a warning naming the pair
and the first site that differs says so. The verdict is cached per pair, input shapes and module
modes, so the check runs once.

The check runs under :func:`~pyrovae.inference.state.preserved` (parameters, buffers such as
BatchNorm's running statistics, modes and the random state as they were), without gradients, and
with the pair's dropout layers switched off: in training mode a dropout layer draws a new mask at
every call, so no two runs agree; BatchNorm stays in the mode the caller set (in training mode
its statistics over the batch are part of what must agree).
"""
from __future__ import annotations

import copy
import warnings
import weakref
from typing import Callable, Dict, Optional, Tuple

import torch
from pyro import poutine
from pyro.poutine.replay_messenger import ReplayMessenger
from torch import nn
from torch.distributions import Independent, TransformedDistribution

from ..errors import PyrovaeError
from .elbos import Wrapper
from .state import modes, modules_of, preserved
from .traces import enum_traces, log_density, particle_traces, sample_sites, traces

#: particles the check draws
CHECK_PARTICLES = 2
#: tolerance of the comparison (torch.allclose's rtol and atol, on each log-density element)
RTOL, ATOL = 1e-4, 1e-3
#: the layers whose output is random in training mode (switched off during the check)
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)

_verdicts: "weakref.WeakKeyDictionary[object, Dict[tuple, bool]]" = weakref.WeakKeyDictionary()


def _anchor(fn: Callable):
    """What a pair's cached verdicts hang on: the model's owner (a bound method's ``self``), else the model."""
    owner = getattr(fn, "__self__", None)
    return fn if owner is None else owner


def _identity(fn: Callable) -> Tuple[int, int]:
    return id(getattr(fn, "__self__", None)), id(getattr(fn, "__func__", fn))


def _key(model, guide, args, kwargs, nesting, enumerate_, modules) -> tuple:
    shapes = tuple((tuple(v.shape), v.dtype, v.device.type) if torch.is_tensor(v) else type(v).__name__
                   for v in list(args) + [kwargs[k] for k in sorted(kwargs)])
    flags = tuple(m.training for top in modules for m in top.modules())
    return _identity(model), _identity(guide), shapes, tuple(sorted(kwargs)), nesting, enumerate_, flags


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _particle(value: torch.Tensor, event_dim: int, nesting: int, j: int, keep: bool) -> torch.Tensor:
    """Particle j of a site's value: index j on the particle dimension −(nesting + 1) of its batch
    shape (kept as size 1 when ``keep``); a value without that dimension (or of size 1 there) as it is."""
    axis = value.dim() - event_dim - (nesting + 1)
    if axis < 0 or value.shape[axis] == 1:
        return value if keep or axis < 0 else value.squeeze(axis)
    return value.narrow(axis, j, 1) if keep else value.select(axis, j)


def _replay_trace(guide_trace, nesting: int, j: int, keep: bool) -> poutine.Trace:
    """A trace holding particle j of every latent guide site, for ``poutine.replay``."""
    out = poutine.Trace()
    for name, site in sample_sites(guide_trace).items():
        if not site["is_observed"]:
            value = _particle(site["value"], site["fn"].event_dim, nesting, j, keep)
            out.add_node(name, type="sample", is_observed=False, value=value, infer=site["infer"])
    return out


class _ReplayParticle(ReplayMessenger):
    """``poutine.replay`` of one particle's values, each stripped of the leading size-1 dimensions
    its site's own shape (batch + event) lacks: a global site's draw [1, L] is replayed as [L]."""

    def _pyro_sample(self, msg):
        super()._pyro_sample(msg)
        if msg["name"] in self.trace and not msg["is_observed"]:
            value, dims = msg["value"], len(msg["fn"].shape())
            while value.dim() > dims and value.shape[0] == 1:
                value = value[0]
            msg["value"] = value


def _run(model, guide, args, kwargs, nesting, enumerate_, num_particles):
    if enumerate_:
        return enum_traces(model, guide, num_particles, nesting, *args, **kwargs)
    if num_particles is None:
        return traces(model, guide, *args, **kwargs)
    return particle_traces(model, guide, num_particles, nesting, *args, **kwargs)


def _transformed(site) -> bool:
    """Whether a site's distribution is a transformed one (a flow): its log-density at a value it did
    not draw itself inverts the transform (costly, and not every transform has an inverse)."""
    fn = site["fn"]
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return isinstance(fn, TransformedDistribution)


def _first_difference(vectorized, sequential, nesting: int, j: int, keep: bool) -> Optional[str]:
    """Where particle j of the vectorized traces differs from its sequential replay (None: nowhere).
    A replayed guide site of a transformed distribution is not compared (its log-density would
    invert the flow); the model's sites downstream of it are."""
    for vec_trace, seq_trace, replayed in zip(vectorized, sequential, (False, True)):
        seq_sites = sample_sites(seq_trace)
        for name, site in sample_sites(vec_trace).items():
            if name not in seq_sites:
                return f"site {name!r} is missing from the sequential run"
            if replayed and not site["is_observed"] and _transformed(seq_sites[name]):
                continue
            vec = _particle(log_density(site), 0, nesting, j, keep)
            seq = log_density(seq_sites[name])
            try:
                vec, seq = torch.broadcast_tensors(vec, seq)
            except RuntimeError:
                return f"site {name!r} has log-density shape {list(vec.shape)} vectorized, {list(seq.shape)} alone"
            if not torch.allclose(vec, seq, rtol=RTOL, atol=ATOL, equal_nan=True):
                gap = (vec - seq).abs().nan_to_num(float("inf")).max().item()
                return f"site {name!r}'s log-density differs by up to {gap:.3g} nats"
    return None


def _verdict(model, guide, args, kwargs, nesting: int, enumerate_: bool) -> Optional[str]:
    """Why the pair's vectorized particles cannot be trusted (None: they agree with the sequential replay)."""
    try:
        vectorized = _run(model, guide, args, kwargs, nesting, enumerate_, CHECK_PARTICLES)
    except (RuntimeError, ValueError, IndexError) as e:
        if isinstance(e, PyrovaeError):
            raise
        return f"cannot run its particles vectorized ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    for j in range(CHECK_PARTICLES):
        replayed = _ReplayParticle(trace=_replay_trace(vectorized[1], nesting, j, enumerate_))(guide)
        try:
            sequential = _run(model, replayed, args, kwargs, nesting, enumerate_, None)
        except (RuntimeError, ValueError, IndexError) as e:
            if isinstance(e, PyrovaeError):
                raise
            return None  # the one-at-a-time run cannot run either: nothing to fall back to
        problem = _first_difference(vectorized, sequential, nesting, j, enumerate_)
        if problem is not None:
            return (f"has vectorized particles that differ from the same draws run one at a time ({problem}: a "
                    f"network that does not broadcast over a leading particle dimension?)")
    return None


def particles_agree(model, guide, args: tuple, kwargs: dict, nesting: int, enumerate_: bool = False,
                    what: str = "the estimators run them") -> bool:
    """Whether ``model``/``guide`` on these arguments give, with particles vectorized, the values of
    the same draws run one particle at a time (module doc); ``nesting`` is the number of the pair's
    plate dimensions, ``enumerate_`` whether its marked sites are enumerated
    (:func:`~pyrovae.inference.traces.enum_traces`). Checked once per pair, input shapes and
    module modes; a False verdict warns once, naming the pair, why, and ``what`` (who runs the
    particles) one at a time.
    Leaves parameters, buffers, modes and the random state as it found them."""
    modules = modules_of(model, guide)
    key = _key(model, guide, args, kwargs, nesting, enumerate_, modules)
    try:
        cache = _verdicts.setdefault(_anchor(model), {})
    except TypeError:  # an object that cannot be weakly referenced: no cache
        cache = {}
    if key not in cache:
        dropouts = [m for top in modules for m in top.modules() if isinstance(m, DROPOUT)]
        with preserved(modules), torch.no_grad(), modes(dropouts, False):
            problem = _verdict(model, guide, args, kwargs, nesting, enumerate_)
        cache[key] = problem is None
        if problem is not None:
            warnings.warn(f"the pair {_name(model)}/{_name(guide)} {problem}; {what} one at a time", stacklevel=3)
    return cache[key]


class VerifiedParticles(Wrapper):
    """``elbo`` (r > 1 particles vectorized) on every minibatch whose vectorized particles agree with
    the same draws run one at a time (:func:`particles_agree`: checked once per pair, argument
    shapes and module modes), and ``plain`` with its particles one at a time (Pyro's
    ``vectorize_particles=False``) on a minibatch whose do not: the trainer's rule for every
    minibatch shape, the last, smaller one included, and for a pair whose vectorized run raises.
    ``pair``: the (model, guide) the check runs; ``nesting``: its plate dimensions;
    ``enumerate_``: whether its marked sites are enumerated."""

    def __init__(self, elbo, plain, pair: tuple, nesting: int, enumerate_: bool = False):
        super().__init__(elbo)
        self.pair, self.nesting, self.enumerate_ = pair, nesting, enumerate_
        self.sequential = copy.copy(plain)
        self.sequential.vectorize_particles = False

    def choose(self, args: tuple, kwargs: dict):
        """The ELBO this minibatch's arguments are run by."""
        agree = particles_agree(*self.pair, args, kwargs, self.nesting, self.enumerate_, what="training runs them")
        return self.elbo if agree else self.sequential

    def loss(self, model, guide, *args, **kwargs) -> float:
        return self.choose(args, kwargs).loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self.choose(args, kwargs).differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return self.choose(args, kwargs).loss_and_grads(model, guide, *args, **kwargs)
