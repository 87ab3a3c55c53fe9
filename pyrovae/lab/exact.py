"""Latent-variable models whose evidence log p(x) is known exactly.

They are the ground truth against which ELBO and importance-weighted estimators are checked:

* probabilistic PCA (Tipping & Bishop, 1999), where p(x), p(z|x) and the maximum-likelihood
  parameters are all in closed form, so that an ELBO with the exact posterior as guide is tight;
* the lecture notes' one-dimensional toy model z ~ Uniform(a, b), x ~ N(mu, z^2), whose evidence
  is a one-dimensional integral computed here by Gauss–Legendre quadrature.

Units: log-probabilities in nats, one per datapoint (shape ``[N]``), unless a name says ``mean``.
Each model comes as a Pyro ``model(x)`` / ``guide(x)`` pair with the latent site ``"z"`` and the
observed site ``"x"`` inside ``pyro.plate("data", N)``.
"""

import functools

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import AffineTransform

from ..errors import InputError

__all__ = [
    "ppca_marginal",
    "ppca_log_evidence",
    "ppca_posterior",
    "ppca_mle",
    "ppca_mle_log_likelihood",
    "make_ppca_model",
    "make_ppca_exact_guide",
    "toy_log_evidence",
    "make_toy_model",
    "make_toy_guide",
]


# ------------------------------------------------------------------------------------------------
# Probabilistic PCA:  z ~ N(0, I_L),  x | z ~ N(W z + b, sigma^2 I_D)
# ------------------------------------------------------------------------------------------------


def _noise_variance(sigma, like):
    """sigma^2 as a tensor with the dtype and device of ``like``."""
    return torch.as_tensor(sigma, dtype=like.dtype, device=like.device) ** 2


def ppca_marginal(W, b, sigma):
    """The PPCA marginal p(x) = N(b, W W^T + sigma^2 I_D) as a low-rank Gaussian.

    :param W: loadings ``[D, L]``.
    :param b: offset ``[D]``.
    :param sigma: noise standard deviation (float or scalar tensor).
    :returns: a ``LowRankMultivariateNormal`` with event shape ``[D]``; its log-density costs
        O(D L^2) through the Woodbury identity, so D = 784 is cheap.
    """
    cov_diag = _noise_variance(sigma, W).expand(W.shape[0])
    return dist.LowRankMultivariateNormal(b, cov_factor=W, cov_diag=cov_diag)


def ppca_log_evidence(x, W, b, sigma):
    """Exact log-evidence of probabilistic PCA.

    With z ~ N(0, I_L) and x | z ~ N(W z + b, sigma^2 I_D), the marginal is
    x ~ N(b, C) with C = W W^T + sigma^2 I_D, so

        log p(x) = -1/2 [ D log(2 pi) + log|C| + (x - b)^T C^{-1} (x - b) ].

    :param x: data ``[N, D]``.
    :param W: loadings ``[D, L]``.
    :param b: offset ``[D]``.
    :param sigma: noise standard deviation.
    :returns: log p(x_n) in nats, ``[N]``. Differentiable in ``W``, ``b`` and ``sigma``.
    """
    return ppca_marginal(W, b, sigma).log_prob(x)


def ppca_posterior(x, W, b, sigma):
    """Exact PPCA posterior p(z | x) = N(M^{-1} W^T (x - b), sigma^2 M^{-1}).

    Here M = W^T W + sigma^2 I_L (Bishop, PRML eq. 12.42). The covariance does not depend on x.
    Arguments as for :func:`ppca_log_evidence`.

    :returns: ``(loc [N, L], cov [L, L])``.
    """
    sigma2 = _noise_variance(sigma, W)
    eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
    M_chol = torch.linalg.cholesky(W.T @ W + sigma2 * eye)
    loc = torch.cholesky_solve(((x - b) @ W).T, M_chol).T
    cov = sigma2 * torch.cholesky_inverse(M_chol)
    return loc, cov


