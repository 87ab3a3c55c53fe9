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
  tracing off for the run), and at the first step of every epoch (:meth:`TracedStep.recheck`) the
  fast step takes the step and the graph's loss on the same draws is compared with it: if they
  differ, every graph is dropped and recorded again (the next steps).

Which pairs are traced (``train(..., traced_step=...)``, ``train.traced_step``): ``"auto"`` (the
default) the pairs of pyrovae's own models (their class says ``traceable = True``), ``"on"`` any
pair the checks above let through, ``"off"`` none. What it saves: BENCHMARKS.md, "Training speed".
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import pyro
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from ..errors import InputError
from .faststep import FastStep, add_grads, all_finite, differs, gradients, signature, trainable_params
from .traces import RngState

#: graphs kept per run (least recently used dropped first)
MAX_GRAPHS = 4
#: after the first MAX_GRAPHS recordings, at most one more every CHURN steps, else tracing stops
CHURN = 50
#: the values ``traced_step`` takes (True and False stand for "on" and "off")
MODES = ("auto", "on", "off")

#: argument values a graph's key can hold (fixed in the graph, compared by value)
_SCALARS = (bool, int, float, str, type(None))


def traced_mode(value) -> str:
    """``traced_step`` as one of :data:`MODES` (True → "on", False → "off"); InputError otherwise."""
    mode = {True: "on", False: "off"}[value] if isinstance(value, bool) else value
    if not isinstance(mode, str) or mode not in MODES:
        raise InputError(f"traced_step must be one of {', '.join(map(repr, MODES))} or a bool, got {value!r}")
    return mode


def traces_pair(mode: str, owner: Optional[nn.Module]) -> bool:
    """Whether ``mode`` traces a pair whose model belongs to ``owner`` (``"auto"``: when its class
    declares ``traceable = True``, as pyrovae's models do)."""
    return mode == "on" or (mode == "auto" and bool(getattr(owner, "traceable", False)))


class Graph:
    """One recorded step: ``module(*tensors)`` → :meth:`FastStep.terms`'s tensors; ``checked`` once
    its loss and gradients have matched the fast step's on the same draws."""

    def __init__(self, module: torch.fx.GraphModule):
        self.module, self.checked = module, False


class TracedStep:
    """The fast step ``fast`` replayed from graphs once it is on (until then, and after tracing is
    turned off, ``fast`` itself takes the steps). ``modules``: the pair's own modules, whose
    train/eval mode is part of each graph's key. ``warn``: say so when a step cannot be recorded or
    its graph differs (for a pair traced on request; ``"auto"`` leaves it to ``why_not``)."""

    def __init__(self, fast: FastStep, modules: Sequence[nn.Module] = (), warn: bool = True):
        self.fast, self.modules, self.warn = fast, tuple(modules), warn
        self.graphs: "OrderedDict[tuple, Graph]" = OrderedDict()
        self.tracing, self.why_not, self.rechecking = True, "", False
        self.steps = self.recorded = 0
        self.store_ids: Tuple[int, ...] = ()

    @property
    def state(self) -> str:
        """The fast step's state (``"unchecked"``, ``"on"``, ``"off"``)."""
        return self.fast.state

    def recheck(self) -> None:
        """Compare the next step's graph with the fast step (called at each epoch's first step)."""
        self.rechecking = True

    def loss_and_grads(self, model, guide, args: tuple, kwargs: dict) -> Optional[float]:
        """As :meth:`FastStep.loss_and_grads`: −ELBO as a number after adding its gradient to the
        parameters' ``.grad``, or None where the Pyro ELBO must take the step."""
        if not self.tracing or self.fast.state != "on":
            return self.fast.loss_and_grads(model, guide, args, kwargs)
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
                return self.fast.loss_and_grads(model, guide, args, kwargs)
            self.graphs[key] = graph
            if len(self.graphs) > MAX_GRAPHS:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        if not graph.checked:
            return self._check(key, graph, model, guide, args, kwargs, tensors)
        if self.rechecking:
            return self._recheck(graph, model, guide, args, kwargs, tensors)
        loss, surrogate = self.fast.finish(graph.module(*tensors))
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
            sites = self.fast.run(model, guide, tuple(values[:len(args)]), dict(zip(names, values[len(args):])))
            seen["signature"] = signature(*sites)
            return self.fast.terms(*sites)

        rng = RngState()
        try:
            module = make_fx(step)(*tensors)
        except Exception as e:  # data-dependent Python, or an operation make_fx cannot record
            first = str(e).splitlines()[0][:200] if str(e) else ""
            return self._turn_off(f"its step cannot be recorded (Python that depends on tensor values, or an "
                                  f"operation torch.fx cannot record: {type(e).__name__}: {first})")
        finally:
            rng.restore()
        if seen["signature"] != self.fast.sites:
            return self._turn_off("its sites changed while recording", warn=False)
        self.recorded += 1
        return Graph(module)

    def _eager(self, model, guide, args, kwargs):
        """(the random state before it, the fast step's loss and surrogate) on this call, or None when
        its sites changed (then the fast step is off and the Pyro ELBO takes the step)."""
        rng = RngState()
        sites = self.fast.run(model, guide, args, kwargs)
        if signature(*sites) != self.fast.sites:
            return self.fast.turn_off("the pair's sites changed between steps")
        return (rng, *self.fast.losses(*sites))

    def _check(self, key, graph: Graph, model, guide, args, kwargs, tensors) -> Optional[float]:
        """A new graph and the fast step on the same draws: the graph's numbers if their losses and
        gradients agree, else the fast step's, and tracing off."""
        eager = self._eager(model, guide, args, kwargs)
        if eager is None:
            return None
        rng, reference, ref_surrogate = eager
        params = trainable_params()
        ref_grads = gradients(ref_surrogate, params)
        if not all_finite([ref_surrogate, *ref_grads]):
            add_grads(params, ref_grads)  # NaN/Inf: nothing to compare (the trainer stops on it)
            return reference
        rng.restore()
        loss, surrogate = self.fast.finish(graph.module(*tensors))
        grads = gradients(surrogate, params)
        why = differs(loss, reference, grads, ref_grads)
        if why:
            self._turn_off(f"its recorded step differs from the pair's ({why})")
            add_grads(params, ref_grads)
            return reference
        graph.checked, self.rechecking = True, False  # compared in full: this step needs no recheck
        add_grads(params, grads)
        return loss

    def _recheck(self, graph: Graph, model, guide, args, kwargs, tensors) -> Optional[float]:
        """The fast step takes this step; the graph's loss on the same draws (no gradients) must be
        its loss, else every graph is dropped (what the pair's code reads has changed)."""
        self.rechecking = False
        eager = self._eager(model, guide, args, kwargs)
        if eager is None:
            return None
        rng, reference, ref_surrogate = eager
        after = RngState()
        rng.restore()
        with torch.no_grad():
            loss, _ = self.fast.finish(graph.module(*tensors))
        after.restore()
        if differs(loss, reference, [], []):
            self.graphs.clear()
        if ref_surrogate.requires_grad:
            ref_surrogate.backward()
        return reference

    def _stop(self, why: str, model, guide, args, kwargs) -> Optional[float]:
        self._turn_off(why)
        return self.fast.loss_and_grads(model, guide, args, kwargs)

    def _turn_off(self, why: str, warn: bool = True) -> None:
        if warn and self.warn:
            warnings.warn(f"pyrovae's traced training step is not used for this pair: {why}; training "
                          f"runs the pair's code at every step (set traced_step='off' to skip the attempt)",
                          stacklevel=5)
        self.tracing, self.why_not = False, why
        self.graphs.clear()
