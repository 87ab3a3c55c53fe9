"""What a check or an evaluation may touch, and how it is put back: modules, modes, buffers, randomness.

A pair's networks are ``nn.Module`` objects the pair reaches by ``pyro.module`` or
``PyroModule``: the owner of a bound method (``vae.model``), or modules the function names in
its globals or closure (``pyro.module("decoder", decoder)`` with ``decoder`` a global).
:func:`modules_of` finds them. Then:

- :func:`modes` switches every module (and its submodules) to training or evaluation mode and
  back to the mode each one had (``nn.Module.train``/``eval`` only set the flags; BatchNorm and
  Dropout read them);
- :class:`Snapshot` records parameters (the modules' and Pyro's param store), buffers (BatchNorm's
  running statistics and ``num_batches_tracked``), the modules' modes and torch's random state
  (CPU and CUDA), and :meth:`Snapshot.restore` puts them back exactly;
  ``with preserved(modules):`` does both around a block;
- :class:`RngState` and :func:`preserved_rng` do the same for the random state alone (a dry run
  that may draw, a comparison on the same draws).

A check (the pair check, the vectorization check, a fast path's reference comparison) runs under
:func:`preserved`, so a user's model is as it was afterwards, bit for bit.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Iterable, Iterator, List, Optional

import pyro
import torch
from torch import nn


def _named_modules(fn) -> List[nn.Module]:
    """The ``nn.Module`` objects ``fn`` refers to: its owner, and modules among its globals and
    closure cells that its code names (one level deep; a nested helper's modules are not seen)."""
    found = []
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, nn.Module):
        found.append(owner)
    if isinstance(fn, nn.Module):
        found.append(fn)
    func = inspect.unwrap(getattr(fn, "__func__", fn))
    code = getattr(func, "__code__", None)
    if code is not None:
        globs = getattr(func, "__globals__", {})
        found += [globs[n] for n in code.co_names if isinstance(globs.get(n), nn.Module)]
        cells = getattr(func, "__closure__", None) or ()
        found += [c.cell_contents for n, c in zip(code.co_freevars, cells)
                  if isinstance(getattr(c, "cell_contents", None), nn.Module)]
    return found


def modules_of(*fns: Optional[Callable]) -> List[nn.Module]:
    """The distinct top-level modules of the functions ``fns`` (``None`` skipped): owners first, in
    order, without a module that is a submodule of another one found."""
    found: List[nn.Module] = []
    for fn in fns:
        if fn is None:
            continue
        for m in _named_modules(fn):
            if not any(m is f for f in found):
                found.append(m)
    inner = {id(sub) for m in found for sub in m.modules() if sub is not m}
    return [m for m in found if id(m) not in inner]


def _all_modules(modules: Iterable[nn.Module]) -> Iterator[nn.Module]:
    seen = set()
    for m in modules:
        for sub in m.modules():
            if id(sub) not in seen:
                seen.add(id(sub))
                yield sub


@contextlib.contextmanager
def modes(modules: Iterable[nn.Module], training: bool):
    """Every module in ``modules`` (with its submodules) in training (``True``) or evaluation
    (``False``) mode inside the block; afterwards each has the mode it had before."""
    subs = list(_all_modules(modules))
    before = [m.training for m in subs]
    try:
        for m in subs:
            m.training = training
        yield
    finally:
        for m, was in zip(subs, before):
            m.training = was


class RngState:
    """torch's CPU (and, once CUDA is in use, every CUDA device's) random state at construction;
    :meth:`restore` goes back to it."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@contextlib.contextmanager
def preserved_rng():
    """A block in which the pair may draw: torch's CPU and CUDA random states are restored after."""
    rng = RngState()
    try:
        yield rng
    finally:
        rng.restore()


def pair_modules(model: Callable, guide: Callable) -> List[nn.Module]:
    """:func:`modules_of` the pair as given to an ELBO: Pyro's handlers (``poutine.scale``, the
    trainer's minibatch scaling) and ``functools.wraps`` wrappers taken off first."""
    from pyro import poutine

    return modules_of(*(inspect.unwrap(poutine.unwrap(fn)) for fn in (model, guide)))


class Snapshot:
    """Parameters, buffers, modes of ``modules``, Pyro's param store and torch's random state, as
    they are at construction; :meth:`restore` puts every one back (values copied in place, so
    optimizers and graphs that hold the tensors see the old values)."""

    def __init__(self, modules: Iterable[nn.Module] = ()):
        self.subs = list(_all_modules(modules))
        self.modes = [m.training for m in self.subs]
        tensors = {}
        for m in self.subs:
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                tensors[id(t)] = t
        for _, p in pyro.get_param_store().named_parameters():
            tensors[id(p)] = p
        self.tensors = [(t, t.detach().clone()) for t in tensors.values() if t is not None]
        self.rng = RngState()

    def restore(self) -> None:
        with torch.no_grad():
            for t, saved in self.tensors:  # only those that changed: an in-place copy would invalidate
                if t.shape == saved.shape and not torch.equal(t, saved):  # graphs that saved the tensor
                    t.copy_(saved)
        for m, was in zip(self.subs, self.modes):
            m.training = was
        self.rng.restore()


@contextlib.contextmanager
def preserved(modules: Iterable[nn.Module] = ()):
    """Inside the block anything may change; afterwards parameters, buffers, modes of ``modules``
    and the random state are as they were (:class:`Snapshot`). Parameters a pair creates inside
    the block stay in Pyro's param store (a first run creates them)."""
    snap = Snapshot(modules)
    try:
        yield snap
    finally:
        snap.restore()
