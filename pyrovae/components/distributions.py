"""Distributions written for the VAE's hot path, with the same values as Pyro's generic ones.

A VAE's SVI step evaluates log p(z) (or KL(q‖p)) and log p(x|z) once per minibatch, and an
IWAE evaluation thousands of times. Pyro's generic ``Normal(0, 1).expand([L]).to_event(1)``,
``MixtureSameFamily`` and ``Bernoulli(logits).to_event(2)`` compute them with more tensor
operations (and memory, and Python) than the formulas need; these compute the formulas
directly and return the same numbers (tests/test_distributions.py, tests/test_priors.py).

==========================  =========================================================
``StdNormal(L)``            p(z) = N(0, I_L):  log p(z) = −½‖z‖² − (L/2) log 2π
``DiagonalNormalMixture``   p(z) = Σ_k w_k N(z; m_k, diag s_k²), by matrix products
``IndependentBernoulli``    p(x|λ) = Π_d Bernoulli(x_d; σ(l_d)):
                            log p(x) = −Σ_d BCE(l_d, x_d) = Σ_d x_d l_d − softplus(l_d)
==========================  =========================================================

KL(N(μ, diag σ²) ‖ N(0, I)) is registered in closed form, ½ Σ_l (μ_l² + σ_l² − log σ_l² − 1)
(the lecture notes' formula), so ``TraceMeanField_ELBO`` uses it for a diagonal Gaussian guide
and falls back to Monte Carlo for any other guide.
"""
from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints, kl_divergence, register_kl

LOG_2PI = math.log(2 * math.pi)


class StdNormal(dist.TorchDistribution):
    """N(0, I_L) as one distribution with ``event_shape [L]`` and any ``batch_shape``.

    ``zero`` is a scalar tensor giving the dtype and device. ``log_prob(z [..., L]) -> [...]``.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, latent_dim: int, zero: torch.Tensor, batch_shape=torch.Size(), validate_args=None):
        self.zero = zero
        super().__init__(torch.Size(batch_shape), torch.Size([latent_dim]), validate_args=False)

    @property
    def latent_dim(self) -> int:
        return self.event_shape[0]

    def expand(self, batch_shape, _instance=None):
        return StdNormal(self.latent_dim, self.zero, batch_shape)

    @property
    def mean(self):
        return self.zero.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self):
        return torch.ones_like(self.mean)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        return torch.randn(shape, dtype=self.zero.dtype, device=self.zero.device)

    def log_prob(self, z):
        return -0.5 * z.pow(2).sum(-1) - 0.5 * self.latent_dim * LOG_2PI

    def entropy(self):
        return self.zero.new_full(self.batch_shape, 0.5 * self.latent_dim * (1 + LOG_2PI))


@register_kl(torch.distributions.Independent, StdNormal)
def _kl_diagonal_normal_std_normal(q, p):
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_l (μ_l² + σ_l² − log σ_l² − 1), shape q.batch_shape."""
    base = q.base_dist
    if not isinstance(base, torch.distributions.Normal) or q.reinterpreted_batch_ndims != 1:
        return kl_divergence(q, dist.Normal(p.zero, 1.0).expand(p.batch_shape + p.event_shape).to_event(1))
    mu, sigma = base.loc, base.scale
    return 0.5 * (mu.pow(2) + sigma.pow(2) - 1).sum(-1) - sigma.log().sum(-1)


class DiagonalNormalMixture(dist.TorchDistribution):
    """p(z) = Σ_k w_k N(z; m_k, diag s_k²) with log p(z) computed by matrix products.

    log N(z; m_k, s_k²) = −½ [z² · s_k⁻² − 2 z · m_k s_k⁻² + m_k² · s_k⁻²] − Σ log s_k − L/2 log 2π,
    so for n points and K components the quadratic form costs two [n, L] × [L, K] products instead
    of an [n, K, L] tensor: what makes a VampPrior's IWAE with k = 5000 affordable on a CPU.
    The three terms cancel where it matters (z near m_k, s_k small: a relative error of
    eps·(z² + m²)/(z − m)², hundreds of nats in float32 for s ~ 1e-3), so the quadratic form is
    computed in float64 and the result returned in z's dtype.
    ``logits`` [K], ``locs`` and ``scales`` [K, L]; batch shape [], event shape [L].
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, logits, locs, scales, validate_args=None):
        self.logits, self.locs, self.scales = logits, locs, scales
        super().__init__(torch.Size(), locs.shape[-1:], validate_args=False)

    def log_prob(self, z):
        z64, locs, prec = z.double(), self.locs.double(), self.scales.double().pow(-2)   # prec: [K, L]
        quad = (z64 * z64) @ prec.T - 2 * z64 @ (locs * prec).T + (locs.pow(2) * prec).sum(-1)
        log_norm = -self.scales.log().sum(-1) - 0.5 * self.locs.shape[-1] * LOG_2PI
        return torch.logsumexp(self.logits.log_softmax(-1) + log_norm - 0.5 * quad.to(z.dtype), -1)

    def sample(self, sample_shape=torch.Size()):
        k = dist.Categorical(logits=self.logits).sample(sample_shape)
        return dist.Normal(self.locs[k], self.scales[k]).sample()


class IndependentBernoulli(dist.TorchDistribution):
    """Π_d Bernoulli(x_d; sigmoid(l_d)) over the last ``event_dim`` dimensions of ``logits``.

    ``log_prob(x)`` = −Σ_d BCE_with_logits(l_d, x_d), one fused kernel; x may be intensities in
    [0, 1] (relaxed targets: no support check). Batch shape ``logits.shape[:-event_dim]``.
    """

    arg_constraints = {"logits": constraints.real}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, event_dim: int, validate_args=None):
        self.logits = logits
        n = logits.dim() - event_dim
        super().__init__(logits.shape[:n], logits.shape[n:], validate_args=False)

    @property
    def support(self):
        return constraints.independent(constraints.boolean, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return IndependentBernoulli(self.logits.expand(shape), len(self.event_shape))

    @property
    def mean(self):
        return torch.sigmoid(self.logits)

    @property
    def variance(self):
        p = self.mean
        return p * (1 - p)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return torch.bernoulli(self.mean.expand(self._extended_shape(sample_shape)))

    def log_prob(self, x):
        logits = self.logits
        if logits.shape != x.shape:
            logits, x = torch.broadcast_tensors(logits, x)
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        return -bce.flatten(-len(self.event_shape)).sum(-1)
