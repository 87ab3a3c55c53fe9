"""Trace helpers shared by the estimators, the ELBOs and the trainer (public inside pyrovae).

A model/guide pair is run the way Pyro's ELBOs run it: the guide is traced, then the model is
traced replaying the guide's draws (:func:`traces`). :func:`particle_traces` does the same with
r draws vectorized in a plate left of every plate of the pair; :func:`enum_traces` also lets the
sites marked for parallel enumeration take every value of their supports at once; :func:`site_terms`
walks a run's sites, term by term of the ELBO (:func:`elbo_terms`, the terms alone);
:func:`nesting_of` finds how many batch dimensions the pair's plates use; :func:`kl_or_none`
is the closed-form KL of a latent site where torch or Pyro registers one. Helpers that only look
at a pair run it under :func:`pyrovae.inference.state.preserved`, so the random state — CPU and
CUDA — is as it was afterwards.
"""
from __future__ import annotations

from typing import Dict, Optional

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch.distributions import Bernoulli, Independent, kl_divergence
from torch.nn.functional import binary_cross_entropy_with_logits

from ..components.distributions import IndependentBernoulli
from .state import modules_of, preserved

#: the name of the plate over vectorized particles: Pyro's ELBOs' (``ELBO._vectorized_num_particles``),
#: pyrovae's estimators' and the fast step's; a plate over particles, never over the data
PARTICLES = "num_particles_vectorized"


def traces(model, guide, *args, **kwargs):
    """(model trace, guide trace): the guide's trace, and the model's replayed on its draws."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def particle_traces(model, guide, num_particles: int, max_plate_nesting: int, *args, **kwargs):
    """:func:`traces` with ``num_particles`` draws vectorized in a plate left of all others."""
    with pyro.plate(PARTICLES, num_particles, dim=-(max_plate_nesting + 1)):
        return traces(model, guide, *args, **kwargs)


def enum_traces(model, guide, num_particles: Optional[int], max_plate_nesting: int, *args, **kwargs):
    """:func:`traces` with the sites marked ``infer={"enumerate": "parallel"}`` enumerated.

    The guide runs under ``poutine.enum(first_available_dim=-(max_plate_nesting + 2))``: each
    enumerated site takes every value of its support along its own dimension left of the particle
    dimension -(max_plate_nesting + 1), and so does every log-density downstream of it; the model
    is replayed on those values, under a ``poutine.enum`` that gives the sites only the model
    enumerates dimensions further left. With ``num_particles`` (else one particle, no particle
    plate) the particles are a plate at -(max_plate_nesting + 1). The pair is wrapped as
    ``TraceEnum_ELBO`` wraps it, so a seed gives its draws.
    """
    if num_particles is not None:
        particles = pyro.plate(PARTICLES, num_particles, dim=-(max_plate_nesting + 1))
        model, guide = particles(model), particles(guide)
    guide = poutine.enum(guide, first_available_dim=-(max_plate_nesting + 2))
    return traces(poutine.enum(model), guide, *args, **kwargs)  # the model's dims continue the guide's


def sample_sites(trace) -> Dict[str, dict]:
    """The sample sites of a trace, by name, in the order they were sampled; not the plates' subsample
    sites (log-density 0, a float32 CPU scalar whatever the model's device), which Pyro's ELBOs skip too."""
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def dry_run(model, guide, *args, **kwargs):
    """:func:`traces` without gradients, leaving the parameters, buffers (BatchNorm's running
    statistics), modes of the pair's modules and the random state as they were
    (:func:`~pyrovae.inference.state.preserved`); parameters it creates stay."""
    with preserved(modules_of(model, guide)), torch.no_grad():
        return traces(model, guide, *args, **kwargs)


def nesting_of(pair_traces) -> int:
    """The number of batch dimensions the plates of a pair's traces use (as Pyro's ELBOs guess it)."""
    dims = [-f.dim for tr in pair_traces for s in sample_sites(tr).values()
            for f in s["cond_indep_stack"] if f.vectorized and f.name != PARTICLES]
    return max(dims, default=0)


def params_of(pair_traces) -> Dict[str, torch.Tensor]:
    """The parameters a pair's traces registered: name → unconstrained tensor in Pyro's param store."""
    names = {n for tr in pair_traces for n, s in tr.nodes.items() if s["type"] == "param"}
    store = dict(pyro.get_param_store().named_parameters())
    return {n: store[n] for n in sorted(names)}


def pair_params(model, guide, *args, **kwargs) -> Dict[str, torch.Tensor]:
    """Create the pair's parameters (one dry run): name → unconstrained tensor in Pyro's param store."""
    return params_of(dry_run(model, guide, *args, **kwargs))


def log_density(site) -> torch.Tensor:
    """A sample site's log-density, masked (its scale ignored), batch-shaped."""
    return scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])


def kl_or_none(guide_site, model_site: Optional[dict], scale=1.0):
    """scale · KL(q ‖ p), masked, in closed form where one is registered for the pair, else None."""
    if model_site is None or model_site["is_observed"]:
        return None
    try:
        kl = kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return None
    return scale_and_mask(kl, scale, guide_site["mask"])


