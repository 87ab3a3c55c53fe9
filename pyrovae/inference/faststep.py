"""A training step without Pyro's trace bookkeeping, for pairs whose structure does not change.

Pyro's ``Trace_ELBO`` (and :class:`~pyrovae.inference.elbos.MeanField_ELBO`) run the guide under
``poutine.trace``, the model under ``poutine.trace(poutine.replay(model, guide_trace))``, build
two ``Trace`` graphs, copy them to drop the plates' subsample sites, and sum the sites'
log-densities through them. For the common pair — r particles vectorized, every latent site sampled by the
guide from a reparameterizable distribution (auxiliary guide sites too, as in autoguides),
nothing enumerated — the same sums need none of the
graphs: :class:`Recorder` keeps each sample site's message as Pyro's runtime leaves it (value,
distribution, scale and mask, as the pair's plates and the trainer's ``ScaleData`` set them) and
replays the guide's draws into the model, and :class:`FastStep` adds up, in the same order, the
same terms as the Pyro class it stands in for::

    trace        −ELBO = −Σ_model s·log p − (−Σ_guide s·log q)                (Trace_ELBO)
    mean-field   −ELBO = −Σ_obs s·log p(x|z) + Σ_{latent, KL registered} s·KL(q ‖ p)
                         − Σ_{other latent} s·(log p(z) − log q(z|x))
                         + Σ_{auxiliary} s·log q                                (MeanField_ELBO)

— Pyro's surrogate loss for such a pair (its score-function terms are identically zero), from the
same draws under the same seed. For ``TraceEnum_ELBO`` with one particle and one guide site y
enumerated in parallel (M2's label; nothing else enumerated, every site that depends on y in y's
plates), each term is weighted by the probability of the label it was computed with::

    enum         −ELBO = −Σ_y q(y) [Σ_model s·log p − Σ_guide s·log q]          (TraceEnum_ELBO)

(:func:`enumeration_weights`), TraceEnum_ELBO's sum over the labels, in float64 to 1e-14; its
float32 numbers differ by the order of the sum, so that check allows :data:`ENUM_TOLERANCE`. Each term is computed with the same operations, so the same number
to the last bit, except a Bernoulli likelihood's: s · Σ log p(x|z) as one fused BCE-with-logits sum
(:func:`observed_log_density`; what ``MeanField_ELBO`` computes too), equal to ``Trace_ELBO``'s
element-wise log-density and its sum up to the order of the float sum (≈ 1e-7 relative).

:class:`FastStep` is itself a ``pyro.infer.ELBO`` (``loss``, ``differentiable_loss``,
``loss_and_grads``), usable with ``pyro.infer.SVI`` as with :func:`pyrovae.train`, on the
precedent of Pyro's ``JitTrace_ELBO``. That it computes the Pyro ELBO's numbers is checked, not
assumed: its first ``loss_and_grads`` runs the Pyro ELBO and the fast step on the same draws (the
reference run's effects — BatchNorm statistics, modes, the random state — undone first, so the
step changes the pair once) and goes on with the fast step only if the sites, the loss and every
parameter's gradient agree (1e-6 relative; equal to the bit, or to float rounding for a Bernoulli
under ``Trace_ELBO``, in every case of tests/test_faststep.py); else that step and every later
one are the Pyro ELBO's, with a warning. Every later step compares its sites (names, observed
or latent) with the checked ones and goes back to the Pyro ELBO for good when they change. What
it saves is in BENCHMARKS.md, "Training speed"; ``train(..., step=StepSettings(fast_step=False))`` (``train.fast_step``)
turns it off.
"""
from __future__ import annotations

import functools
import operator
import warnings
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from .elbos import MeanField_ELBO, Wrapper, closed_form_kl_sum
from .state import Snapshot, pair_modules
from .traces import PARTICLES, elbo_terms, summed_log_density

#: relative tolerance of the check against the Pyro ELBO (loss and each gradient)
TOLERANCE = 1e-6
#: the same against ``TraceEnum_ELBO``, which adds the enumerated terms up in another order: in float32
#: a gradient differs by up to ~1.5e-5 of its largest element on M2 (in float64 by 2e-14)
ENUM_TOLERANCE = 1e-4


