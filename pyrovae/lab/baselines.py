"""The lecture notes' non-deep baselines, scored in nats per datapoint (log p(x), shape ``[N]``).

* A single Gaussian fitted by maximum likelihood in closed form (diagonal or full covariance).
* Finite mixtures fitted in Pyro: a mixture of Bernoullis (binarized MNIST) and a mixture of
  diagonal Gaussians (Frey Face). The discrete assignment ``k`` is enumerated exactly by
  ``TraceEnum_ELBO`` and the guide is empty, so the "ELBO" being maximised is the exact marginal
  log-likelihood and the parameters are point estimates (``pyro.param``).

The two mixtures differ only in their component distribution: each is a :class:`MixtureFamily`
in :data:`MIXTURE_FAMILIES`, and everything else (model, fitting loop, evaluation) is shared.
"""

from dataclasses import dataclass
from typing import Callable, Dict

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam

from ..errors import InputError

__all__ = [
    "fit_gaussian",
    "gaussian_distribution",
    "gaussian_log_likelihood",
    "MixtureFamily",
    "MIXTURE_FAMILIES",
    "PROBS_EPS",
    "SCALE_FLOOR",
    "init_mixture",
    "make_mixture_model",
    "mixture_guide",
    "mixture_distribution",
    "mixture_log_likelihood",
    "fit_mixture",
    "fit_bernoulli_mixture",
    "fit_gaussian_mixture",
]


# ------------------------------------------------------------------------------------------------
# A single Gaussian, maximum likelihood in closed form
# ------------------------------------------------------------------------------------------------


def fit_gaussian(x_train, *, covariance="diagonal", var_floor=1e-6):
    """Maximum-likelihood Gaussian, mean xbar and covariance S = (1/N) sum_n (x_n - xbar)(...)^T.

    ``covariance="diagonal"``: scale_d = sqrt(max(S_dd, var_floor)). The floor only touches
    (near-)constant dimensions, such as MNIST's border pixels, whose ML variance is 0 and whose
    density would otherwise be infinite; a test point that differs there from the training
    constant costs about (difference)^2 / (2 var_floor) nats, so on binary data this baseline
    is dominated by such pixels.

    ``covariance="full"``: computed in float64, with a ridge S + var_floor I so that the Cholesky
    factor exists when S is singular (D = 784 MNIST: constant pixels and N < D subsets).

    :param x_train: ``[N, D]``.
    :returns: ``dict(loc=[D], scale=[D])`` (diagonal) or ``dict(loc=[D], scale_tril=[D, D])``
        (full, float64).
    """
    if covariance == "diagonal":
        loc = x_train.mean(0)
        var = x_train.var(0, unbiased=False)
        return {"loc": loc, "scale": var.clamp_min(var_floor).sqrt()}
    if covariance == "full":
        x = x_train.double()
        ridge = var_floor * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        cov = torch.cov(x.T, correction=0) + ridge
        return {"loc": x.mean(0), "scale_tril": torch.linalg.cholesky(cov)}
    raise InputError(f"covariance must be 'diagonal' or 'full', got {covariance!r}")


def gaussian_distribution(params):
    """The Gaussian of :func:`fit_gaussian` as a distribution with event shape ``[D]``."""
    if "scale_tril" in params:
        return dist.MultivariateNormal(params["loc"], scale_tril=params["scale_tril"])
    return dist.Normal(params["loc"], params["scale"]).to_event(1)


def gaussian_log_likelihood(params, x):
    """log N(x_n; loc, Sigma) per datapoint, ``[N]``, for x ``[N, D]`` (cast to the fit's dtype)."""
    return gaussian_distribution(params).log_prob(x.to(params["loc"].dtype))


# ------------------------------------------------------------------------------------------------
# Mixture families: what differs between the Bernoulli and the Gaussian mixture
# ------------------------------------------------------------------------------------------------

PROBS_EPS = 1e-3
"""Bernoulli means are kept in [PROBS_EPS, 1 - PROBS_EPS], so no pixel costs more than ~6.9 nats."""