def ppca_mle(x, latent_dim):
    """Closed-form maximum-likelihood PPCA fit (Tipping & Bishop, 1999).

    With S = (1/N) sum_n (x_n - xbar)(x_n - xbar)^T the sample covariance and
    lambda_1 >= ... >= lambda_D its eigenvalues with eigenvectors U:

        b       = xbar,
        sigma^2 = (1 / (D - L)) sum_{j > L} lambda_j          (mean discarded eigenvalue),
        W       = U_L (Lambda_L - sigma^2 I_L)^{1/2}           (rotation R = I).

    Eigenvalues that fall below sigma^2 (possible only through round-off) are clamped to give a
    zero column of W.

    :param x: training data ``[N, D]``.
    :param int latent_dim: L, with 1 <= L < D.
    :returns: ``dict(W=[D, L], b=[D], sigma=scalar tensor)``, in the dtype of ``x``.
    """
    D = x.shape[1]
    if not 1 <= latent_dim < D:
        raise InputError(f"need 1 <= latent_dim < D = {D}, got {latent_dim}")
    eigvals, eigvecs = torch.linalg.eigh(torch.cov(x.T, correction=0))  # ascending
    eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
    sigma2 = eigvals[latent_dim:].mean()
    W = eigvecs[:, :latent_dim] * (eigvals[:latent_dim] - sigma2).clamp_min(0).sqrt()
    return {"W": W, "b": x.mean(0), "sigma": sigma2.sqrt()}


def ppca_mle_log_likelihood(x_train, x_test, latent_dim):
    """Mean per-datapoint test log-likelihood of the maximum-likelihood PPCA fit.

        (1 / N_test) sum_n log N(x_n; b_hat, W_hat W_hat^T + sigma_hat^2 I_D),

    with (W_hat, b_hat, sigma_hat) = :func:`ppca_mle` (x_train, latent_dim).

    :param x_train: ``[N_train, D]``.
    :param x_test: ``[N_test, D]``.
    :param int latent_dim: L < D.
    :returns: scalar tensor, nats per datapoint.
    """
    return ppca_log_evidence(x_test, **ppca_mle(x_train, latent_dim)).mean()


def make_ppca_model(W, b, sigma):
    """Pyro model of PPCA with fixed parameters.

    ``model(x)``, x ``[N, D]``: inside ``pyro.plate("data", N)``,
    ``z ~ N(0, I_L)`` (site ``"z"``, event ``[L]``) and ``x ~ N(W z + b, sigma^2 I_D)``
    (site ``"x"``, event ``[D]``, observed).
    """
    latent_dim = W.shape[1]

    def model(x):
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(W.new_zeros(latent_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            return pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)

    return model


def make_ppca_exact_guide(W, b, sigma):
    """Pyro guide whose q(z | x) is the exact PPCA posterior (see :func:`ppca_posterior`).

    ``guide(x)``, x ``[N, D]``: inside ``pyro.plate("data", N)``,
    ``z ~ MultivariateNormal(loc [N, L], cov [L, L])`` at site ``"z"``. With this guide every
    single-sample ELBO term equals log p(x): the bound is tight.
    """

    def guide(x):
        loc, cov = ppca_posterior(x, W, b, sigma)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=cov))

    return guide


# ------------------------------------------------------------------------------------------------
# The lecture notes' toy model:  z ~ Uniform(a, b),  x | z ~ N(mu, z^2)
# ------------------------------------------------------------------------------------------------


def _check_interval(a, b):
    if not 0 < a < b:
        raise InputError(f"the toy model needs 0 < a < b (z is a standard deviation), got a={a}, b={b}")


@functools.lru_cache(maxsize=8)
def _gauss_legendre(num_points):
    """Gauss–Legendre nodes and weights on [-1, 1] (cached: computing them costs ~0.1 s)."""
    return np.polynomial.legendre.leggauss(num_points)


