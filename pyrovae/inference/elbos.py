"""Pyro's ELBOs by name, for :func:`pyrovae.train` and the ``train.elbo`` config key.

==============  ===================================================================
``trace``       ``Trace_ELBO``: E_q[log p(x, z) − log q(z|x)], z sampled
``mean-field``  :class:`MeanField_ELBO` (``TraceMeanField_ELBO``): E_q[log p(x|z)] − KL(q ‖ p),
                the KL in closed form at every latent site where it is registered
``iwae``        ``RenyiELBO(alpha=0)``: log 1/k Σ_j p(x, z_j)/q(z_j|x), k = ``num_particles``
``graph``       ``TraceGraph_ELBO``: Trace_ELBO with Rao-Blackwellised score-function terms
``enum``        ``TraceEnum_ELBO``: discrete sites marked ``infer={"enumerate": "parallel"}``
                (``config_enumerate``) summed out exactly, the others sampled
==============  ===================================================================

Any ``pyro.infer.ELBO`` instance may be given instead of a name. ``make_elbo(..., gradient=)``
swaps the gradient estimator, keeping the value (:mod:`pyrovae.inference.pathwise`):

==============  ===================================================================
``standard``    the ELBO's own (any name)
``stl``         :class:`STL_ELBO` for ``trace``: sticking the landing, no score term
``dreg``        :class:`DReG_IWAE` for ``iwae``: doubly reparameterized IWAE gradient
==============  ===================================================================
"""
from __future__ import annotations

import warnings
from functools import partial

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled, torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated, warn_if_nan

from .. import checks
from ..errors import ConfigError
from ..registry import Registry
from .pathwise import DReG_IWAE, STL_ELBO
from .traces import elbo_terms, kl_or_none, sample_sites, summed_log_density, traces


class MeanField_ELBO(ELBO):
    """Pyro's ``TraceMeanField_ELBO`` estimate, computing only the log-densities it uses.

    Per particle, with s the site scale (N/B for a minibatch) and m its mask::

        ELBO = Σ_obs s·log p(x|z) − Σ_{latent, KL registered} s·KL(q ‖ p)
                                  + Σ_{latent, no KL} s·(log p(z) − log q(z|x))

    Warning, as for Pyro's class: this estimator may give incorrect results when the guide and
    model do not satisfy the mean-field condition. The precise condition: for every latent z of
    the guide, its parents in the model include no latent that is a descendant of z in the guide;
    a fully factorised (mean-field) guide satisfies it. While Pyro's validation is on, a guide
    whose latent sites are not in the model's order is warned about.

    Pyro's class evaluates log p and log q at every site before choosing, so for a VAE with a
    closed-form KL it computes log p(z) and log q(z|x) and then discards them. This one computes each latent site's KL
    once, and log-densities only where there is none (an observed Bernoulli's only as its sum, in
    one fused kernel: :func:`pyrovae.inference.traces.summed_log_density`) — the same value, gradients and draws under
    the same seed (tests/test_elbos.py), and the same behaviour on the cases of Pyro's own test
    suite that exercise ``TraceMeanField_ELBO`` (tests/test_meanfield_conformance.py). While
    Pyro's validation is on (and for a ``GuideMessenger`` guide) it traces exactly as Pyro's class
    does, with all log-densities and all of its checks, and warns as it does when the guide's
    latent sites are not in the model's order; an observed Bernoulli's term is then still its fused
    sum, so that a step's numbers do not depend on whether validation is on.

    It builds on Pyro's public API only (docs/design.md says why): the
    ``ELBO`` base class (its constructor options and ``__call__``), ``loss``,
    ``differentiable_loss`` and ``loss_and_grads`` defined here, and public helpers
    (``get_importance_trace``, ``Trace.compute_log_prob``/``compute_score_parts``, the checks in
    ``pyro.util`` and ``pyro.infer.util``). It calls no private Pyro method; ``_get_trace`` below
    is the one hook ``ELBO`` declares abstract, implemented here and called only by this class.
    Particles are drawn as Pyro's ELBOs draw them (a ``num_particles_vectorized`` plate, or a loop),
    so seeds give the same draws. (``isinstance(MeanField_ELBO(), TraceMeanField_ELBO)`` is False.)
    """

    def _get_trace(self, model, guide, args, kwargs):
        """One (model trace, guide trace) pair: observed sites' log-densities, each latent site's
        closed-form KL as ``kl_sum`` where one is registered, log p and the score parts elsewhere."""
        if is_validation_enabled() or isinstance(poutine.unwrap(guide), Messenger):
            model_trace, guide_trace = get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
            if is_validation_enabled():
                check_if_enumerated(guide_trace)
                _warn_unless_in_model_order(model_trace, guide_trace)
            _sum_observed_in_one_kernel(model_trace)  # the same numbers with validation on or off
        else:
            model_trace, guide_trace = map(prune_subsample_sites, traces(model, guide, *args, **kwargs))
            _sum_observed_in_one_kernel(model_trace)
        closed = _closed_form_kls(model_trace, guide_trace)
        model_trace.compute_log_prob(lambda name, site: name not in closed and "log_prob_sum" not in site)
        if any(s["type"] == "sample" and n not in closed for n, s in guide_trace.nodes.items()):
            guide_trace.compute_score_parts()
        return model_trace, guide_trace

    def loss(self, model, guide, *args, **kwargs) -> float:
        """−ELBO, a number: the mean over ``num_particles`` draws."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + _particle_loss(model_trace, guide_trace)[0] / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """−ELBO as a tensor whose gradient is the estimator's (its value is :meth:`loss`'s)."""
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss_particle, surrogate_particle = _particle_loss(model_trace, guide_trace)
            surrogate = surrogate + surrogate_particle / self.num_particles
            loss = loss + loss_particle / self.num_particles
        warn_if_nan(surrogate, "loss")
        return loss + (surrogate - torch_item(surrogate))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """−ELBO, a number, after adding its gradient to the parameters' ``.grad`` (one backward
        pass per particle, as Pyro's ELBOs do)."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss_particle, surrogate_particle = _particle_loss(model_trace, guide_trace)
            loss = loss + loss_particle / self.num_particles
            trainable = any(site["type"] == "param" for trace in (model_trace, guide_trace)
                            for site in trace.nodes.values())
            if trainable and getattr(surrogate_particle, "requires_grad", False):
                (surrogate_particle / self.num_particles).backward(retain_graph=self.retain_graph)
        warn_if_nan(loss, "loss")
        return loss