SCALE_FLOOR = 1.0 / 256
"""Gaussian component scales stay above one grey level of 8-bit data scaled to [0, 1]."""


@dataclass(frozen=True)
class MixtureFamily:
    """A component family of a mixture over x in R^D (or {0, 1}^D).

    :param constraints: name -> constraint of each component parameter (each ``[K, D]``).
    :param init: ``init(x, centres) -> {name: [K, D]}``, initial values from the data ``x [N, D]``
        and ``K`` randomly chosen data points ``centres [K, D]``; strictly inside the constraints.
    :param component: ``component(params) -> Distribution`` with event shape ``[D]`` and batch
        shape that of ``params[name][..., 0]``: the components, for any leading shape.
    """

    constraints: Dict[str, constraints.Constraint]
    init: Callable
    component: Callable


def _bernoulli_init(x, centres):
    # Halfway between the chosen binary points and 1/2: inside (eps, 1 - eps) and not saturated.
    return {"probs": 0.25 + 0.5 * centres}


def _gaussian_init(x, centres):
    # Every component starts with the data's per-dimension spread (kept off the floor).
    scale = x.std(0).clamp_min(2 * SCALE_FLOOR)
    return {"loc": centres.clone(), "scale": scale.expand_as(centres).clone()}


MIXTURE_FAMILIES = {
    "bernoulli": MixtureFamily(
        constraints={"probs": constraints.interval(PROBS_EPS, 1 - PROBS_EPS)},
        init=_bernoulli_init,
        component=lambda p: dist.Bernoulli(logits=p["probs"].logit()).to_event(1),
    ),
    "gaussian": MixtureFamily(
        constraints={"loc": constraints.real, "scale": constraints.greater_than(SCALE_FLOOR)},
        init=_gaussian_init,
        component=lambda p: dist.Normal(p["loc"], p["scale"]).to_event(1),
    ),
}


def _component_params(params):
    """The ``[K, D]`` component tensors of a mixture's params (all but family and weights)."""
    return {name: params[name] for name in MIXTURE_FAMILIES[params["family"]].constraints}


# ------------------------------------------------------------------------------------------------
# The mixture as a Pyro model, and its exact likelihood
# ------------------------------------------------------------------------------------------------


def init_mixture(x, K, family, generator=None):
    """Initial mixture parameters: uniform weights, components centred on K distinct data points.

    :param x: ``[N, D]`` with N >= K.
    :param str family: a key of :data:`MIXTURE_FAMILIES`.
    :param generator: ``torch.Generator`` choosing the data points (seeds the initialisation).
    :returns: ``dict(family=family, weights=[K], **components)`` with components ``[K, D]``.
    """
    centres = x[torch.randperm(x.shape[0], generator=generator)[:K]]
    weights = x.new_full((K,), 1.0 / K)
    return {"family": family, "weights": weights, **MIXTURE_FAMILIES[family].init(x, centres)}


