"""Path-wise gradient estimators of lower variance: :class:`STL_ELBO` and :class:`DReG_IWAE`.

Both are Pyro ELBOs (``SVI(model, guide, optim, STL_ELBO())``; ``make_elbo(..., gradient=)``) whose
*values* are those of Pyro's ``Trace_ELBO`` and ``RenyiELBO(alpha=0)`` on the same draws (same seed),
and whose *gradients* drop the score term ∂/∂φ log q(z; φ)|_z, which has expectation zero but
adds variance, or (DReG) replace it by its path-wise equivalent.

Removing the score, for any reparameterized guide (flows included): with sg the stop-gradient,

    log q'(z; φ) = log q(z; φ) − [log q(sg z; φ) − sg log q(sg z; φ)]

has the value of log q and the gradient ∂_z log q · dz/dφ only (the bracket's value is 0, its
gradient is the score). ``log q(sg z; φ)`` is each guide site's scaled, masked log-density at its
detached value; when the guide has more than one sample site, the guide is run again on the
detached values (one more guide pass), so a site whose distribution depends on an earlier latent
also sees that latent detached — the score of the joint q(z₁, z₂, …) is removed, nothing else.
A flow's density at a detached value needs the flow's inverse (Pyro's autoregressive transforms
compute it, one pass per latent dimension).

A guide site without ``rsample`` (a discrete or enumerated latent) has no path-wise gradient: it is
refused with a :class:`~pyrovae.errors.PairError` naming the site.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, is_validation_enabled, torch_item, torch_sum
from pyro.poutine.trace_struct import Trace
from pyro.util import check_if_enumerated, warn_if_nan

from ..errors import PairError
from .traces import elbo_terms, params_of, sample_sites

#: key of a guide site's s·log q(sg z; φ) (upstream latents detached too), batch-shaped
STOPPED = "log_prob_stopped"
#: key of a model site's s·log p evaluated on the detached latents (DReG, shared parameters only)
DETACHED = "log_prob_detached_z"


def check_reparameterized(guide_trace, estimator: str) -> None:
    """Refuse a guide sample site whose distribution has no ``rsample`` (no path-wise gradient)."""
    for name, site in sample_sites(guide_trace).items():
        if not site["is_observed"] and not site["fn"].has_rsample:
            raise PairError(f"{estimator} needs a reparameterized guide, but guide site {name!r} samples "
                            f"{type(site['fn']).__name__}, which has no rsample; use gradient='standard' "
                            "(Trace_ELBO / RenyiELBO) for this pair")


def replayed_on_detached(fn, guide_trace, args, kwargs):
    """``fn``'s trace (log-densities computed) when replayed on the guide's draws, detached."""
    detached = Trace()
    for name, site in sample_sites(guide_trace).items():
        detached.add_node(name, **{**site, "value": site["value"].detach()})
    trace = poutine.trace(poutine.replay(fn, trace=detached)).get_trace(*args, **kwargs)
    trace.compute_log_prob()
    return trace


def add_stopped_log_q(guide, guide_trace, args, kwargs) -> None:
    """Store s·log q(sg z; φ), masked and batch-shaped, under :data:`STOPPED` in each guide sample
    site: directly from the site's distribution when it is the guide's only sample site, else from
    the guide replayed on the detached draws (so upstream latents are detached in it as well)."""
    sites = sample_sites(guide_trace)
    if len(sites) == 1:
        for site in sites.values():
            log_q = site["fn"].log_prob(site["value"].detach(), *site["args"], **site["kwargs"])
            site[STOPPED] = scale_and_mask(log_q, site["scale"], site["mask"])
        return
    replayed = sample_sites(replayed_on_detached(guide, guide_trace, args, kwargs))
    for name, site in sites.items():
        site[STOPPED] = replayed[name]["log_prob"]


def score_free(site) -> torch.Tensor:
    """The bracket log q(sg z; φ) − sg(·) of a guide site: value 0, gradient the site's score."""
    return site[STOPPED] - site[STOPPED].detach()