class Recorder(Messenger):
    """Keep the sample sites of one run of a model or guide: the messages themselves, by name, in
    the order they were sampled — ``sites`` without, ``all`` with the plates' subsample sites. With
    ``replay`` (the guide's Recorder) each of the model's unobserved sites that the guide sampled,
    subsample sites included, takes the guide's value, as under ``poutine.replay``."""

    def __init__(self, replay: Optional["Recorder"] = None):
        super().__init__()
        self.replay, self.sites, self.all = replay, {}, {}

    def _process_message(self, msg):
        if self.replay is not None and msg["type"] == "sample" and not msg["is_observed"]:
            guide_site = self.replay.all.get(msg["name"])
            if guide_site is not None:
                msg["value"], msg["infer"], msg["done"] = guide_site["value"], guide_site["infer"], True

    def _postprocess_message(self, msg):
        if msg["type"] == "sample":
            self.all[msg["name"]] = msg
            if not site_is_subsample(msg):
                self.sites[msg["name"]] = msg


def log_prob_sum(site) -> torch.Tensor:
    """s · Σ log p of a site, masked: Pyro's ``Trace.compute_log_prob`` for one site."""
    log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_p, site["scale"], site["mask"]).sum()


def observed_log_density(site) -> torch.Tensor:
    """s · Σ log p(x) of an observed site: in one fused kernel where there is one
    (:func:`~pyrovae.inference.traces.summed_log_density`: a Bernoulli's BCE with logits), else
    :func:`log_prob_sum` — the same number to float rounding (the order of the sum)."""
    fused = summed_log_density(site)
    return fused if fused is not None else log_prob_sum(site)


def signature(model_sites: Dict[str, dict], guide_sites: Dict[str, dict]) -> Tuple:
    """What must not change between steps: the sites' names, in order, and which are observed."""
    return (tuple((n, s["is_observed"]) for n, s in model_sites.items()), tuple(guide_sites))


def unsupported(model_sites: Dict[str, dict], guide_sites: Dict[str, dict], enumerated: bool = False) -> Optional[str]:
    """Why the fast step cannot stand in for the Pyro ELBO on this pair, or None. ``enumerated``
    (``TraceEnum_ELBO``): one guide site may be enumerated in parallel (:func:`enumerated_site`)."""
    latent = {n for n, s in model_sites.items() if not s["is_observed"]}
    if not latent <= set(guide_sites):
        return f"the guide does not sample the model's latent site(s) {sorted(latent - set(guide_sites))}"
    if any(not guide_sites[n]["infer"].get("is_auxiliary") for n in set(guide_sites) - latent):
        return "the guide samples sites the model does not have, not marked is_auxiliary"
    summed, why = enumerated_site(guide_sites) if enumerated else (None, None)
    if why:
        return why
    if summed is not None:
        dim, plates = guide_sites[summed]["infer"]["_enumerate_dim"], plate_names(guide_sites[summed])
        for name, site in {**model_sites, **guide_sites}.items():
            shape = site["fn"].batch_shape
            if len(shape) >= -dim and shape[dim] > 1 and not plates <= plate_names(site):
                return f"site {name!r} depends on the enumerated {summed!r} outside its plates"
    for name, site in guide_sites.items():
        if name != summed and (site["is_observed"] or not site["fn"].has_rsample):
            return f"guide site {name!r} is observed or not reparameterizable (a score-function term)"
    for name, site in {**model_sites, **guide_sites}.items():
        if name != summed and site["infer"].get("enumerate"):
            return f"site {name!r} is enumerated"
    return None


def enumerated_site(guide_sites: Dict[str, dict]) -> Tuple[Optional[str], Optional[str]]:
    """(the name of the guide's one site enumerated in parallel or None, None), or (None, why the
    fast step cannot sum it): several enumerated sites, a sequential one, or one outside a plate."""
    names = [n for n, s in guide_sites.items() if s["infer"].get("enumerate")]
    if not names:
        return None, None
    if len(names) > 1 or guide_sites[names[0]]["infer"].get("enumerate") != "parallel":
        return None, f"the guide enumerates {names} (the fast step sums one site enumerated in parallel)"
    if "_enumerate_dim" not in guide_sites[names[0]]["infer"] or not guide_sites[names[0]]["cond_indep_stack"]:
        return None, f"site {names[0]!r} is enumerated outside a plate"
    return names[0], None


