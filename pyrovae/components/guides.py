"""Variational families q_φ(z|x): heads on top of the encoder's features h = e_φ(x).

A family is an ``nn.Module`` built with ``feature_dim`` (the encoder's output size H) and
``latent_dim`` L. ``forward(h)`` maps features ``h`` of shape ``[..., H]`` to a distribution
with ``batch_shape [...]`` and ``event_shape [L]`` that samples with the reparameterization
trick (z = μ + σ ⊙ ε, ε ~ N(0, I), or a differentiable flow of such a z).

=============  ================================================================
``diagonal``   q(z|x) = N(μ_φ(x), diag σ²_φ(x))    (the lecture notes')
``lowrank``    q(z|x) = N(μ_φ(x), F_φ(x) F_φ(x)ᵀ + diag d_φ(x)), rank-r factor F
``fullrank``   q(z|x) = N(μ_φ(x), L_φ(x) L_φ(x)ᵀ), L lower triangular
``iaf``        z = f_K ∘ … ∘ f_1(z₀), z₀ ~ N(μ_φ(x), diag σ²_φ(x)), f_k inverse
               autoregressive flows (Kingma et al. 2016; pyro.distributions.transforms)
=============  ================================================================
"""
from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import affine_autoregressive
from torch import nn

from .. import checks
from ..registry import Registry

MIN_SCALE = 1e-5  # σ = softplus(raw) + MIN_SCALE keeps every variance strictly positive


class VariationalFamily(nn.Module):
    """Base class: ``forward(h [..., H]) -> Distribution`` (batch [...], event [L])."""

    def __init__(self, latent_dim: int, feature_dim: int):
        super().__init__()
        self.latent_dim = checks.positive_int("latent_dim", latent_dim)
        self.feature_dim = checks.positive_int("feature_dim", feature_dim)
        self.loc = nn.Linear(feature_dim, latent_dim)

    def params(self, h: torch.Tensor) -> dict:
        """The named parameters of q(z|x) for features ``h``: always includes ``loc`` [..., L]."""
        raise NotImplementedError

    def distribution(self, **params):
        raise NotImplementedError

    def forward(self, h):
        return self.distribution(**self.params(h))

    def describe(self) -> str:
        return type(self).__name__

    def _positive(self, raw):
        return F.softplus(raw) + MIN_SCALE


GUIDES = Registry("guide", VariationalFamily)


@GUIDES.register("diagonal")
class DiagonalNormal(VariationalFamily):
    """q(z|x) = N(μ_φ(x), diag σ²_φ(x)); σ = softplus(·) + 1e-5."""

    def __init__(self, latent_dim, feature_dim):
        super().__init__(latent_dim, feature_dim)
        self.scale = nn.Linear(feature_dim, latent_dim)

    def params(self, h):
        return {"loc": self.loc(h), "scale": self._positive(self.scale(h))}

    def distribution(self, loc, scale):
        return dist.Normal(loc, scale).to_event(1)

    def describe(self):
        return "N(μ_φ(x), diag σ²_φ(x))"


@GUIDES.register("lowrank")
class LowRankNormal(VariationalFamily):
    """q(z|x) = N(μ_φ(x), F_φ(x) F_φ(x)ᵀ + diag d_φ(x)) with F of shape [L, rank]."""

    def __init__(self, latent_dim, feature_dim, rank: int = 2):
        super().__init__(latent_dim, feature_dim)
        self.rank = checks.positive_int("rank", rank)
        self.factor = nn.Linear(feature_dim, latent_dim * rank)
        self.diag = nn.Linear(feature_dim, latent_dim)

    def params(self, h):
        factor = self.factor(h).unflatten(-1, (self.latent_dim, self.rank))
        return {"loc": self.loc(h), "cov_factor": factor, "cov_diag": self._positive(self.diag(h)) ** 2}

    def distribution(self, loc, cov_factor, cov_diag):
        return dist.LowRankMultivariateNormal(loc, cov_factor, cov_diag)

    def describe(self):
        return f"N(μ_φ(x), F_φ(x)F_φ(x)ᵀ + diag d_φ(x)), rank {self.rank}"


@GUIDES.register("fullrank")
class FullRankNormal(VariationalFamily):
    """q(z|x) = N(μ_φ(x), L_φ(x) L_φ(x)ᵀ), L lower triangular with a positive diagonal."""

    def __init__(self, latent_dim, feature_dim):
        super().__init__(latent_dim, feature_dim)
        self.tril = nn.Linear(feature_dim, latent_dim * (latent_dim + 1) // 2)
        self.register_buffer("_rows", torch.tril_indices(latent_dim, latent_dim)[0])
        self.register_buffer("_cols", torch.tril_indices(latent_dim, latent_dim)[1])

    def params(self, h):
        values = self.tril(h)
        tril = values.new_zeros(values.shape[:-1] + (self.latent_dim, self.latent_dim))
        tril[..., self._rows, self._cols] = values
        diag = self._positive(tril.diagonal(dim1=-2, dim2=-1))
        tril = tril.tril(-1) + torch.diag_embed(diag)
        return {"loc": self.loc(h), "scale_tril": tril}

    def distribution(self, loc, scale_tril):
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)

    def describe(self):
        return "N(μ_φ(x), L_φ(x)L_φ(x)ᵀ)"


@GUIDES.register("iaf")
class InverseAutoregressiveFlow(DiagonalNormal):
    """z = f_K ∘ … ∘ f_1(z₀), z₀ ~ N(μ_φ(x), diag σ²_φ(x)); f_k affine autoregressive (IAF).

    log q(z|x) = log N(z₀; μ, σ²) − Σ_k log |det ∂f_k/∂z_{k−1}|; the flows' parameters are shared
    across x (only the base depends on x).
    """

    def __init__(self, latent_dim, feature_dim, flows: int = 2, flow_hidden: int = 0):
        super().__init__(latent_dim, feature_dim)
        self.flows = checks.positive_int("flows", flows)
        hidden = [flow_hidden or 2 * latent_dim + 1]
        self.transforms = nn.ModuleList(
            affine_autoregressive(latent_dim, hidden_dims=hidden, stable=True) for _ in range(flows)
        )

    def distribution(self, loc, scale):
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), list(self.transforms))

    def describe(self):
        return f"IAF^{self.flows} ∘ N(μ_φ(x), diag σ²_φ(x))"