def _sum_observed_in_one_kernel(model_trace) -> None:
    """Store s·Σ log p(x) as ``log_prob_sum`` at each observed site whose distribution has a fused
    summed form (:func:`pyrovae.inference.traces.summed_log_density`: a Bernoulli likelihood, the
    BCE of a hand-written loop); the ELBO needs only that sum there, not the element-wise log p."""
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and site["is_observed"]:
            total = summed_log_density(site)
            if total is not None:
                site["log_prob_sum"] = total


def _warn_unless_in_model_order(model_trace, guide_trace) -> None:
    """Warn (as Pyro's class does) when the guide samples the shared sites in another order than the
    model: the same order is sufficient, though not necessary, for the mean-field estimate to be right."""
    in_model = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and n in guide_trace.nodes]
    in_guide = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and n in model_trace.nodes]
    if in_model != in_guide:
        warnings.warn("Failed to verify mean field restriction on the guide: the model samples "
                      f"{', '.join(in_model)} and the guide {', '.join(in_guide)}. To eliminate this warning, "
                      "ensure model and guide sites occur in the same order.")


def _particle_loss(model_trace, guide_trace):
    """(−ELBO of one particle as a number, the same as a tensor to differentiate): the sum of
    :func:`~pyrovae.inference.traces.elbo_terms` with each site's ``log_prob_sum``, each guide
    site's log q from its score parts and the closed-form KLs stored as ``kl_sum``."""
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    for name, guide_site in guide_sites.items():
        if is_validation_enabled():
            check_fully_reparametrized(guide_site)
        if name not in model_sites:
            assert guide_site["infer"].get("is_auxiliary")
    elbo = 0.0
    for term in elbo_terms(model_sites, guide_sites, log_p=_log_prob_sum, log_q=_log_q, kl=_stored_kl):
        elbo = elbo + term
    return -torch_item(elbo), -elbo


def _log_prob_sum(site):
    return site["log_prob_sum"]


def _log_q(guide_site):
    """s·Σ log q of a guide site, from its score parts."""
    return guide_site["score_parts"].entropy_term.sum()


def _stored_kl(guide_site, model_site):
    return guide_site.get("kl_sum")


def closed_form_kl_sum(guide_site, model_site):
    """s·KL(q ‖ p) of a latent site summed over its batch, where a KL is registered for the pair
    (a tensor; the number 0.0 for a pair masked out entirely — Pyro's ``MaskedDistribution`` KL cannot
    tell the device — as in Pyro's class); None where none is."""
    kl = kl_or_none(guide_site, model_site, guide_site["scale"])
    if kl is None:
        return None
    batch_shape = guide_site["fn"].batch_shape
    if torch.is_tensor(kl):
        assert kl.shape == batch_shape, (guide_site["name"], kl.shape, batch_shape)
        return kl.sum()
    return kl * torch.Size(batch_shape).numel()


def _closed_form_kls(model_trace, guide_trace) -> set:
    """Store :func:`closed_form_kl_sum` as ``kl_sum`` in each guide site whose KL is registered; their names."""
    closed = set()
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        kl = closed_form_kl_sum(guide_trace.nodes[name], site)
        if kl is not None:
            guide_trace.nodes[name]["kl_sum"] = kl
            closed.add(name)
    return closed


