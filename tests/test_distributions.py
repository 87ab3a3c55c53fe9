"""pyrovae.distributions: the hot-path distributions give the values of Pyro's generic ones."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

import pyrovae
from pyrovae.components.distributions import IndependentBernoulli, StdNormal


def generic_std_normal(L, batch_shape=(), dtype=torch.float32):
    """N(0, I_L) the generic way: Normal(0, 1) expanded and reinterpreted."""
    return dist.Normal(torch.zeros((), dtype=dtype), 1.0).expand(torch.Size(batch_shape) + (L,)).to_event(1)


def test_std_normal_density_entropy_and_shapes():
    z = torch.randn(7, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = StdNormal(5, torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(p.log_prob(z), generic_std_normal(5, dtype=torch.float64).log_prob(z))
    assert p.log_prob(torch.zeros(5)).item() == pytest.approx(-2.5 * math.log(2 * math.pi))
    q = p.expand([4])
    assert (q.batch_shape, q.event_shape) == (torch.Size([4]), torch.Size([5]))
    torch.testing.assert_close(q.entropy(), generic_std_normal(5, [4], torch.float64).entropy())
    draw = q.rsample((2,))
    assert draw.shape == (2, 4, 5) and draw.dtype == torch.float64
    assert torch.equal(q.mean, torch.zeros(4, 5, dtype=torch.float64)) and torch.equal(q.variance, torch.ones(4, 5, dtype=torch.float64))


def test_std_normal_draws_have_unit_moments():
    """Mean 0 and variance 1 per coordinate, within 4 standard errors (n = 20000, seed 0)."""
    pyro.set_rng_seed(0)
    z = StdNormal(3, torch.zeros(())).sample((20000,))
    n = z.shape[0]
    assert (z.mean(0).abs() < 4 / n ** 0.5).all()
    assert ((z.var(0) - 1).abs() < 4 * (2 / n) ** 0.5).all()


def test_kl_to_the_std_normal_is_the_notes_closed_form_with_its_gradient():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(6, 4, dtype=torch.float64, generator=g).requires_grad_()
    sigma = (0.1 + torch.rand(6, 4, dtype=torch.float64, generator=g)).requires_grad_()
    q = dist.Normal(mu, sigma).to_event(1)
    kl = kl_divergence(q, StdNormal(4, torch.zeros((), dtype=torch.float64)))
    notes = 0.5 * (mu ** 2 + sigma ** 2 - torch.log(sigma ** 2) - 1).sum(-1)
    generic = kl_divergence(q, generic_std_normal(4, dtype=torch.float64))
    torch.testing.assert_close(kl, notes)
    torch.testing.assert_close(kl, generic)
    grads = torch.autograd.grad(kl.sum(), (mu, sigma))
    torch.testing.assert_close(grads[0], mu)                       # ∂KL/∂μ = μ
    torch.testing.assert_close(grads[1], sigma - 1 / sigma)        # ∂KL/∂σ = σ − 1/σ


def test_kl_for_other_families_is_torchs_or_not_implemented():
    p = StdNormal(3, torch.zeros(()))
    laplace = dist.Laplace(torch.tensor([0.5, -1.0, 0.0]), torch.tensor([1.0, 2.0, 0.5])).to_event(1)
    torch.testing.assert_close(kl_divergence(laplace, p), kl_divergence(laplace, generic_std_normal(3)))
    lowrank = dist.LowRankMultivariateNormal(torch.zeros(3), torch.ones(3, 1), torch.ones(3))
    with pytest.raises(NotImplementedError):  # TraceMeanField_ELBO then estimates the KL by sampling
        kl_divergence(lowrank, p)


def test_mean_field_elbo_falls_back_to_sampling_for_a_lowrank_guide():
    x = (torch.rand(30, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    vae = pyrovae.VAE(6, 3, hidden=(8,), guide="lowrank")
    losses = []
    for seed in (0, 1):
        pyro.set_rng_seed(seed)
        losses.append(pyro.infer.TraceMeanField_ELBO().loss(vae.model, vae.guide, x))
    assert math.isfinite(losses[0]) and losses[0] != losses[1]  # a Monte Carlo KL differs between draws


@pytest.mark.parametrize("relaxed", [False, True])
def test_independent_bernoulli_is_the_generic_bernoulli(relaxed):
    g = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(2, 5, 4, 3, dtype=torch.float64, generator=g)).requires_grad_()
    x = torch.rand(5, 4, 3, dtype=torch.float64, generator=g)
    x = x if relaxed else (x > 0.5).double()
    ours = IndependentBernoulli(logits, 2)
    generic = dist.Bernoulli(logits=logits, validate_args=False).to_event(2)
    assert (ours.batch_shape, ours.event_shape) == (torch.Size([2, 5]), torch.Size([4, 3]))
    lp, ref = ours.log_prob(x), generic.log_prob(x)          # x broadcasts against [2, 5, 4, 3]
    by_hand = (x * logits - torch.nn.functional.softplus(logits)).sum((-2, -1))
    torch.testing.assert_close(lp, ref)
    torch.testing.assert_close(lp, by_hand)
    torch.testing.assert_close(torch.autograd.grad(lp.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0])
    assert ours.support.check((x > 0.5).double()).all() and not ours.support.check(x + 2).any()


def test_independent_bernoulli_draws_and_moments():
    """Sample means match sigmoid(l) within 4 standard errors (n = 20000, seed 0)."""
    logits = torch.tensor([[-2.0, 0.0, 1.5]])
    d = IndependentBernoulli(logits, 1).expand([2])
    assert (d.batch_shape, d.event_shape) == (torch.Size([2]), torch.Size([3]))
    pyro.set_rng_seed(0)
    x = d.sample((20000,))
    p = torch.sigmoid(logits)
    assert x.shape == (20000, 2, 3) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert ((x.mean(0) - p).abs() < 4 * (p * (1 - p) / 20000) ** 0.5).all()
    torch.testing.assert_close(d.variance, (p * (1 - p)).expand(2, 3))
