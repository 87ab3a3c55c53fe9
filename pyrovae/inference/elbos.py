"""Pyro's ELBOs by name, for :func:`pyrovae.train` and the ``train.elbo`` config key.

==============  ===================================================================
``trace``       ``Trace_ELBO``: E_q[log p(x, z) − log q(z|x)], z sampled
``mean-field``  :class:`MeanField_ELBO` (``TraceMeanField_ELBO``): E_q[log p(x|z)] − KL(q ‖ p),
                the KL in closed form at every latent site where it is registered
``iwae``        ``RenyiELBO(alpha=0)``: log 1/k Σ_j p(x, z_j)/q(z_j|x), k = ``num_particles``
``graph``       ``TraceGraph_ELBO``: Trace_ELBO with Rao-Blackwellised score-function terms
==============  ===================================================================
"""
from __future__ import annotations

from functools import partial

from pyro import poutine
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled, torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites

from .. import checks
from ..registry import Registry
from .traces import kl_or_none, traces


class MeanField_ELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` that computes only the log-densities its estimate uses.

    Per particle, with s the site scale (N/B for a minibatch) and m its mask::

        ELBO = Σ_obs s·log p(x|z) − Σ_{latent, KL registered} s·KL(q ‖ p)
                                  + Σ_{latent, no KL} s·(log p(z) − log q(z|x))

    Pyro's class evaluates log p and log q at every site before choosing, so for a VAE with a
    closed-form KL it computes log p(z) and log q(z|x) and then discards them (2–4% of a
    784-400-50 MNIST step on a CPU, BENCHMARKS.md). This one computes each latent site's KL
    once, and log-densities only where there is none — the same value and gradients
    (tests/test_elbos.py). While Pyro's validation is on (and for a ``GuideMessenger`` guide) it
    traces exactly as Pyro's class does, with all log-densities and all of its checks.
    """

    def _get_trace(self, model, guide, args, kwargs):
        if is_validation_enabled() or isinstance(poutine.unwrap(guide), Messenger):
            model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        else:
            model_trace, guide_trace = map(prune_subsample_sites, traces(model, guide, *args, **kwargs))
        closed = _closed_form_kls(model_trace, guide_trace)
        model_trace.compute_log_prob(lambda name, site: name not in closed)  # memoized: no-op when done
        if any(s["type"] == "sample" and n not in closed for n, s in guide_trace.nodes.items()):
            guide_trace.compute_score_parts()
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                elbo = elbo + site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            if "kl_sum" in guide_site:
                elbo = elbo - guide_site["kl_sum"]
            else:
                elbo = elbo + site["log_prob_sum"] - guide_site["score_parts"].entropy_term.sum()
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                assert guide_site["infer"].get("is_auxiliary")
                if is_validation_enabled():
                    check_fully_reparametrized(guide_site)
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()
        return -torch_item(elbo), -elbo


def _closed_form_kls(model_trace, guide_trace) -> set:
    """Store s·KL(q ‖ p), summed, as ``kl_sum`` in each guide site whose KL is registered; their names."""
    closed = set()
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        guide_site = guide_trace.nodes[name]
        kl = kl_or_none(guide_site, site, guide_site["scale"])
        if kl is not None:
            assert kl.shape == guide_site["fn"].batch_shape
            guide_site["kl_sum"] = kl.sum()
            closed.add(name)
    return closed


#: name → Pyro ELBO class (with its fixed options); an ``ELBO`` instance passes through ``build``
ELBOS = Registry("elbo", ELBO)
ELBOS.register("trace", Trace_ELBO)
ELBOS.register("mean-field", MeanField_ELBO)
ELBOS.register("iwae", partial(RenyiELBO, alpha=0))
ELBOS.register("graph", TraceGraph_ELBO)


def make_elbo(name, num_particles: int = 1, max_plate_nesting: int = 1) -> ELBO:
    """The Pyro ELBO called ``name`` (or ``name`` itself, an ELBO instance); r > 1 particles
    are vectorized (one pass, an extra plate)."""
    r = checks.positive_int("num_particles", num_particles)
    return ELBOS.build(name, num_particles=r, vectorize_particles=r > 1, max_plate_nesting=max_plate_nesting)