def scales_inside(elbo) -> bool:
    """Whether ``elbo`` takes a minibatch scaled to the data set inside, by its sites' scale (the
    trainer's ``ScaleData``): its ``scales_inside`` attribute where it has one (pyrovae's ELBOs);
    for Pyro's classes, every one but ``RenyiELBO``.

    Right for the ELBOs that are sums of site log-densities (Trace, TraceMeanField, TraceGraph,
    TraceEnum), which may also hold global latents. Not for the importance-weighted bound: Pyro's
    ``RenyiELBO`` (and :class:`DReG_IWAE`, which matches its value) puts a site's scale s inside
    the log-mean-exp over particles, log 1/k Σ_j w_j^s ≠ s · log 1/k Σ_j w_j; with s = N/B = 600
    that is about s · max_j log w_j, the VR-max objective (Li & Turner 2016), not IWAE. For them
    the minibatch's loss and gradient are multiplied by N/B outside (an unbiased estimate of the
    bound summed over the data set).
    """
    return getattr(elbo, "scales_inside", not isinstance(elbo, RenyiELBO))


class Wrapper(ELBO):
    """An ELBO standing in for another, ``self.elbo``: its options (``num_particles``,
    ``max_plate_nesting``, ``vectorize_particles``, ...) are the wrapped ELBO's, read and set
    through, and ``loss``, ``differentiable_loss`` and ``loss_and_grads`` are the wrapped ELBO's
    unless a subclass computes them another way (the fast and traced steps, the particles'
    fallback). Usable wherever a ``pyro.infer.ELBO`` is (``pyro.infer.SVI``, :func:`pyrovae.train`).
    """

    _OPTIONS = ("num_particles", "max_plate_nesting", "vectorize_particles", "retain_graph",
                "strict_enumeration_warning", "ignore_jit_warnings", "jit_options")

    def __init__(self, elbo: ELBO):  # ELBO.__init__ is not called: the options are the wrapped ELBO's
        self.elbo = elbo

    def __getattr__(self, name):
        if name in Wrapper._OPTIONS and "elbo" in self.__dict__:
            return getattr(self.__dict__["elbo"], name)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name in Wrapper._OPTIONS:
            setattr(self.elbo, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def scales_inside(self) -> bool:
        return scales_inside(self.elbo)

    def _get_trace(self, model, guide, args, kwargs):
        return self.elbo._get_trace(model, guide, args, kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        return self.elbo.loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self.elbo.differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return self.elbo.loss_and_grads(model, guide, *args, **kwargs)


def innermost(elbo: ELBO) -> ELBO:
    """The ELBO a chain of :class:`Wrapper` stands in for (``elbo`` itself when it is none)."""
    while isinstance(elbo, Wrapper):
        elbo = elbo.elbo
    return elbo


#: name → Pyro ELBO class (with its fixed options); an ``ELBO`` instance passes through ``build``
ELBOS = Registry("elbo", ELBO)
ELBOS.register("trace", Trace_ELBO)
ELBOS.register("mean-field", MeanField_ELBO)
ELBOS.register("iwae", partial(RenyiELBO, alpha=0))
ELBOS.register("graph", TraceGraph_ELBO)
ELBOS.register("enum", pyro.infer.TraceEnum_ELBO)  # sums the guide's (and model's) enumerated sites exactly


#: gradient estimators of ``train.gradient``: name → (the ``train.elbo`` it is for, its class)
PATHWISE = {"stl": ("trace", STL_ELBO), "dreg": ("iwae", DReG_IWAE)}
GRADIENTS = ("standard", *PATHWISE)


def make_elbo(name, num_particles: int = 1, max_plate_nesting: int = 1, gradient: str = "standard") -> ELBO:
    """The Pyro ELBO called ``name`` (or ``name`` itself, an ELBO instance); r > 1 particles
    are vectorized (one pass, an extra plate).

    ``gradient``: ``"standard"`` (the ELBO's own estimator), ``"stl"`` (:class:`STL_ELBO`, for
    ``name="trace"``) or ``"dreg"`` (:class:`DReG_IWAE`, for ``name="iwae"``): the same value, a
    gradient of lower variance (docs/estimators.md)."""
    r = checks.positive_int("num_particles", num_particles)
    if gradient not in GRADIENTS:
        raise ConfigError(f"gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
    if gradient == "standard":
        return ELBOS.build(name, num_particles=r, vectorize_particles=r > 1, max_plate_nesting=max_plate_nesting)
    needs, cls = PATHWISE[gradient]
    if name != needs:
        got = repr(name) if isinstance(name, str) else f"a {type(name).__name__} instance"
        raise ConfigError(f"gradient {gradient!r} is for elbo {needs!r}, got elbo {got}")
    return cls(num_particles=r, vectorize_particles=r > 1, max_plate_nesting=max_plate_nesting)
