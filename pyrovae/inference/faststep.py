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
same draws under the same seed. Each term is computed with the same operations, so the same number
to the last bit, except a Bernoulli likelihood's: s · Σ log p(x|z) as one fused BCE-with-logits sum
(:func:`observed_log_density`; what ``MeanField_ELBO`` computes too), equal to ``Trace_ELBO``'s
element-wise log-density and its sum up to the order of the float sum (≈ 1e-7 relative).

That is checked, not assumed: the first time the trainer could use the fast step,
:meth:`FastStep.loss_and_grads` runs the Pyro ELBO and the fast step on the same draws and goes
on with the fast step only if the sites, the loss and every parameter's gradient agree (1e-6
relative; equal to the bit, or to float rounding for a Bernoulli under ``Trace_ELBO``, in every
case of tests/test_faststep.py); else it stays with the Pyro
ELBO for the rest of the run, with a warning. Every later step compares its sites (names, observed
or latent) with the checked ones and goes back to the Pyro ELBO for good when they change. What
it saves is in BENCHMARKS.md, "Training speed"; ``train(..., fast_step=False)`` (``train.fast_step``)
turns it off.
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.util import torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .elbos import MeanField_ELBO, closed_form_kl_sum
from .traces import PYRO_PARTICLES, RngState, summed_log_density

#: relative tolerance of the check against the Pyro ELBO (loss and each gradient)
TOLERANCE = 1e-6


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


def unsupported(model_sites: Dict[str, dict], guide_sites: Dict[str, dict]) -> Optional[str]:
    """Why the fast step cannot stand in for the Pyro ELBO on this pair, or None."""
    latent = {n for n, s in model_sites.items() if not s["is_observed"]}
    if not latent <= set(guide_sites):
        return f"the guide does not sample the model's latent site(s) {sorted(latent - set(guide_sites))}"
    if any(not guide_sites[n]["infer"].get("is_auxiliary") for n in set(guide_sites) - latent):
        return "the guide samples sites the model does not have, not marked is_auxiliary"
    for name, site in guide_sites.items():
        if site["is_observed"] or not site["fn"].has_rsample:
            return f"guide site {name!r} is observed or not reparameterizable (a score-function term)"
    for name, site in {**model_sites, **guide_sites}.items():
        if site["infer"].get("enumerate"):
            return f"site {name!r} is enumerated"
    return None


