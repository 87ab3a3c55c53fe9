"""Priors p(z) over the latent z ∈ R^L.

Each prior is a small ``nn.Module`` whose ``forward()`` returns a Pyro distribution with
``event_shape == [L]`` and an empty batch shape (the data plate broadcasts it over the batch).
Learnable priors hold their parameters as ``nn.Parameter`` so that the model registers them
with ``pyro.module``.

=================  ==========================================================
``normal``         p(z) = N(0, I_L)
``learned-normal`` p(z) = N(m, diag s²) with learnable m, s
``mixture``        p(z) = Σ_k w_k N(m_k, diag s_k²), K components, all learnable
``vamp``           p(z) = 1/K Σ_k q(z | u_k), K learnable pseudo-inputs u_k
                   (VampPrior, Tomczak & Welling 2018)
``laplace``        p(z) = Π_l Laplace(z_l; 0, 1)
=================  ==========================================================
"""
from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from ..errors import InputError
from .. import checks
from .distributions import DiagonalNormalMixture, StdNormal
from ..registry import Registry


class Prior(nn.Module):
    """Base class: ``forward() -> Distribution`` with ``event_shape [latent_dim]``.

    ``zero`` is a scalar buffer that moves with the module (``.to(device)``, ``.double()``): build
    the distribution's tensors from it or from parameters (``self.zero.expand(L)``, not
    ``torch.zeros(L)``, which would stay a float32 CPU tensor when the model is on a GPU).
    """

    #: True when the prior evaluates the encoder (the model must then register it).
    uses_encoder = False

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = checks.positive_int("latent_dim", latent_dim)
        self.register_buffer("zero", torch.zeros(()))

    def attach(self, vae) -> None:
        """Called once by the VAE that owns this prior (VampPrior needs its encoder)."""

    def describe(self) -> str:
        return f"{type(self).__name__}(z)"


PRIORS = Registry("prior", Prior)


class FixedPrior(Prior):
    """p(z) = Π_l family(z_l; 0, 1) with no parameters (``family`` a location-scale class)."""

    family = None

    def forward(self):
        loc = self.zero.expand(self.latent_dim)
        return self.family(loc, torch.ones_like(loc)).to_event(1)


@PRIORS.register("normal")
class StandardNormal(FixedPrior):
    """p(z) = N(0, I_L), as ``StdNormal``: log p(z) and KL(q‖p) in closed form (pyrovae.components.distributions)."""

    family = dist.Normal

    def forward(self):
        return StdNormal(self.latent_dim, self.zero)

    def describe(self):
        return f"N(0, I_{self.latent_dim})"


@PRIORS.register("learned-normal")
class LearnedNormal(Prior):
    """p(z) = N(m, diag s²), m and log s learnable, initialised to 0 (the standard normal)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self):
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)

    def describe(self):
        return f"N(m, diag s²), m, s ∈ R^{self.latent_dim} learned"


@PRIORS.register("mixture")
class GaussianMixture(Prior):
    """p(z) = Σ_k w_k N(z; m_k, diag s_k²), k = 1..K; weights, means and scales learnable.

    Means start at N(0, init_scale²) draws (torch's global RNG), scales at 1, weights uniform.
    """

    def __init__(self, latent_dim: int, components: int = 10, init_scale: float = 1.0):
        super().__init__(latent_dim)
        self.components = checks.positive_int("components", components)
        init_scale = checks.positive_float("init_scale", init_scale)
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(init_scale * torch.randn(components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(components, latent_dim))

    def forward(self):
        return DiagonalNormalMixture(self.logits, self.locs, self.log_scales.exp())

    def describe(self):
        return f"Σ_k w_k N(m_k, diag s_k²), K = {self.components}, z ∈ R^{self.latent_dim}"


@PRIORS.register("vamp")
class VampPrior(Prior):
    """p(z) = 1/K Σ_k q_φ(z | u_k) with K learnable pseudo-inputs u_k of the data's shape.

    The pseudo-inputs start near the middle of [0, 1] (N(0.5, 0.01²)) as in Tomczak & Welling
    (2018). The mixture is evaluated through the owning VAE's encoder and variational family.
    """

    uses_encoder = True

    def __init__(self, latent_dim: int, input_shape: tuple, components: int = 500):
        super().__init__(latent_dim)
        self.components = checks.positive_int("components", components)
        self.pseudo_inputs = nn.Parameter(0.5 + 0.01 * torch.randn(components, *input_shape))
        self._posterior = None

    def attach(self, vae):
        # a plain attribute holding a bound method, not a submodule: no module cycle
        object.__setattr__(self, "_posterior", vae.posterior)

    def forward(self):
        if self._posterior is None:
            raise InputError("VampPrior must be attached to a VAE (VAE(prior=VampPrior(...)) does this)")
        comp = self._posterior(self.pseudo_inputs)  # batch [K], event [L]
        logits = self.pseudo_inputs.new_zeros(self.components)
        base = getattr(comp, "base_dist", None)
        if type(comp) is dist.Independent and type(base) is dist.Normal:  # a diagonal Gaussian guide
            return DiagonalNormalMixture(logits, base.loc, base.scale)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), comp)

    def describe(self):
        return f"1/K Σ_k q_φ(z|u_k), K = {self.components} learned pseudo-inputs"


@PRIORS.register("laplace")
class StandardLaplace(FixedPrior):
    """p(z) = Π_l Laplace(z_l; 0, 1) — heavier tails than the normal."""

    family = dist.Laplace

    def describe(self):
        return f"Laplace(0, 1)^{self.latent_dim}"
