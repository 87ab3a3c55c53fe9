"""Priors: the fast mixture density against torch's MixtureSameFamily, and the VampPrior's mixture."""
import pyro.distributions as dist
import torch

from pyrovae import VAE
from pyrovae.components.priors import DiagonalNormalMixture


def test_matrix_product_mixture_density_equals_mixture_same_family():
    g = torch.Generator().manual_seed(0)
    K, L = 7, 4
    logits = torch.randn(K, generator=g, dtype=torch.float64)
    locs = torch.randn(K, L, generator=g, dtype=torch.float64)
    scales = torch.rand(K, L, generator=g, dtype=torch.float64) + 0.1
    fast = DiagonalNormalMixture(logits, locs, scales)
    ref = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1))
    z = 2 * torch.randn(3, 5, L, generator=g, dtype=torch.float64)
    assert torch.allclose(fast.log_prob(z), ref.log_prob(z), rtol=1e-12)
    assert fast.expand([5]).log_prob(z).shape == (3, 5)


def test_mixture_density_is_accurate_in_float32_for_narrow_components():
    """Components as sharp as a trained VampPrior's (s ~ 1e-3) with z next to a mean, in float32:
    the expanded quadratic form must not cancel into garbage (it once gave +600 nats too much)."""
    g = torch.Generator().manual_seed(1)
    K, L = 50, 40
    locs = 3 * torch.randn(K, L, generator=g)
    scales = 1e-3 * (1 + torch.rand(K, L, generator=g))
    logits = torch.zeros(K)
    z = locs[:10] + scales[:10] * torch.randn(10, L, generator=g)      # draws from components 0..9
    fast = DiagonalNormalMixture(logits, locs, scales).log_prob(z)
    ref = dist.MixtureSameFamily(dist.Categorical(logits=logits.double()),
                                 dist.Normal(locs.double(), scales.double()).to_event(1)).log_prob(z.double())
    assert fast.dtype == torch.float32
    assert torch.allclose(fast.double(), ref, atol=1e-3, rtol=0)


def test_mixture_samples_have_the_mixture_mean():
    """Mean of 40000 draws within 4 standard errors (per coordinate) of Σ_k w_k m_k."""
    torch.manual_seed(0)
    logits, locs, scales = torch.tensor([0.0, 1.0, -1.0]), torch.randn(3, 2) * 3, torch.ones(3, 2)
    fast = DiagonalNormalMixture(logits, locs, scales)
    draws = fast.sample((40000,))
    ref = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1))
    se = ref.variance.sqrt() / 200
    assert ((draws.mean(0) - ref.mean).abs() < 4 * se).all()


def test_vamp_prior_is_the_average_posterior_of_its_pseudo_inputs():
    """p(z) = 1/K Σ_k q(z|u_k), checked against the guide's own density at the pseudo-inputs."""
    vae = VAE((6, 5), 3, hidden=(8,), prior="vamp", prior_options={"components": 4}).double()
    z = torch.randn(10, 3, dtype=torch.float64)
    q = vae.posterior(vae.prior.pseudo_inputs)                     # batch [K], event [L]
    expected = torch.logsumexp(q.log_prob(z.unsqueeze(-2)), -1) - torch.log(torch.tensor(4.0, dtype=torch.float64))
    assert torch.allclose(vae.prior().log_prob(z), expected, rtol=1e-10)
    lowrank = VAE((6, 5), 3, hidden=(8,), prior="vamp", guide="lowrank", prior_options={"components": 4})
    assert isinstance(lowrank.prior(), dist.MixtureSameFamily)  # other families: torch's mixture