class FastStep(Wrapper):
    """An ELBO standing in for ``elbo`` (a ``Trace_ELBO`` or :class:`MeanField_ELBO`, its
    particles vectorized; :meth:`for_elbo` gives None for any other): the same loss and gradients
    without Pyro's traces, checked against ``elbo`` on the same draws at its first
    ``loss_and_grads`` (module doc). Usable with ``pyro.infer.SVI`` as with :func:`pyrovae.train`.

    ``state``: ``"unchecked"``, ``"on"`` (checked equal), ``"off"`` (not equal, or not applicable:
    ``elbo`` itself from then on, ``why_off`` says why). While Pyro's validation is on, a checked
    fast step leaves the step to ``elbo`` (its checks are Pyro's). ``modules``: the pair's
    modules, whose buffers, modes and parameters the check restores (default: found from the pair,
    :func:`~pyrovae.inference.state.pair_modules`)."""

    scales_inside = True  # a sum of site log-densities

    def __init__(self, elbo, modules: Optional[Sequence[nn.Module]] = None):
        super().__init__(elbo)
        self.mean_field, self.modules = isinstance(elbo, MeanField_ELBO), modules
        self.enumerated = type(elbo) is TraceEnum_ELBO
        self.state, self.sites, self.why_off = "unchecked", None, ""

    @classmethod
    def for_elbo(cls, elbo, modules: Optional[Sequence[nn.Module]] = None) -> Optional["FastStep"]:
        """A FastStep for a ``Trace_ELBO`` or :class:`MeanField_ELBO` whose particles, if several, are
        vectorized, or a ``TraceEnum_ELBO`` with one particle; else None."""
        if type(elbo) is TraceEnum_ELBO and elbo.num_particles == 1:
            return cls(elbo, modules)
        if type(elbo) not in (Trace_ELBO, MeanField_ELBO) or not vectorized(elbo):
            return None
        return cls(elbo, modules)

    def run(self, model, guide, args, kwargs):
        """(model sites, guide sites) of one run of the pair: the guide, then the model on its draws;
        r > 1 particles in Pyro's ``num_particles_vectorized`` plate, as the Pyro ELBO draws them; for
        ``TraceEnum_ELBO`` the guide's sites marked for parallel enumeration take their whole support,
        in dimensions left of the plates, as Pyro's ``EnumMessenger`` allocates them."""
        if (self.num_particles > 1 or self.enumerated) and self.max_plate_nesting == float("inf"):
            self.elbo._guess_max_plate_nesting(model, guide, args, kwargs)
        with Recorder() as g, self._particles(), self._enumerate():
            guide(*args, **kwargs)
        with Recorder(g) as m, self._particles():
            model(*args, **kwargs)
        return m.sites, g.sites

    def _particles(self):
        r = self.num_particles
        return pyro.plate(PARTICLES, r, dim=-self.max_plate_nesting) if r > 1 else nullcontext()

    def _enumerate(self):
        return EnumMessenger(first_available_dim=-1 - self.max_plate_nesting) if self.enumerated else nullcontext()

    def losses(self, model_sites, guide_sites) -> Tuple[float, torch.Tensor]:
        """(−ELBO as a number, the surrogate −ELBO to differentiate), as the Pyro ELBO computes them
        (the sums over r particles divided by r)."""
        return self.finish(self.terms(model_sites, guide_sites))

    def terms(self, model_sites, guide_sites) -> Tuple[torch.Tensor, ...]:
        """The tensors the loss is made of: (surrogate −ELBO, *the ELBO's terms whose numbers the
        Pyro ELBO adds up)* — for ``Trace_ELBO`` each site's s·Σ log p and −s·Σ log q, in order;
        for the mean-field ELBO the ELBO itself — all summed over the r particles
        (:func:`~pyrovae.inference.traces.elbo_terms`)."""
        if self.mean_field:
            terms = list(elbo_terms(model_sites, guide_sites, _fast_log_p, log_prob_sum, closed_form_kl_sum))
            elbo = functools.reduce(operator.add, terms) if terms else 0.0  # left to right, as the Pyro class adds
            return -elbo, elbo
        if self.enumerated:
            weigh = enumeration_weights(guide_sites)
            lps = list(elbo_terms(model_sites, guide_sites, weigh, weigh))
        else:
            lps = list(elbo_terms(model_sites, guide_sites, _fast_log_p, log_prob_sum))
        return (-sum(lps),) + tuple(lps)

    def finish(self, terms: Sequence[torch.Tensor]) -> Tuple[float, torch.Tensor]:
        """(−ELBO as a number, the surrogate) from :meth:`terms`: the numbers added up in Python as
        the Pyro ELBO does (``Trace_ELBO``: the sites' numbers one by one), divided by r."""
        elbo = 0.0
        for term in terms[1:]:
            elbo = elbo + torch_item(term)
        r = self.num_particles
        return 0.0 - elbo / r, terms[0] / r if r > 1 else terms[0]  # (x / 1 is x: no division in the graph)

    def _on(self) -> bool:
        """Whether this call may take the fast path (checked or to be checked, applicable, not validating)."""
        return self.state != "off" and vectorized(self.elbo) and not (self.state == "on" and is_validation_enabled())

    def loss(self, model, guide, *args, **kwargs) -> float:
        """−ELBO, a number (the fast step's once checked, else ``elbo``'s)."""
        if self.state != "on" or not self._on():
            return self.elbo.loss(model, guide, *args, **kwargs)
        with torch.no_grad():
            return self._fast(model, guide, args, kwargs, backward=False)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """−ELBO as a tensor whose gradient is the estimator's (the fast step's surrogate once checked)."""
        if self.state != "on" or not self._on():
            return self.elbo.differentiable_loss(model, guide, *args, **kwargs)
        sites = self.run(model, guide, args, kwargs)
        if signature(*sites) != self.sites:
            self.turn_off("the pair's sites changed between steps")
            return self.elbo.differentiable_loss(model, guide, *args, **kwargs)
        loss, surrogate = self.losses(*sites)
        return loss + (surrogate - torch_item(surrogate))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """−ELBO as a number after adding its gradient to the parameters' ``.grad``."""
        if not self._on():
            return self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        if self.state == "unchecked":
            return self._check(model, guide, args, kwargs)
        return self._fast(model, guide, args, kwargs, backward=True)

    def _fast(self, model, guide, args, kwargs, backward: bool) -> float:
        model_sites, guide_sites = self.run(model, guide, args, kwargs)
        if signature(model_sites, guide_sites) != self.sites:
            self.turn_off("the pair's sites changed between steps")
            run = self.elbo.loss_and_grads if backward else self.elbo.loss
            return run(model, guide, *args, **kwargs)
        loss, surrogate = self.losses(model_sites, guide_sites)
        if backward and getattr(surrogate, "requires_grad", False):
            surrogate.backward()
        return loss

    def _check(self, model, guide, args, kwargs) -> float:
        """Both on the same draws; the fast step's numbers (its gradient added to ``.grad``) from now
        on if they agree, else ``elbo``'s on the same draws. The reference run leaves nothing
        behind (parameters, buffers, modes, random state: :class:`~pyrovae.inference.state.Snapshot`),
        so that the step changes the pair's state once, as one step of ``elbo`` does."""
        if isinstance(poutine.unwrap(guide), Messenger):  # a GuideMessenger guide: Pyro's tracing only
            self.turn_off("the guide is a GuideMessenger")
            return self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        if self.vectorize_particles and self.max_plate_nesting == float("inf"):
            self.elbo._guess_max_plate_nesting(model, guide, args, kwargs)  # before both runs: the same draws
        snap = Snapshot(self.modules if self.modules is not None else pair_modules(model, guide))
        try:
            reference = self.elbo.differentiable_loss(model, guide, *args, **kwargs)
            params = trainable_params()
            ref_grads = gradients(reference, params)
        finally:
            snap.restore()
        if not all_finite([reference, *ref_grads]):  # NaN/Inf: nothing to compare; the check waits
            return self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        try:
            model_sites, guide_sites = self.run(model, guide, args, kwargs)
        except Exception as e:  # the Pyro ELBO ran this pair; the fast step must not be what stops it
            snap.restore()
            warnings.warn(f"pyrovae's fast training step cannot run this pair ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); training uses "
                          f"{type(self.elbo).__name__} itself", stacklevel=4)
            self.turn_off(f"it raised {type(e).__name__}")
            return self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        why = unsupported(model_sites, guide_sites, self.enumerated)
        if why is None:
            loss, surrogate = self.losses(model_sites, guide_sites)
            grads = gradients(surrogate, params)
            why = differs(loss, reference.item(), grads, ref_grads, ENUM_TOLERANCE if self.enumerated else TOLERANCE)
            if not why:
                self.state, self.sites = "on", signature(model_sites, guide_sites)
                add_grads(params, grads)
                return loss
            name = type(self.elbo).__name__
            warnings.warn(f"pyrovae's fast training step differs from {name} on this pair ({why}); "
                          f"training uses {name} itself", stacklevel=4)
        self.turn_off(why)
        snap.restore()  # the Pyro ELBO takes this step on the same draws, from the same state
        return self.elbo.loss_and_grads(model, guide, *args, **kwargs)

    def turn_off(self, why: str) -> None:
        """State ``"off"`` for the rest of the run: the Pyro ELBO takes every step."""
        self.state, self.why_off = "off", why


