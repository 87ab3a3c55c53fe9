"""ELBO and log-likelihood estimators, per datapoint, in nats.

Every estimator takes a Pyro ``model`` and ``guide`` and their arguments for a batch —
``mc_elbo(vae.model, vae.guide, x)``, ``mc_elbo(cvae.model, cvae.guide, x, y)``, any pair written by
hand, the batch first in each tensor, the observed sites inside a ``pyro.plate`` over it — with
the estimator's own options keyword-only (``num_particles=``, ``num_samples=``, ``chunk_size=``,
``data_plate=``), and returns a tensor of shape ``[batch]``: one log-probability per datapoint
(ELBO ≤ log p(x); negative for images).

With r particles z⁽ʲ⁾ ~ q(z|x) drawn in one vectorized pass (an outer plate over particles),
the log importance weight of datapoint i is

    log w_ij = Σ_{model sites} log p(· | ·) − Σ_{guide sites} log q(· | ·)
             = log p(x_i, z_ij) − log q(z_ij | x_i),

and ``mc_elbo`` = 1/r Σ_j log w_ij (what Trace_ELBO computes), ``iwae_bound`` =
log 1/k Σ_j w_ij (Burda et al. 2015), ``analytic_elbo`` replaces log p(z) − log q(z) by −KL(q ‖ p)
at every latent site whose KL has a closed form (as TraceMeanField_ELBO does).

The estimators give the ELBO of the model itself: site scales (``poutine.scale``, a plate's
subsample scaling to the data-set size) are ignored; masks are honoured. A log-density of a
site outside the data plate is shared equally among the datapoints.
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .. import checks
from ..errors import InputTypeError, PairError, PyrovaeError
from .arguments import batch_size_of
from .pairs import check_pair_on
from .traces import PARTICLES, kl_or_none, log_density, nesting_of, particle_traces, sample_sites, traces

#: particles × batch rows evaluated at once by the chunked estimators (bounds memory).
MAX_ROWS = 32768


class _Layout:
    """Where the particle and data dimensions sit in a site's batch shape."""

    def __init__(self, model_trace, batch: int, nesting: int, data_plate: Optional[str]):
        self.batch, self.nesting = batch, nesting
        self.data_dim = self._find_data_dim(model_trace, data_plate)

    def _find_data_dim(self, model_trace, data_plate):
        found = {}
        for site in sample_sites(model_trace).values():
            if not site["is_observed"]:
                continue
            for f in site["cond_indep_stack"]:
                if f.vectorized and f.name != PARTICLES and site["fn"].batch_shape[f.dim] == self.batch:
                    found[f.name] = f.dim
        if data_plate is not None:
            if data_plate not in found:
                raise PairError(f"data_plate {data_plate!r} is not a plate of size {self.batch} around an "
                                 f"observed site; plates found: {sorted(found) or 'none'}")
            return found[data_plate]
        if len(found) == 1:
            return next(iter(found.values()))
        if "data" in found:
            return found["data"]
        raise PairError(
            f"could not tell which plate runs over the batch of {self.batch}: the model's observed sites "
            f"must be inside a pyro.plate over x's first dimension; candidates {sorted(found) or 'none'} "
            f"(pass data_plate=NAME)")

    def per_datapoint(self, log_density: torch.Tensor) -> torch.Tensor:
        """Reduce a site's log-density (batch-shaped) to ``[particles, batch]``."""
        t = log_density.reshape((1,) * (self.nesting + 1 - log_density.dim()) + log_density.shape)
        data_axis = self.nesting + 1 + self.data_dim
        other = [a for a in range(1, t.dim()) if a != data_axis]
        t = t.sum(other) if other else t
        if t.shape[-1] != self.batch:
            t = t / self.batch  # a site outside the data plate: shared among the datapoints
        return t.expand(t.shape[0], self.batch)


# -- the log weights ------------------------------------------------------------------------------
def _site_terms(model_trace, guide_trace, layout: _Layout, analytic: bool):
    """Per-datapoint terms of the ELBO, each [particles, batch], keyed by what they are.

    Returns ``({"reconstruction": [...], "latent": [...]}, analytic site names)``: the observed
    sites' log p(x|·), and for each latent site log p(z|·) − log q(z|·) (or −KL where analytic).
    """
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    terms = {"reconstruction": [], "latent": []}
    analytic_names = []
    for name, site in guide_sites.items():
        kl = kl_or_none(site, model_sites.get(name)) if analytic else None
        if kl is None:
            terms["latent"].append(-layout.per_datapoint(log_density(site)))
        else:
            terms["latent"].append(-layout.per_datapoint(kl))
            analytic_names.append(name)
    for name, site in model_sites.items():
        if name not in analytic_names:
            kind = "reconstruction" if site["is_observed"] else "latent"
            terms[kind].append(layout.per_datapoint(log_density(site)))
    return terms, analytic_names