def toy_log_evidence(x, a, b, mu, num_points=256):
    """Log-evidence of the toy model z ~ Uniform(a, b), x | z ~ N(mu, z^2), by quadrature.

        log p(x) = log int_a^b (1 / (b - a)) N(x; mu, z^2) dz
                 ~ logsumexp_i [ log(w_i / 2) + log N(x; mu, z_i^2) ],

    with Gauss–Legendre nodes t_i and weights w_i on [-1, 1] mapped to z_i = a + (b - a)(t_i + 1)/2
    (the Jacobian (b - a)/2 cancels the uniform density 1/(b - a), leaving w_i / 2). The integrand
    is smooth on [a, b] for a > 0, so the default 256 nodes are accurate to round-off in float64
    for moderate b / a. (For reference, the integral also has the closed form
    p(x) = [E1(c / b^2) - E1(c / a^2)] / (2 (b - a) sqrt(2 pi)) with c = (x - mu)^2 / 2 and E1
    the exponential integral; the tests use it as a cross-check.)

    :param x: data ``[N]`` or ``[N, 1]``.
    :param float a: lower end of the uniform prior, a > 0.
    :param float b: upper end, b > a.
    :param float mu: mean of x.
    :param int num_points: number of Gauss–Legendre nodes.
    :returns: log p(x_n) in nats, ``[N]``, in the dtype of ``x`` (use float64 for accuracy).
    """
    _check_interval(a, b)
    t, w = _gauss_legendre(num_points)
    z = x.new_tensor(a + (b - a) * (t + 1) / 2)  # [P]
    log_w = x.new_tensor(np.log(w / 2))  # [P]
    log_lik = dist.Normal(mu, z).log_prob(x.reshape(-1, 1))  # [N, P]
    return torch.logsumexp(log_lik + log_w, dim=-1)


def make_toy_model(a, b, mu):
    """Pyro model of the toy: z ~ Uniform(a, b), x | z ~ N(mu, z^2).

    ``model(x)``, x ``[N, 1]``: inside ``pyro.plate("data", N)``, site ``"z"`` with shape ``[N]``
    and observed site ``"x"`` with event shape ``[1]``. Its evidence is :func:`toy_log_evidence`.
    """
    _check_interval(a, b)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Uniform(x.new_tensor(a), x.new_tensor(b)))
            return pyro.sample("x", dist.Normal(mu, z.unsqueeze(-1)).to_event(1), obs=x)

    return model


def make_toy_guide(a, b, mu, prefix="toy_guide"):
    """Learnable guide for the toy model: a Beta distribution stretched onto (a, b).

        q(z | x) = a + (b - a) Beta(alpha(x), beta(x)),
        (alpha, beta) = 1 + softplus(u |x - mu| + v),

    with ``u, v`` in R^2 the Pyro parameters ``f"{prefix}_weight"`` and ``f"{prefix}_bias"``.
    The posterior p(z | x) ∝ z^{-1} exp(-(x - mu)^2 / (2 z^2)) on (a, b) depends on x only
    through |x - mu|, moves towards b as |x - mu| grows, and has a bounded density; keeping both
    concentrations above 1 keeps q's density bounded too, so draws never land on a or b (where
    the model's log-density is -inf). Initially u = 0 and v = -3: q = Beta(1.05, 1.05), close to
    the prior.

    ``guide(x)``, x ``[N, 1]``: site ``"z"`` with shape ``[N]`` inside ``pyro.plate("data", N)``.
    Parameters take the dtype of the first ``x`` they see.
    """
    _check_interval(a, b)

    def guide(x):
        u = pyro.param(f"{prefix}_weight", lambda: x.new_zeros(2))
        v = pyro.param(f"{prefix}_bias", lambda: x.new_full((2,), -3.0))
        conc = 1 + F.softplus((x.reshape(-1, 1) - mu).abs() * u + v)  # [N, 2]
        q = dist.TransformedDistribution(
            dist.Beta(conc[:, 0], conc[:, 1]), [AffineTransform(a, b - a)]
        )
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", q)

    return guide