def summed_log_density(site) -> Optional[torch.Tensor]:
    """s · Σ log p(x) of a sample site, a scalar, in one fused kernel where its distribution has one, else None.

    For a Bernoulli (torch's, in any ``Independent`` wrapping, given by ``logits`` or ``probs``, or
    pyrovae's :class:`~pyrovae.components.distributions.IndependentBernoulli`, binary or relaxed x:
    BCE is the same formula for both) at a value of
    its own batch shape, unmasked, with a number s as its scale: −s · BCE(logits, x) summed in
    ``binary_cross_entropy_with_logits(reduction="sum")`` — the hand-written loss, one kernel
    forward and one backward instead of the element-wise log-density [B, D], its negation and
    its sum. The same value as ``site["fn"].log_prob(site["value"]).sum()`` scaled (up to the
    order of the float sum). A distribution that validates its arguments (Pyro's validation, on at
    a run's first step) computes its element-wise ``log_prob`` too, for its checks alone (unless the
    site holds one already: a ``Trace`` computed it), so the number is the same with validation on or off. None when the site has extra arguments, a mask or
    a tensor scale: then the caller computes it the general way."""
    fn, value, scale = site["fn"], site["value"], site["scale"]
    if site["mask"] is not None or site["args"] or site["kwargs"] or torch.is_tensor(scale):
        return None
    while isinstance(fn, Independent) and type(fn).log_prob is Independent.log_prob:
        fn = fn.base_dist
    own = type(fn).log_prob is IndependentBernoulli.log_prob  # never validates its arguments
    if not own and type(fn).log_prob is not Bernoulli.log_prob:
        return None
    logits = fn.logits
    if logits.shape != value.shape:
        return None
    if not own and fn._validate_args and "log_prob" not in site:  # (a traced site's log_prob has checked it)
        site["fn"].log_prob(value)  # only for its checks (x in the support): they raise as the element-wise sum would
    return -binary_cross_entropy_with_logits(logits, value, reduction="sum") * scale


#: what each term of :func:`site_terms` is: log p(x) of an observed site, log p(z) of a latent one,
#: −log q(z) of the guide site of a latent, −KL(q ‖ p) of a latent in closed form, −log q of an
#: auxiliary guide site (one the model does not have)
OBSERVED, LATENT, GUIDE, KL, AUXILIARY = "observed", "latent", "guide", "kl", "auxiliary"


def site_terms(model_sites: Dict[str, dict], guide_sites: Dict[str, dict], log_p, log_q, kl=None):
    """The terms of one run's ELBO, in the order they are added up, each as (what it is, site name,
    term) — the one place the ELBO's per-site sum is written (the mean-field and path-wise ELBOs,
    the fast step and the estimators use it).

    ``model_sites``, ``guide_sites``: name → sample site of the model (replayed on the guide's
    draws) and of the guide, subsample sites left out — a ``Trace``'s nodes or Pyro's messages,
    which have the same keys; ``log_p(site)``, ``log_q(site)``: the site's log density as the
    caller computes it (s·Σ log p, a scalar, for an ELBO; a tensor per datapoint for the
    estimators); ``kl(guide_site, model_site)``: KL(q ‖ p) of a latent, whose negation replaces
    its log p(z) − log q(z), or None to keep those two. Then::

        without kl (Trace_ELBO):  (OBSERVED or LATENT, log_p(s)) of every model site in order,
                                  then (GUIDE or AUXILIARY, −log_q(s)) of every guide site in order
        with kl (mean-field):     per model site in order: (OBSERVED, log_p(x)) of an observed site;
                                  (KL, −kl(q_site, p_site)) of a latent when kl gives one (not None),
                                  else (LATENT, log_p(z)), (GUIDE, −log_q(z)) — log_p(z) alone for a
                                  latent the guide lacks (one the model enumerates); then
                                  (AUXILIARY, −log_q(s)) of each guide site not in the model

    so that Σ of the terms is the ELBO of the run (its particles summed), and Σ of their numbers,
    left to right, is the number Pyro's ``Trace_ELBO`` adds up site by site.
    """
    if kl is None:
        for name, site in model_sites.items():
            yield (OBSERVED if site["is_observed"] else LATENT), name, log_p(site)
        for name, site in guide_sites.items():
            yield (GUIDE if name in model_sites else AUXILIARY), name, -log_q(site)
        return
    for name, site in model_sites.items():
        if site["is_observed"]:
            yield OBSERVED, name, log_p(site)
            continue
        guide_site = guide_sites.get(name)
        closed = None if guide_site is None else kl(guide_site, site)
        if closed is not None:
            yield KL, name, -closed
            continue
        yield LATENT, name, log_p(site)
        if guide_site is not None:
            yield GUIDE, name, -log_q(guide_site)
    for name, site in guide_sites.items():
        if name not in model_sites:
            yield AUXILIARY, name, -log_q(site)


def out_of_order(model_sites: Dict[str, dict], guide_sites: Dict[str, dict]) -> Dict[str, str]:
    """Latent sites whose closed-form KL may be wrong, each with a latent that shows why:
    {z: w} where the guide samples w after z but the model samples w before z.

    Replacing E_q[log p(z|pa(z)) − log q(z|·)] by −E_q[KL(q(z|·) ‖ p(z|pa(z)))] needs z's parents
    in the model to be none of its descendants in the guide (TraceMeanField_ELBO's condition). A
    descendant of z in the guide is sampled after z there, a parent in the model before z there,
    so a z with no such w satisfies it (sufficient, not necessary: w need not be a parent). The
    two-layer VAE with Burda's q(z1|x) q(z2|z1) gives {"z1": "z2"}.
    """
    model_order = {name: i for i, (name, site) in enumerate(model_sites.items()) if not site["is_observed"]}
    guide_order = [name for name in guide_sites if name in model_order]
    conflicts = {}
    for i, z in enumerate(guide_order):
        later = [w for w in guide_order[i + 1:] if model_order[w] < model_order[z]]
        if later:
            conflicts[z] = later[0]
    return conflicts


def elbo_terms(model_sites: Dict[str, dict], guide_sites: Dict[str, dict], log_p, log_q, kl=None):
    """The terms of :func:`site_terms` alone (what they are and their sites dropped): the ELBO's
    summands, in order, for a caller that adds them up."""
    return (term for _, _, term in site_terms(model_sites, guide_sites, log_p, log_q, kl))