def _check_call(model, args: tuple, kwargs: dict) -> None:
    """InputTypeError when the model cannot take these arguments (options are keyword-only)."""
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):  # a callable whose signature Python cannot read: let it run
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise InputTypeError(f"the model cannot be called with these arguments ({e}); the estimators' options "
                             f"(num_particles, num_samples, chunk_size, data_plate) are keyword-only") from None


_warned_sequential = set()


def _vectorized(model, guide, n, nesting, args, kwargs):
    """Traces of n particles in one pass; None when the pair's code cannot run vectorized."""
    try:
        return particle_traces(model, guide, n, nesting, *args, **kwargs)
    except (RuntimeError, ValueError, IndexError) as e:
        if isinstance(e, PyrovaeError):
            raise
        key = getattr(model, "__qualname__", repr(model))
        if key not in _warned_sequential:
            _warned_sequential.add(key)
            warnings.warn(f"the pair cannot run its particles vectorized ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); running them one at a time", stacklevel=4)
        return None


def _chunked_terms(model, guide, args, kwargs, num_particles, analytic, data_plate, chunk_size=None
                   ) -> Iterator[Tuple[Dict[str, torch.Tensor], List[str]]]:
    """Yield (Σ terms [n, batch], analytic site names) for chunks of n particles.

    The pair is first checked (:func:`pyrovae.inference.pairs.check_pair_on`: a latent without a
    guide site, an extra guide site, shapes and supports). Particles are drawn n at a time in a
    plate left of the pair's plates; a pair whose code cannot run so (shape-dependent indexing) is
    run one particle at a time, with a warning once.
    """
    _check_call(model, args, kwargs)
    batch = batch_size_of(args, kwargs)
    nesting = nesting_of(check_pair_on(model, guide, *args, **kwargs))
    chunk = max(1, MAX_ROWS // max(batch, 1)) if chunk_size is None else checks.positive_int("chunk_size", chunk_size)
    vectorize = True
    for start in range(0, num_particles, chunk):
        n = min(chunk, num_particles - start)
        found = _vectorized(model, guide, n, nesting, args, kwargs) if vectorize else None
        runs = [found] if found is not None else [traces(model, guide, *args, **kwargs) for _ in range(n)]
        vectorize = found is not None
        for model_trace, guide_trace in runs:
            layout = _Layout(model_trace, batch, nesting, data_plate)
            terms, names = _site_terms(model_trace, guide_trace, layout, analytic)
            yield {kind: sum(t) if t else 0.0 for kind, t in terms.items()}, names


def log_weights(model, guide, *args, num_particles: int = 1, analytic: bool = False,
                data_plate: Optional[str] = None, chunk_size: Optional[int] = None, **kwargs) -> torch.Tensor:
    """log w = log p(x, z) − log q(z|x) for r particles z ~ q(z|x): shape ``[r, batch]``.

    ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` are called on the batch. With
    ``analytic=True`` the latent sites with a closed-form KL contribute −KL(q ‖ p) instead.
    """
    checks.positive_int("num_particles", num_particles)
    return torch.cat([_rows(t["reconstruction"] + t["latent"], args, kwargs) for t, _ in _chunked_terms(
        model, guide, args, kwargs, num_particles, analytic, data_plate, chunk_size)])


# -- the estimators --------------------------------------------------------------------------------
def mc_elbo(model, guide, *args, num_particles: int = 1, data_plate: Optional[str] = None, **kwargs) -> torch.Tensor:
    """Monte Carlo ELBO, [batch]: 1/r Σ_j [log p(x, z_j) − log q(z_j|x)], z_j ~ q(z|x).

    The estimate Trace_ELBO computes (without site scales), r = ``num_particles`` per datapoint;
    ``model(*args, **kwargs)``, e.g. ``mc_elbo(cvae.model, cvae.guide, x, y, num_particles=10)``.
    """
    return log_weights(model, guide, *args, num_particles=num_particles, data_plate=data_plate, **kwargs).mean(0)


def analytic_elbo(model, guide, *args, num_particles: int = 1, data_plate: Optional[str] = None,
                  **kwargs) -> torch.Tensor:
    """ELBO with closed-form KL terms, [batch]: 1/r Σ_j log p(x|z_j) − KL(q(z|x) ‖ p(z)).

    Latent sites whose (guide, prior) pair has a registered ``kl_divergence`` use it (as
    TraceMeanField_ELBO does); the others are estimated by Monte Carlo. See :func:`analytic_sites`.
    """
    return log_weights(model, guide, *args, num_particles=num_particles, analytic=True, data_plate=data_plate,
                       **kwargs).mean(0)


def analytic_sites(model, guide, *args, data_plate: Optional[str] = None, **kwargs) -> List[str]:
    """Names of the latent sites whose KL :func:`analytic_elbo` computes in closed form."""
    with torch.no_grad():
        _, names = next(_chunked_terms(model, guide, args, kwargs, 1, True, data_plate))
    return names


def elbo_parts(model, guide, *args, num_particles: int = 1, data_plate: Optional[str] = None,
               **kwargs) -> Dict[str, torch.Tensor]:
    """The ELBO split as in the notes, each [batch]: ``elbo = reconstruction − kl``.

    ``reconstruction`` = 1/r Σ_j log p(x | z_j) (the observed sites), ``kl`` = KL(q ‖ p) of the
    latent sites, in closed form where registered (as :func:`analytic_elbo`), else by Monte Carlo.
    """
    checks.positive_int("num_particles", num_particles)
    parts = [t for t, _ in _chunked_terms(model, guide, args, kwargs, num_particles, True, data_plate)]
    recon = torch.cat([_rows(t["reconstruction"], args, kwargs) for t in parts]).mean(0)
    kl = -torch.cat([_rows(t["latent"], args, kwargs) for t in parts]).mean(0)
    return {"elbo": recon - kl, "reconstruction": recon, "kl": kl}


def _rows(term, args, kwargs):
    """A term as [particles, batch] (a model with no site of a kind gives a plain 0.0)."""
    if torch.is_tensor(term):
        return term
    first = next(v for v in list(args) + list(kwargs.values()) if torch.is_tensor(v))
    return first.new_zeros(1, batch_size_of(args, kwargs), dtype=torch.get_default_dtype()
                           if not first.is_floating_point() else first.dtype)


def iwae_bound(model, guide, *args, num_samples: int = 5000, data_plate: Optional[str] = None,
               chunk_size: Optional[int] = None, grad: bool = False, **kwargs) -> torch.Tensor:
    """Importance-weighted bound log 1/k Σ_j p(x, z_j)/q(z_j|x), z_j ~ q(z|x): shape [batch].

    Burda et al. (2015): ELBO = IWAE_1 ≤ IWAE_k ≤ IWAE_{k+1} ≤ log p(x), → log p(x) as k → ∞.
    The k samples are processed in chunks of ``chunk_size`` (default: about 32768 particle × batch
    rows at a time) with a running log-sum-exp, so memory stays bounded for k = 5000. Runs without
    gradients unless ``grad=True`` (to train on it, use ``RenyiELBO(alpha=0)``).
    """
    checks.positive_int("num_samples", num_samples)
    total = None
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        for t, _ in _chunked_terms(model, guide, args, kwargs, num_samples, False, data_plate, chunk_size):
            lse = torch.logsumexp(_rows(t["reconstruction"] + t["latent"], args, kwargs), 0)
            total = lse if total is None else torch.logaddexp(total, lse)
    return total - math.log(num_samples)


def closed_form_elbo(vae, x, *, num_particles: int = 1, eps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The lecture notes' loss, written by hand with no Pyro inference code: shape [batch].

    ELBO(x) = 1/r Σ_j log p(x | z_j) − KL,   z_j = μ + σ ⊙ ε_j,  ε_j ~ N(0, I)
    KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_l (μ_l² + σ_l² − log σ_l² − 1)

    ``vae`` is a :class:`pyrovae.VAE` with ``prior="normal"`` and ``guide="diagonal"``, or any
    object of the same structure with two methods: ``posterior_params(x) -> (μ, σ)``, each
    [batch, L], and ``log_likelihood(z, x) -> [..., batch]`` (log p(x|z) written by hand: minus
    the binary cross-entropy for Bernoulli, the Gaussian log-density for Gaussian, ...).
    ``eps`` [r, batch, L] fixes the noise; otherwise it is drawn like Pyro's ``rsample``, so the
    same seed gives the draws of Pyro's ELBOs.
    """
    missing = [m for m in ("posterior_params", "log_likelihood") if not callable(getattr(vae, m, None))]
    if missing:
        raise InputTypeError(f"closed_form_elbo needs an object with posterior_params(x) and log_likelihood(z, x); "
                        f"{type(vae).__name__} lacks {', '.join(missing)}")
    if hasattr(vae, "check_closed_form"):
        vae.check_closed_form()
    mu, sigma = vae.posterior_params(x)
    if eps is None:
        eps = torch.empty((checks.positive_int("num_particles", num_particles),) + mu.shape,
                          dtype=mu.dtype, device=mu.device).normal_()
    z = mu + sigma * eps
    kl = 0.5 * (mu ** 2 + sigma ** 2 - torch.log(sigma ** 2) - 1).sum(-1)
    return vae.log_likelihood(z, x).mean(0) - kl