def vectorized(elbo) -> bool:
    """Whether ``elbo`` draws its particles in one vectorized pass (one particle counts as one)."""
    return elbo.num_particles == 1 or bool(elbo.vectorize_particles)


def enumeration_weights(guide_sites: Dict[str, dict]):
    """``TraceEnum_ELBO``'s sum over the guide's one enumerated site y, for a pair that enumerates
    nothing else: a function of a site giving s·Σ q(y|·) log p — the site's scaled log-density
    weighted by the probability q(y) of the label its value was computed with, summed over the
    enumerated dimension and the plates — where its log-density has y's dimension, and s·Σ log p
    where it does not. So the ELBO of the run is Σ_y q(y) [log p(x, y, z_y) − log q(z_y | y)] + H(q(y)),
    the TraceEnum_ELBO of one particle (:func:`unsupported` has checked that each site depending on
    y lies in y's plates)."""
    name, _ = enumerated_site(guide_sites)
    if name is None:
        return log_prob_sum
    y = guide_sites[name]
    probs = y["fn"].log_prob(y["value"], *y["args"], **y["kwargs"]).exp()  # [K, 1.., B..]: q(y) of each label
    dim = y["infer"]["_enumerate_dim"]

    def weighted(site) -> torch.Tensor:
        log_p = scale_and_mask(site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"]),
                               site["scale"], site["mask"])
        if log_p.dim() < -dim or log_p.shape[dim] == 1:
            return log_p.sum()
        return (probs * log_p).sum()
    return weighted