def make_mixture_model(init_params, subsample_size=None):
    """Pyro model of a finite mixture with enumerated assignments and learnable parameters.

        w ~ pyro.param (simplex),  theta_k ~ pyro.param (family constraints),
        for n in plate("data", N, subsample_size):
            k_n ~ Categorical(w)             (enumerated: infer={"enumerate": "parallel"})
            x_n ~ component(theta_{k_n})     (observed, event shape [D])

    With the empty :func:`mixture_guide`, ``TraceEnum_ELBO(max_plate_nesting=1)`` sums k out, so
    its loss is exactly -(N / B) sum_{n in batch} log p(x_n), B the subsample size.

    :param init_params: as from :func:`init_mixture`; the values the ``pyro.param`` sites
        ``"weights"`` and the family's parameter names take if they do not exist yet.
    :param subsample_size: minibatch size B (``None``: the full data).
    :returns: ``model(x)`` for x ``[N, D]``.
    """
    family = MIXTURE_FAMILIES[init_params["family"]]

    def model(x):
        weights = pyro.param("weights", init_params["weights"], constraint=constraints.simplex)
        theta = {
            name: pyro.param(name, init_params[name], constraint=constraint)
            for name, constraint in family.constraints.items()
        }
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            k = pyro.sample("k", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", family.component({n: t[k] for n, t in theta.items()}), obs=x[idx])

    return model


def mixture_guide(x):
    """The empty guide: the only latent, k, is enumerated in the model."""


def mixture_distribution(params):
    """The fitted mixture as a ``MixtureSameFamily`` with event shape ``[D]``."""
    components = MIXTURE_FAMILIES[params["family"]].component(_component_params(params))
    return dist.MixtureSameFamily(dist.Categorical(params["weights"]), components)


def mixture_log_likelihood(params, x, max_elements=2**24):
    """Exact log p(x_n) = logsumexp_k [log w_k + log p(x_n | theta_k)] per datapoint, ``[N]``.

    Computed over chunks of datapoints so that the ``[chunk, K, D]`` intermediate has at most
    ``max_elements`` entries (default 2^24, 64 MiB in float32): 10000 x 784 x K = 50 runs in
    about 24 chunks.

    :param params: as returned by :func:`fit_mixture` (or :func:`init_mixture`).
    :param x: ``[N, D]``.
    """
    mixture = mixture_distribution(params)
    K, D = params["weights"].shape[0], x.shape[-1]
    rows = max(1, max_elements // (K * D))
    return torch.cat([mixture.log_prob(chunk) for chunk in x.split(rows)])


# ------------------------------------------------------------------------------------------------
# Fitting
# ------------------------------------------------------------------------------------------------


def _read_params(init_params):
    """The current values of the mixture's pyro.param sites, detached, in the init's layout."""
    store = pyro.get_param_store()
    return {
        name: (value if name == "family" else store[name].detach().clone())
        for name, value in init_params.items()
    }


def fit_mixture(x, K, family, *, steps=1000, batch_size=256, lr=0.05, seed=0):
    """Fit a K-component mixture by SVI with ``TraceEnum_ELBO`` on minibatches.

    The parameters live in a private Pyro parameter store (the global one is untouched), the
    initial components are centred on K data points chosen with ``seed``, and the minibatches
    are drawn under ``torch.random.fork_rng`` seeded with ``seed`` (global RNG state is
    restored afterwards). Adam acts on the unconstrained parameters.

    :param x: ``[N, D]`` training data.
    :param int K: number of components.
    :param str family: ``"bernoulli"`` or ``"gaussian"`` (:data:`MIXTURE_FAMILIES`).
    :returns: ``(params, history)``: ``params = dict(family, weights [K], **components [K, D])``;
        ``history[t]`` the minibatch estimate of the mean log p(x) per datapoint at step t
        (that is, -loss / N), in nats.
    """
    init = init_mixture(x, K, family, generator=torch.Generator().manual_seed(seed))
    model = make_mixture_model(init, subsample_size=min(batch_size, x.shape[0]))
    svi = SVI(model, mixture_guide, Adam({"lr": lr}), TraceEnum_ELBO(max_plate_nesting=1))
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        history = [-svi.step(x) / x.shape[0] for _ in range(steps)]
        params = _read_params(init)
    return params, history


def fit_bernoulli_mixture(x, K, *, steps=1000, batch_size=256, lr=0.05, seed=0):
    """Mixture of K products of Bernoullis for binary x ``[N, D]``; see :func:`fit_mixture`.

    p(x) = sum_k w_k prod_d p_kd^{x_d} (1 - p_kd)^{1 - x_d}, with p_kd in [1e-3, 1 - 1e-3].
    """
    return fit_mixture(x, K, "bernoulli", steps=steps, batch_size=batch_size, lr=lr, seed=seed)


def fit_gaussian_mixture(x, K, *, steps=1000, batch_size=256, lr=0.05, seed=0):
    """Mixture of K diagonal Gaussians for real x ``[N, D]``; see :func:`fit_mixture`.

    p(x) = sum_k w_k prod_d N(x_d; mu_kd, s_kd^2), with s_kd > :data:`SCALE_FLOOR`.
    """
    return fit_mixture(x, K, "gaussian", steps=steps, batch_size=batch_size, lr=lr, seed=seed)