class FastStep:
    """The fast step standing in for ``elbo`` (a ``Trace_ELBO`` or :class:`MeanField_ELBO`, its
    particles vectorized; :meth:`for_elbo` gives None for any other), in one of three states: ``"unchecked"``,
    ``"on"`` (checked equal), ``"off"`` (not equal, or not applicable: the Pyro ELBO from then on)."""

    def __init__(self, elbo):
        self.elbo, self.mean_field = elbo, isinstance(elbo, MeanField_ELBO)
        self.state, self.sites, self.why_off = "unchecked", None, ""

    @classmethod
    def for_elbo(cls, elbo) -> Optional["FastStep"]:
        """A FastStep for a ``Trace_ELBO`` or :class:`MeanField_ELBO` whose particles, if several, are
        vectorized; else None."""
        if type(elbo) not in (Trace_ELBO, MeanField_ELBO) or (elbo.num_particles > 1 and not elbo.vectorize_particles):
            return None
        return cls(elbo)

    def run(self, model, guide, args, kwargs):
        """(model sites, guide sites) of one run of the pair: the guide, then the model on its draws;
        r > 1 particles in Pyro's ``num_particles_vectorized`` plate, as the Pyro ELBO draws them."""
        with Recorder() as g, self._particles():
            guide(*args, **kwargs)
        with Recorder(g) as m, self._particles():
            model(*args, **kwargs)
        return m.sites, g.sites

    def _particles(self):
        r = self.elbo.num_particles
        return pyro.plate(PYRO_PARTICLES, r, dim=-self.elbo.max_plate_nesting) if r > 1 else nullcontext()

    def losses(self, model_sites, guide_sites) -> Tuple[float, torch.Tensor]:
        """(−ELBO as a number, the surrogate −ELBO to differentiate), as the Pyro ELBO computes them
        (the sums over r particles divided by r)."""
        return self.finish(self.terms(model_sites, guide_sites))

    def terms(self, model_sites, guide_sites) -> Tuple[torch.Tensor, ...]:
        """The tensors the loss is made of: (surrogate −ELBO, *the ELBO's terms whose numbers the
        Pyro ELBO adds up)* — for ``Trace_ELBO`` each site's s·Σ log p and −s·Σ log q, in order;
        for the mean-field ELBO the ELBO itself — all summed over the r particles."""
        if self.mean_field:
            elbo = self._mean_field(model_sites, guide_sites)
            return -elbo, elbo
        lps = [observed_log_density(s) if s["is_observed"] else log_prob_sum(s) for s in model_sites.values()]
        lps += [-log_prob_sum(s) for s in guide_sites.values()]
        return (-sum(lps),) + tuple(lps)

    def finish(self, terms: Sequence[torch.Tensor]) -> Tuple[float, torch.Tensor]:
        """(−ELBO as a number, the surrogate) from :meth:`terms`: the numbers added up in Python as
        the Pyro ELBO does (``Trace_ELBO``: the sites' numbers one by one), divided by r."""
        elbo = 0.0
        for term in terms[1:]:
            elbo = elbo + torch_item(term)
        r = self.elbo.num_particles
        return 0.0 - elbo / r, terms[0] / r

    @staticmethod
    def _mean_field(model_sites, guide_sites) -> torch.Tensor:
        kls = {n: closed_form_kl_sum(guide_sites[n], s) for n, s in model_sites.items() if not s["is_observed"]}
        elbo = 0.0
        for name, site in model_sites.items():
            if site["is_observed"]:
                elbo = elbo + observed_log_density(site)
            elif kls[name] is not None:
                elbo = elbo - kls[name]
            else:
                elbo = elbo + log_prob_sum(site) - log_prob_sum(guide_sites[name])
        for name, site in guide_sites.items():  # auxiliary guide sites
            if name not in model_sites:
                elbo = elbo - log_prob_sum(site)
        return elbo

    def loss_and_grads(self, model, guide, args: tuple, kwargs: dict) -> Optional[float]:
        """−ELBO as a number after adding its gradient to the parameters' ``.grad`` (as
        ``elbo.loss_and_grads``), or None where the Pyro ELBO must take this step (state ``"off"``)."""
        if self.state == "off":
            return None
        if self.state == "unchecked":
            return self._check(model, guide, args, kwargs)
        model_sites, guide_sites = self.run(model, guide, args, kwargs)
        if signature(model_sites, guide_sites) != self.sites:
            return self.turn_off("the pair's sites changed between steps")
        loss, surrogate = self.losses(model_sites, guide_sites)
        if getattr(surrogate, "requires_grad", False):
            surrogate.backward()
        return loss

    def _check(self, model, guide, args, kwargs) -> Optional[float]:
        """Both on the same draws; the fast step from now on if they agree (its gradient is added
        to ``.grad``), else None with the random state as it was: the Pyro ELBO takes the step."""
        if isinstance(poutine.unwrap(guide), Messenger):  # a GuideMessenger guide: Pyro's tracing only
            return self.turn_off("the guide is a GuideMessenger")
        rng = RngState()
        reference = self.elbo.differentiable_loss(model, guide, *args, **kwargs)
        rng.restore()
        try:
            model_sites, guide_sites = self.run(model, guide, args, kwargs)
        except Exception as e:  # the Pyro ELBO ran this pair; the fast step must not be what stops it
            rng.restore()
            warnings.warn(f"pyrovae's fast training step cannot run this pair ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); training uses "
                          f"{type(self.elbo).__name__} itself", stacklevel=4)
            return self.turn_off(f"it raised {type(e).__name__}")
        params = trainable_params()
        ref_grads = gradients(reference, params)
        if not all_finite([reference, *ref_grads]):
            rng.restore()  # NaN/Inf: nothing to compare; the Pyro ELBO takes this step, the check waits
            return None
        why = unsupported(model_sites, guide_sites)
        if why is None:
            loss, surrogate = self.losses(model_sites, guide_sites)
            grads = gradients(surrogate, params)
            why = differs(loss, reference.item(), grads, ref_grads)
            if not why:
                self.state, self.sites = "on", signature(model_sites, guide_sites)
                add_grads(params, grads)
                return loss
            name = type(self.elbo).__name__
            warnings.warn(f"pyrovae's fast training step differs from {name} on this pair ({why}); "
                          f"training uses {name} itself", stacklevel=4)
        self.turn_off(why)
        rng.restore()  # the Pyro ELBO takes this step on the same draws
        return None

    def turn_off(self, why: str) -> None:
        """State ``"off"`` for the rest of the run: the Pyro ELBO takes every step."""
        self.state, self.why_off = "off", why


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


def differs(loss: float, reference: float, grads, grads_ref) -> str:
    """Why a loss and its gradients are not the reference's (to TOLERANCE), or ""."""
    if abs(loss - reference) > TOLERANCE * max(abs(reference), 1.0):
        return f"loss {loss!r} against {reference!r}"
    for i, (g, ref) in enumerate(zip(grads, grads_ref)):
        if (g is None) != (ref is None):
            return f"parameter {i} has a gradient in one and not the other"
        if g is not None and not torch.allclose(g, ref, rtol=TOLERANCE, atol=TOLERANCE * float(ref.abs().max())):
            return f"parameter {i}'s gradient differs by up to {float((g - ref).abs().max()):.3g}"
    return ""


def add_grads(params, grads) -> None:
    """Add ``grads`` to the parameters' ``.grad`` (as ``backward`` would)."""
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