def _log_prob_sum(site) -> torch.Tensor:
    return site["log_prob_sum"]


def _score_free_log_q(site) -> torch.Tensor:
    """s·Σ log q'(z; φ) of a guide site: its value, without the score in its gradient."""
    return site["log_prob_sum"] - score_free(site).sum()


class _PathwiseELBO(ELBO):
    """Traces as Pyro's ``Trace_ELBO``/``RenyiELBO`` draw them (``get_importance_trace``; particles
    by Pyro's ``ELBO`` base class, vectorized in its ``num_particles_vectorized`` plate or looped, so
    a seed gives their draws), plus each guide site's :data:`STOPPED` log-density."""

    estimator = "a path-wise gradient"

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        check_reparameterized(guide_trace, type(self).__name__)
        add_stopped_log_q(guide, guide_trace, args, kwargs)
        self._extend(model, guide_trace, model_trace, args, kwargs)
        return model_trace, guide_trace

    def _extend(self, model, guide_trace, model_trace, args, kwargs) -> None:
        """Hook: more per-site terms a subclass needs (none here)."""


class STL_ELBO(_PathwiseELBO):
    """Sticking the landing (Roeder, Wu & Duvenaud 2017): Trace_ELBO's value, its gradient without
    the score term. Per particle, with s each site's scale (N/B for a minibatch)::

        surrogate = Σ_model s·log p(x, z) − Σ_guide s·log q'(z; φ)      (log q' as in the module doc)
        ∇ surrogate = ∇_θ log p + (∂_z log p − ∂_z log q) dz/dφ

    an unbiased estimate of ∇ELBO (the score has mean zero) that is exactly zero for the guide
    when q(z|x) equals the posterior p(z|x) (log p(x, z) − log q(z|x) = log p(x) for every z).
    ``num_particles`` draws are averaged, vectorized or looped as in Pyro.
    """

    def _particle(self, model_trace, guide_trace) -> Tuple[float, torch.Tensor]:
        """(−ELBO of one particle as a number, −(the STL surrogate ELBO) as a tensor), the number
        summed site by site as Trace_ELBO's ``loss_and_grads`` sums it."""
        model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
        elbo = 0.0
        for term in elbo_terms(model_sites, guide_sites, log_p=_log_prob_sum, log_q=_log_prob_sum):
            elbo = elbo + torch_item(term)
        surrogate = 0.0
        for term in elbo_terms(model_sites, guide_sites, log_p=_log_prob_sum, log_q=_score_free_log_q):
            surrogate = surrogate + term
        return -elbo, -surrogate

    def loss(self, model, guide, *args, **kwargs) -> float:
        """−ELBO, a number: the mean over ``num_particles`` draws (Trace_ELBO's value and arithmetic)."""
        elbo = 0.0
        with torch.no_grad():
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                elbo += (torch_item(model_trace.log_prob_sum()) - torch_item(guide_trace.log_prob_sum())) \
                    / self.num_particles
        loss = -elbo
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−ELBO as a tensor whose gradient is STL's."""
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss_particle, surrogate_particle = self._particle(model_trace, guide_trace)
            surrogate = surrogate + surrogate_particle / self.num_particles
            loss += loss_particle / self.num_particles
        warn_if_nan(surrogate, "loss")
        return loss + (surrogate - torch_item(surrogate))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """−ELBO, a number, after adding STL's gradient to the parameters' ``.grad`` (one backward
        pass per particle, as Trace_ELBO does)."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss_particle, surrogate_particle = self._particle(model_trace, guide_trace)
            loss += loss_particle / self.num_particles
            if params_of((model_trace, guide_trace)) and getattr(surrogate_particle, "requires_grad", False):
                (surrogate_particle / self.num_particles).backward(retain_graph=self.retain_graph)
        warn_if_nan(loss, "loss")
        return loss


class DReG_IWAE(_PathwiseELBO):
    """The IWAE bound with doubly reparameterized gradients (Tucker, Lawson, Gu & Maddison 2018).

    Value: Pyro's ``RenyiELBO(alpha=0)`` on the same draws, with k = ``num_particles``::

        IWAE = Σ_b log 1/k Σ_j exp ℓ_bj,   ℓ_bj = Σ_sites s·log p(x_b, z_bj) − Σ_guide s·log q(z_bj|x_b)

    (``pyrovae.train`` runs it unscaled, s = 1, and multiplies loss and gradient by N/B outside:
    ``scales_inside = False``, see :func:`pyrovae.inference.elbos.scales_inside`.)
    b over the datapoints (Pyro's per-datapoint grouping: the plates common to every site are kept,
    the others summed), s each site's scale. **The scale is inside the exponential**, as in Pyro: a
    minibatch scale N/B makes it log 1/k Σ_j w_j^(N/B), not (N/B)·log 1/k Σ_j w_j.

    Gradient, with w̃_bj = softmax_j ℓ_bj (sg), ℓ' = ℓ with the score removed (module doc) and c
    the guide sites' common scale::

        model-only parameters θ:   Σ_bj w̃_bj ∇_θ ℓ_bj                     (= RenyiELBO's exactly)
        guide-only parameters φ:   Σ_bj [(1 − c)·w̃_bj + c·w̃_bj²] ∇_φ ℓ'_bj   (c = 1: DReG's w̃²)
        parameters in both, ψ:     the φ-weight on ∇_ψ ℓ' + (w̃ − that weight) on ∇_ψ m_bj

    where m_bj = Σ_model s·log p(x_b, sg z_bj) is the model replayed on the detached draws (only
    when there are shared parameters, e.g. a VampPrior evaluating the encoder in the model): the
    score identity E[f ∂_φ log q] = E[∂_z f · dz/dφ] applied to f = c·w̃_bj turns the score part of
    ∇IWAE into −c Σ_j w̃_j(1 − w̃_j) ∂_z ℓ_j dz_j/dφ, which touches only the path through z; a
    shared parameter's explicit model gradient keeps the plain weight w̃. All three are unbiased
    for ∇IWAE. Guide sites of different scales are refused (the identity needs one c).

    The gradient is computed with ``torch.autograd`` on one graph, one call per parameter group
    (θ, then φ ∪ ψ, then ψ's model term), the per-particle weights as ``grad_outputs``.
    """

    #: a minibatch is scaled to the data set outside the bound (:func:`pyrovae.inference.elbos.scales_inside`)
    scales_inside = False

    def _extend(self, model, guide_trace, model_trace, args, kwargs) -> None:
        guide_params = {n for n, s in guide_trace.nodes.items() if s["type"] == "param"}
        if any(s["type"] == "param" and n in guide_params for n, s in model_trace.nodes.items()):
            replayed = replayed_on_detached(model, guide_trace, args, kwargs)
            for name, site in sample_sites(model_trace).items():
                site[DETACHED] = replayed.nodes[name]["log_prob"]

    def _log_weights(self, model, guide, args, kwargs):
        """(ℓ, ℓ', m or None, c, the traces): [k, batch...] tensors, particles first."""
        rows, pairs = [], []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            dims = get_dependent_plate_dims(model_trace.nodes.values())
            model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
            log_w = sum(torch_sum(s["log_prob"], dims) for s in model_sites.values()) \
                - sum(torch_sum(s["log_prob"], dims) for s in guide_sites.values())
            free = log_w + sum(torch_sum(score_free(s), dims) for s in guide_sites.values())
            shared = any(DETACHED in s for s in model_sites.values())
            m = sum(torch_sum(s[DETACHED], dims) for s in model_sites.values()) if shared else None
            rows.append((log_w, free, m))
            pairs.append((model_trace, guide_trace))
        if self.vectorize_particles and self.num_particles > 1:
            log_w, free, m = rows[0]
        else:
            log_w, free, m = (None if parts[0] is None else torch.stack(parts) for parts in zip(*rows))
        return log_w, free, m, guide_scale(pairs), pairs

    def _bound(self, log_w: torch.Tensor) -> float:
        """Σ_b log 1/k Σ_j exp ℓ_bj, a number (RenyiELBO's arithmetic)."""
        return (torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum().item()

    def _gradients(self, model, guide, args, kwargs) -> Tuple[float, Dict[torch.Tensor, torch.Tensor]]:
        """(−IWAE, a number; parameter → gradient of −IWAE by DReG)."""
        log_w, free, m, c, pairs = self._log_weights(model, guide, args, kwargs)
        loss = -self._bound(log_w.detach())
        warn_if_nan(loss, "loss")
        w = torch.softmax(log_w.detach(), dim=0)
        w_guide = (1.0 - c) * w + c * w * w
        split = split_params(pairs)
        terms = [(free, split["model"], w), (free, split["guide"] + split["shared"], w_guide),
                 (m, split["shared"], w - w_guide)]
        grads: Dict[torch.Tensor, torch.Tensor] = {}
        terms = [(out, params, weight) for out, params, weight in terms if params and out is not None
                 and out.requires_grad]
        for i, (out, params, weight) in enumerate(terms):
            found = torch.autograd.grad(out, params, grad_outputs=-weight, retain_graph=i + 1 < len(terms),
                                        allow_unused=True)
            for p, g in zip(params, found):
                if g is not None:
                    grads[p] = g if p not in grads else grads[p] + g
        return loss, grads

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        """−IWAE, a number (RenyiELBO(alpha=0)'s value on the same draws)."""
        loss = -self._bound(self._log_weights(model, guide, args, kwargs)[0])
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−IWAE as a tensor whose first derivative with respect to the pair's parameters is DReG's.

        The two weightings (w̃ for θ, w̃² for φ) are not the gradient of one surrogate of the
        particles' log-weights, so the gradients are computed here and the tensor returned is
        −IWAE + Σ_p ⟨p, sg g_p⟩ − sg(·): the right value and first derivatives in the parameters,
        but no gradient with respect to anything else (data, draws) and no second derivatives.
        """
        loss, grads = self._gradients(model, guide, args, kwargs)
        linear = sum((p * g).sum() for p, g in grads.items())
        if not torch.is_tensor(linear):
            return torch.tensor(loss)
        return loss + linear - linear.detach()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """−IWAE, a number, after adding DReG's gradient to the parameters' ``.grad``."""
        loss, grads = self._gradients(model, guide, args, kwargs)
        for p, g in grads.items():
            p.grad = g if p.grad is None else p.grad + g
        return loss


def split_params(pairs) -> Dict[str, List[torch.Tensor]]:
    """The parameters of (model trace, guide trace) pairs, unconstrained: ``model`` (in the model's
    traces only), ``guide`` (the guide's only) and ``shared`` (both)."""
    names = {}
    for which in (0, 1):
        names[which] = {n for pair in pairs for n, s in pair[which].nodes.items() if s["type"] == "param"}
    store = params_of([trace for pair in pairs for trace in pair])
    return {"model": [store[n] for n in sorted(names[0] - names[1])],
            "guide": [store[n] for n in sorted(names[1] - names[0])],
            "shared": [store[n] for n in sorted(names[0] & names[1])]}


def guide_scale(pairs) -> float:
    """The one scale c of every guide sample site (a number, 1.0 unscaled); PairError if they differ."""
    scales = {name: site["scale"] for _, guide_trace in pairs for name, site in sample_sites(guide_trace).items()}
    values = {float(s) if not torch.is_tensor(s) or s.numel() == 1 else None for s in scales.values()}
    if len(values) > 1 or None in values:
        raise PairError(f"DReG_IWAE needs one scale (a number) for every guide site, got "
                        f"{ {n: (s if not torch.is_tensor(s) else tuple(s.shape)) for n, s in scales.items()} }")
    return values.pop() if values else 1.0
