"""The fast step recorded once as a graph of tensor operations and replayed, without the pair's Python.

Once :class:`~pyrovae.inference.faststep.FastStep` is checked equal to the Pyro ELBO, each step
still runs the pair's Python: ``pyro.module`` registering every parameter, plates, messages
through the messenger stack, distribution objects built and expanded — a fixed cost per step that
weighs most where the arithmetic is small. :class:`TracedStep` records
one step with ``torch.fx``'s ``make_fx``: the ATen operations the step runs (the networks'
matrix products, the draws from torch's random generator, the site terms), on the parameters
themselves (the graph references the tensors in Pyro's store; Adam updates them in place) with
the minibatch's tensors as its inputs. Later steps run that graph: the same operations in the same
order on the same draws, so the same loss and gradients, bit for bit, minus the Python.

A graph holds fixed whatever the pair's code decided while it was recorded. What is caught:

* the arguments: each tensor's shape, dtype, device and strides, and the value of every other
  argument (a number, string, bool or None; anything else is not traced) are the graph's key;
  another key gets its own graph (the epoch's smaller last batch; at most :data:`MAX_GRAPHS`
  kept), and a run whose arguments change more often than once every :data:`CHURN` steps goes
  back to the fast step;
* train/eval mode of the pair's module and grad mode: part of the key; the parameters in Pyro's
  store: a replaced tensor drops every graph;
* Python that depends on tensor values (``if x.sum() > 0``, ``.item()``, ``float(t)``) cannot be
  recorded — ``make_fx`` raises — and the pair keeps the fast step;
* anything else the pair's code reads — an attribute or a global that a callback changes — is frozen
  at recording, and its side effects (a counter, a stored tensor) happen only when it records. So a
  graph is checked against the fast step on the same draws at its first use (the loss and every
  gradient, 1e-6 relative: :func:`~pyrovae.inference.faststep.differs`; one that differs turns
  tracing off for the run), and at the first step of every epoch (every ``recheck_every`` steps,
  :meth:`TracedStep.recheck`) the
  fast step takes the step and the graph's loss on the same draws is compared with it: if they
  differ, every graph is dropped and recorded again (the next steps).

:class:`TracedStep` is a ``pyro.infer.ELBO`` like the fast step it wraps (``pyro.infer.SVI`` or
:func:`pyrovae.train`); :func:`speed_path` builds what the trainer runs. Which pairs are traced
(``train(..., step=StepSettings(traced_step=...))``, ``train.traced_step``): ``"auto"`` (the default) where every
part of the pair is pyrovae's own (:func:`traces_pair`: a pyrovae model whose modules are all
pyrovae's or torch's, or a class that declares itself ``traceable``), ``"on"`` any pair the checks
above let through, ``"off"`` none. What it saves: BENCHMARKS.md, "Training speed".
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.runtime import am_i_wrapped
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from pyro.infer.util import is_validation_enabled

from ..schema import SWITCH, switch
from .elbos import Wrapper
from .faststep import FastStep, add_grads, all_finite, differs, gradients, signature, trainable_params
from .state import Snapshot, pair_modules, preserved

#: graphs kept per run (least recently used dropped first)
MAX_GRAPHS = 4
#: after the first MAX_GRAPHS recordings, at most one more every CHURN steps, else tracing stops
CHURN = 50
#: the values ``traced_step`` takes (True and False stand for "on" and "off")
MODES = SWITCH

#: argument values a graph's key can hold (fixed in the graph, compared by value)
_SCALARS = (bool, int, float, str, type(None))


def traced_mode(value) -> str:
    """``traced_step`` as one of :data:`MODES` (True → "on", False → "off"); InputError otherwise."""
    return switch("traced_step", value)


def traces_pair(mode: str, owner: Optional[nn.Module]) -> bool:
    """Whether ``mode`` traces a pair whose model belongs to ``owner``: ``"on"`` always, ``"off"``
    never, ``"auto"`` where every part of the pair is pyrovae's own — ``owner`` says
    ``traceable = True`` and each of its submodules is pyrovae's or torch's — or declares itself
    traceable (its class, one that is not pyrovae's, sets ``traceable = True``). So a component of
    the user's inside a built-in model turns it off unless that component declares itself
    traceable, and a user's own model is traced when its class says so."""
    if mode != "auto" or owner is None:
        return mode == "on"
    if not getattr(owner, "traceable", False):
        return False
    return declares_traceable(owner) or all(_is_own(type(m)) or declares_traceable(m) for m in owner.modules())


def _is_own(cls) -> bool:
    return cls.__module__.split(".")[0] in ("pyrovae", "torch")


def declares_traceable(obj) -> bool:
    """Whether ``obj``'s class, or the nearest class it derives from that sets ``traceable``, is
    not pyrovae's and sets it True (a user's declaration, not one inherited from pyrovae's models)."""
    for cls in type(obj).__mro__:
        if "traceable" in vars(cls):
            return bool(vars(cls)["traceable"]) and not _is_own(cls)
    return False


def record(fn, *tensors) -> torch.fx.GraphModule:
    """``make_fx(fn)(*tensors)`` without the operations whose results nothing reads (a plate's
    subsample indices): draws from the random generator and in-place updates (BatchNorm's running
    statistics) stay, which torch.fx counts as impure."""
    module = make_fx(fn)(*tensors)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


class Graph:
    """One recorded step: ``module(*tensors)`` → :meth:`FastStep.terms`'s tensors; ``checked`` once
    its loss and gradients have matched the fast step's on the same draws; ``params``: the names of
    the parameters in Pyro's store the step used."""

    def __init__(self, module: torch.fx.GraphModule, params: Sequence[str] = ()):
        self.module, self.checked, self.params = module, False, tuple(params)

    def __call__(self, tensors):
        """The graph's tensors on ``tensors``. Under Pyro handlers (``pyro.infer.SVI`` collects the
        parameters a step uses with ``poutine.trace(param_only=True)``) the step's ``pyro.param``
        statements are made again, as the pair's code would make them."""
        if am_i_wrapped():
            for name in self.params:
                pyro.param(name)
        return self.module(*tensors)


class TracedStep(Wrapper):
    """An ELBO: the fast step ``fast`` (a :class:`FastStep`) replayed from graphs once it is on
    (until then, and after tracing is turned off, ``fast`` itself takes the steps; ``loss`` and
    ``differentiable_loss`` are ``fast``'s). Usable with ``pyro.infer.SVI`` as with
    :func:`pyrovae.train`. ``modules``: the pair's own modules, whose train/eval mode is part of
    each graph's key and whose buffers, modes and parameters the recording and the checks leave as
    found (default: ``fast.modules``, else found from the pair). ``warn``: say so when a step
    cannot be recorded or its graph differs (for a pair traced on request; ``"auto"`` leaves it
    to ``why_not``)."""

    def __init__(self, fast: FastStep, modules: Optional[Sequence[nn.Module]] = None, warn: bool = True,
                 recheck_every: Optional[int] = None):
        super().__init__(fast)
        self.fast, self.warn, self.recheck_every, self.calls = fast, warn, recheck_every, 0
        self.modules = tuple(modules) if modules is not None else fast.modules
        self.graphs: "OrderedDict[tuple, Graph]" = OrderedDict()
        self.tracing, self.why_not, self.rechecking = True, "", False
        self.steps = self.recorded = 0
        self.store_ids: Tuple[int, ...] = ()

    @property
    def state(self) -> str:
        """The fast step's state (``"unchecked"``, ``"on"``, ``"off"``)."""
        return self.fast.state

    def recheck(self) -> None:
        """Compare the next step's graph with the fast step (done by itself at every
        ``recheck_every``-th call from the first: the first step of each epoch in the trainer)."""
        self.rechecking = True

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """As :meth:`FastStep.loss_and_grads`: −ELBO as a number after adding its gradient to the
        parameters' ``.grad``."""
        self.calls += 1
        if self.recheck_every and (self.calls - 1) % self.recheck_every == 0:
            self.recheck()
        if not self.tracing or self.fast.state != "on" or is_validation_enabled():
            return self.fast.loss_and_grads(model, guide, *args, **kwargs)
        if self.modules is None:
            self.modules = tuple(pair_modules(model, guide))
        call = self._key(model, guide, args, kwargs)
        if call is None:
            return self._stop("an argument is neither a tensor nor a number, string, bool or None", model, guide,
                              args, kwargs)
        key, tensors = call
        self.steps += 1
        self._drop_if_store_changed()
        graph = self.graphs.get(key)
        if graph is None:
            if self.recorded >= MAX_GRAPHS and self.recorded * CHURN > self.steps:
                return self._stop("its arguments change too often", model, guide, args, kwargs)
            graph = self._record(model, guide, args, kwargs, tensors)
            if graph is None:
                return self.fast.loss_and_grads(model, guide, *args, **kwargs)
            self.graphs[key] = graph
            if len(self.graphs) > MAX_GRAPHS:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        if not graph.checked or self.rechecking:  # the fast step on the same draws first
            eager = self._eager(model, guide, args, kwargs)
            if eager is None:  # its sites changed: the Pyro ELBO takes the step
                return self.fast.loss_and_grads(model, guide, *args, **kwargs)
            compare = self._recheck if graph.checked else self._check
            return compare(graph, tensors, *eager, lambda: self.fast.loss_and_grads(model, guide, *args, **kwargs))
        loss, surrogate = self.fast.finish(graph(tensors))
        if surrogate.requires_grad:
            surrogate.backward()
        return loss

    # -- the pieces ---------------------------------------------------------------------------
    def _key(self, model, guide, args, kwargs) -> Optional[Tuple[tuple, list]]:
        """(the graph's key, the call's tensors in order), or None for an argument a key cannot hold."""
        tensors, described = [], []
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                tensors.append(value)
                described.append((value.shape, value.stride(), value.dtype, value.device, value.requires_grad))
            elif isinstance(value, _SCALARS):
                described.append((type(value), value))
            else:
                return None
        return (model, guide, tuple(kwargs), tuple(described), torch.is_grad_enabled(),
                tuple(m.training for m in self.modules)), tensors

    def _drop_if_store_changed(self) -> None:
        ids = tuple(id(p) for _, p in pyro.get_param_store().named_parameters())
        if ids != self.store_ids:
            self.graphs.clear()
            self.store_ids = ids

    def _record(self, model, guide, args, kwargs, tensors) -> Optional[Graph]:
        """The step's graph (its draws leave the random state as it was), or None (tracing off)
        when ``make_fx`` cannot record it or the sites are not the checked ones."""
        positions = [i for i, v in enumerate((*args, *kwargs.values())) if isinstance(v, torch.Tensor)]
        names, seen = list(kwargs), {}

        def step(*inputs):
            values = list((*args, *kwargs.values()))
            for i, t in zip(positions, inputs):
                values[i] = t
            with poutine.trace(param_only=True) as params:
                sites = self.fast.run(model, guide, tuple(values[:len(args)]), dict(zip(names, values[len(args):])))
            seen["signature"], seen["params"] = signature(*sites), list(params.trace.nodes)
            return self.fast.terms(*sites)

        try:
            with preserved(self.modules):  # recording runs the step: its draws and buffer updates undone
                module = record(step, *tensors)
        except Exception as e:  # data-dependent Python, or an operation make_fx cannot record
            first = str(e).splitlines()[0][:200] if str(e) else ""
            return self._turn_off(f"its step cannot be recorded (Python that depends on tensor values, or an "
                                  f"operation torch.fx cannot record: {type(e).__name__}: {first})")
        if seen["signature"] != self.fast.sites:
            return self._turn_off("its sites changed while recording", warn=False)
        self.recorded += 1
        return Graph(module, seen["params"])

    def _eager(self, model, guide, args, kwargs):
        """(the pair's state before it, the fast step's loss and surrogate) on this call, or None when
        its sites changed (then the fast step is off and the Pyro ELBO takes the step, from that state)."""
        before = Snapshot(self.modules)
        sites = self.fast.run(model, guide, args, kwargs)
        if signature(*sites) != self.fast.sites:
            before.restore()
            return self.fast.turn_off("the pair's sites changed between steps")
        return (before, *self.fast.losses(*sites))

    def _check(self, graph: Graph, tensors, before: Snapshot, reference: float, ref_surrogate, fast_step) -> float:
        """A new graph and the fast step's run (:meth:`_eager`) on the same draws: the graph's numbers
        if their losses and gradients agree, else ``fast_step()``'s from the state before, and tracing off."""
        params = trainable_params()
        ref_grads = gradients(ref_surrogate, params)
        if not all_finite([ref_surrogate, *ref_grads]):
            add_grads(params, ref_grads)  # NaN/Inf: nothing to compare (the trainer stops on it)
            return reference
        before.restore()  # the graph runs from the same state, on the same draws
        loss, surrogate = self.fast.finish(graph(tensors))
        grads = gradients(surrogate, params)
        why = differs(loss, reference, grads, ref_grads)
        if why:
            self._turn_off(f"its recorded step differs from the pair's ({why})")
            before.restore()
            return fast_step()
        graph.checked, self.rechecking = True, False  # compared in full: this step needs no recheck
        add_grads(params, grads)
        return loss

    def _recheck(self, graph: Graph, tensors, before: Snapshot, reference: float, ref_surrogate, fast_step) -> float:
        """The fast step's run (:meth:`_eager`) takes this step; the graph's loss on the same draws (no
        gradients) must be its loss, else every graph is dropped (what the pair's code reads has changed)."""
        self.rechecking = False
        if ref_surrogate.requires_grad:
            ref_surrogate.backward()
        with preserved(self.modules):  # the graph's run on the same draws leaves the eager step's state
            before.rng.restore()
            with torch.no_grad():
                loss, _ = self.fast.finish(graph(tensors))
        if differs(loss, reference, [], []):
            self.graphs.clear()
        return reference

    def _stop(self, why: str, model, guide, args, kwargs) -> float:
        self._turn_off(why)
        return self.fast.loss_and_grads(model, guide, *args, **kwargs)

    def _turn_off(self, why: str, warn: bool = True) -> None:
        if warn and self.warn:
            warnings.warn(f"pyrovae's traced training step is not used for this pair: {why}; training "
                          f"runs the pair's code at every step (set traced_step='off' to skip the attempt)",
                          stacklevel=5)
        self.tracing, self.why_not = False, why
        self.graphs.clear()


def speed_path(elbo, *, fast: bool = True, traced: bool = False, modules: Optional[Sequence[nn.Module]] = None,
               warn: bool = True, recheck_every: Optional[int] = None):
    """``elbo`` as the trainer runs it, itself an ELBO: the fast step standing in for it where
    ``fast`` and :meth:`FastStep.for_elbo` allow, recorded and replayed where ``traced`` too
    (rechecked every ``recheck_every`` steps). Each is checked against ``elbo`` on the same draws
    before it is trusted and falls back to it where they differ. (Vectorized particles are
    verified per minibatch shape around it: :class:`~pyrovae.inference.vectorize.VerifiedParticles`.)"""
    step = FastStep.for_elbo(elbo, modules) if fast else None
    if step is not None and traced:
        step = TracedStep(step, modules, warn=warn, recheck_every=recheck_every)
    return step if step is not None else elbo