def plate_names(site) -> set:
    """The names of the plates a site lies in."""
    return {f.name for f in site["cond_indep_stack"]}


def _fast_log_p(site) -> torch.Tensor:
    """A model site's s·Σ log p: fused where observed and possible (:func:`observed_log_density`)."""
    return observed_log_density(site) if site["is_observed"] else log_prob_sum(site)


def trainable_params() -> List[torch.Tensor]:
    """The parameters in Pyro's store that take gradients, in the store's order."""
    return [p for _, p in pyro.get_param_store().named_parameters() if p.requires_grad]


def gradients(loss, params: List[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """d loss / d params (None for a parameter the loss does not use), keeping the graph."""
    if not getattr(loss, "requires_grad", False) or not params:
        return [None] * len(params)
    return list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))


def all_finite(tensors) -> bool:
    """Whether every tensor given (None skipped) holds no NaN or ±Inf."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


def differs(loss: float, reference: float, grads, grads_ref, tolerance: float = TOLERANCE) -> str:
    """Why a loss and its gradients are not the reference's (to ``tolerance``, relative), or ""."""
    if abs(loss - reference) > tolerance * max(abs(reference), 1.0):
        return f"loss {loss!r} against {reference!r}"
    for i, (g, ref) in enumerate(zip(grads, grads_ref)):
        if (g is None) != (ref is None):
            return f"parameter {i} has a gradient in one and not the other"
        if g is not None and not close(g, ref, tolerance):
            return f"parameter {i}'s gradient differs by up to {float((g - ref).abs().max()):.3g}"
    return ""


def close(value: torch.Tensor, reference: torch.Tensor, tolerance: float) -> bool:
    """``torch.allclose(value, reference, rtol=tolerance, atol=tolerance · max|reference|)``:
    |value − reference| ≤ tolerance · |reference| + tolerance · max|reference| everywhere (False at
    a NaN), in blocks of :data:`BLOCK` elements: allclose's temporaries of a parameter's size are
    fresh memory the allocator maps and unmaps at every call (≈ 1,900 page faults, 5 ms, for the
    tutorial VAE's gradients), small blocks reuse the same few pages."""
    if reference.numel() == 0:
        return value.numel() == 0
    low, high = torch.aminmax(reference)
    atol = tolerance * max(-float(low), float(high))
    for v, r in zip(value.reshape(-1).split(BLOCK), reference.reshape(-1).split(BLOCK)):
        if not bool(torch.sub(v, r).abs_().le_(r.abs().mul_(tolerance).add_(atol)).all()):
            return False
    return True


#: elements compared at a time by :func:`close` (64 KiB of float32)
BLOCK = 1 << 14


def add_grads(params, grads) -> None:
    """Add ``grads`` to the parameters' ``.grad`` (as ``backward`` would)."""
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
