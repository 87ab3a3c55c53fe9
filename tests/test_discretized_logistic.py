"""The discretized logistic (PixelCNN++) on the 256 levels k/255 of 8-bit data: a proper
distribution, the logistic CDF's numbers in float32 at any loc and scale, its mixture, its
likelihood in a VAE, and bits per dimension."""
import math

import pyro
import pytest
import torch

import pyrovae
from pyrovae.app import config
from pyrovae.components.distributions import (DiscretizedLogistic, DiscretizedLogisticMixture,
                                              discretized_logistic_log_prob)
from pyrovae.components.likelihoods import DiscretizedLogisticLikelihood
from pyrovae.errors import ConfigError, DataError, InputError
from pyrovae.lab.report import bits_per_dim, bits_per_dim_summary

LEVELS = torch.arange(256) / 255.0
#: loc and scale grids, extremes included (scale 1e-4 is 1/39 of a bin; 1e4 is flat over [0, 1])
LOCS = [-1e3, -5.0, -0.3, 0.0, 0.37, 0.5, 1.0, 1.7, 50.0, 1e3]
SCALES = [1e-4, 3e-3, 0.05, 1.0, 100.0, 1e4]


def reference_log_prob(x, loc, scale):
    """log P(x) in float64 straight from the logistic CDF F = sigmoid: F(x+h) − F(x−h), the edge
    bins F(h) and 1 − F(1−h), h = 1/510. Right of loc it uses the upper tails 1 − F = F(−·), so
    neither side subtracts two numbers near 1. x is taken as its level k/255 in float64."""
    x, loc, scale = (torch.as_tensor(t, dtype=torch.float64) for t in (x, loc, scale))
    x = torch.round(x * 255) / 255
    h = 0.5 / 255
    a, b = (x + h - loc) / scale, (x - h - loc) / scale
    lower_cdf = torch.where(x < h, torch.zeros_like(a), torch.sigmoid(b))
    upper_cdf = torch.where(x > 1 - h, torch.ones_like(a), torch.sigmoid(a))
    lower_tail = torch.where(x < h, torch.ones_like(a), torch.sigmoid(-b))        # 1 − F(b)
    upper_tail = torch.where(x > 1 - h, torch.zeros_like(a), torch.sigmoid(-a))   # 1 − F(a)
    right = x - loc > 0
    return torch.where(right, torch.log(lower_tail - upper_tail), torch.log(upper_cdf - lower_cdf))


def grid():
    loc = torch.tensor(LOCS).view(-1, 1)
    scale = torch.tensor(SCALES).view(1, -1)
    return torch.broadcast_tensors(loc, scale)


def test_the_256_probabilities_sum_to_one_in_float32():
    loc, scale = grid()
    logp = DiscretizedLogistic(loc, scale).log_prob(LEVELS.view(-1, 1, 1))   # [256, locs, scales]
    assert logp.dtype == torch.float32 and not torch.isnan(logp).any() and (logp <= 0).all()
    total = logp.exp().sum(0)
    assert (total - 1).abs().max().item() < 1e-5, total


def test_log_prob_is_the_float64_logistic_cdf_in_float32():
    loc, scale = grid()
    x = LEVELS.view(-1, 1, 1)
    ours = discretized_logistic_log_prob(x, loc, scale).double()
    ref = reference_log_prob(x, loc, scale)
    finite = ref > -600          # float64's sigmoid tails underflow beyond e^−700
    assert finite.float().mean() > 0.5
    # float32 stores the bin edges and μ to a relative 6e-8, which moves a = (edge − μ)/s by up to
    # 6e-8 (|edge| + |μ|)/s, and log P by as much (|d logsigmoid/da| ≤ 1), twice (a and b)
    ulp = 2 ** -24
    bound = 1e-5 * ref.abs() + 1e-6 + 2 * ulp * (1 + loc.abs()) / scale
    assert ((ours - ref).abs() <= bound)[finite].all()


def test_far_tails_stay_finite_and_exact_where_naive_float32_gives_minus_infinity():
    x, loc, scale = torch.tensor([128 / 255, 1.0, 0.0]), torch.tensor([0.0, -1e3, 0.9]), torch.tensor([0.01, 0.01, 1e-3])
    ours = discretized_logistic_log_prob(x, loc, scale)
    naive = torch.log(torch.sigmoid((x + 0.5 / 255 - loc) / scale) - torch.sigmoid((x - 0.5 / 255 - loc) / scale))
    assert torch.isinf(naive[0])                                  # 1 − 1 in float32
    h = 0.5 / 255
    # x = 128/255: log(σ(−b) − σ(−a)) = −b + log(1 − e^{−(a−b)}) + O(e^{−b}), b = (127.5/255)/0.01
    b = (127.5 / 255) / 0.01
    assert ours[0].item() == pytest.approx(-b + math.log(1 - math.exp(-2 * h / 0.01)), rel=1e-6)
    # x = 1 takes the upper tail: log(1 − F(b)) ≈ −b, b = (1 − h + 1000)/0.01 ≈ 1e5
    assert ours[1].item() == pytest.approx(-(1 - h + 1e3) / 0.01, rel=1e-6)
    # x = 0 takes the lower tail: log F(a) ≈ a, a = (h − 0.9)/1e-3
    assert ours[2].item() == pytest.approx((h - 0.9) / 1e-3, rel=1e-6)


def test_gradients_are_finite_at_extreme_values():
    loc, scale = grid()
    loc, scale = loc.clone().requires_grad_(), scale.clone().requires_grad_()
    logp = discretized_logistic_log_prob(LEVELS.view(-1, 1, 1), loc, scale)
    g_loc, g_scale = torch.autograd.grad(logp.sum(), (loc, scale))
    assert torch.isfinite(g_loc).all() and torch.isfinite(g_scale).all()
    # and through the likelihood's parameterization, at huge decoder outputs
    lik = DiscretizedLogisticLikelihood(4, components=3)
    out = torch.tensor([-1e4, -30.0, 0.0, 30.0, 1e4]).view(5, 1, 1).repeat(1, 9, 4).requires_grad_()
    x = torch.tensor([0.0, 1.0, 0.5, 128 / 255])
    (grad,) = torch.autograd.grad(lik.log_density(out, x).sum(), out)
    assert torch.isfinite(grad).all()


def test_the_mixture_of_one_is_the_single_one_and_of_three_the_weighted_sum():
    g = torch.Generator().manual_seed(0)
    loc, scale = torch.randn(5, 3, generator=g), 0.01 + torch.rand(5, 3, generator=g)
    x = torch.randint(0, 256, (7, 5, 3), generator=g) / 255.0
    one = DiscretizedLogisticMixture(torch.randn(5, 3, 1, generator=g), loc.unsqueeze(-1), scale.unsqueeze(-1))
    torch.testing.assert_close(one.log_prob(x), DiscretizedLogistic(loc, scale).log_prob(x))
    torch.testing.assert_close(one.mean, DiscretizedLogistic(loc, scale).mean)
    logits, locs, scales = torch.randn(3, generator=g), torch.randn(3, generator=g), 0.01 + torch.rand(3, generator=g)
    mix = DiscretizedLogisticMixture(logits, locs, scales)
    weights = logits.double().softmax(-1)
    expected = torch.log(sum(weights[j] * reference_log_prob(LEVELS, locs[j], scales[j]).exp() for j in range(3)))
    torch.testing.assert_close(mix.log_prob(LEVELS).double(), expected, rtol=1e-5, atol=1e-5)
    assert mix.batch_shape == torch.Size() and mix.expand([4]).log_prob(LEVELS[:4]).shape == (4,)


def test_mean_is_the_sum_over_levels_and_draws_follow_the_probabilities():
    loc, scale = torch.tensor([0.0, 0.3, 0.97]), torch.tensor([0.05, 0.002, 0.3])
    d = DiscretizedLogistic(loc, scale)
    probs = reference_log_prob(LEVELS.view(-1, 1), loc, scale).exp()                       # [256, 3]
    torch.testing.assert_close(d.mean.double(), (LEVELS.double().view(-1, 1) * probs).sum(0), rtol=0, atol=2e-6)
    pyro.set_rng_seed(0)
    n = 20000
    draws = d.sample((n,))                                                                   # [n, 3]
    assert torch.equal(draws, torch.round(draws * 255) / 255)                               # levels k/255
    counts = torch.stack([(torch.round(draws[:, i] * 255).long() == torch.arange(256).view(-1, 1)).sum(1)
                          for i in range(3)], 1).double()
    se = (probs * (1 - probs) / n).sqrt()
    assert ((counts / n - probs).abs() <= 4 * se + 1e-4).all()                             # 4 standard errors


def test_values_that_are_not_8_bit_are_refused_by_name():
    d = DiscretizedLogistic(torch.zeros(3), torch.ones(3), validate_args=True)
    with pytest.raises(DataError, match=r"needs 8-bit data, x = k/255.*got 1 value\(s\).*x = 0\.5 \(x·255 = 127\.5\)"):
        d.log_prob(torch.tensor([0.0, 0.5, 1.0]))
    vae = pyrovae.VAE(3, 2, hidden=(4,), likelihood="discretized-logistic")
    with pytest.raises(DataError, match=r"x must lie in \[0, 1\] for the discretized-logistic likelihood"):
        vae.model(torch.tensor([[0.0, 2.0, 1.0]]))
    with pytest.raises(DataError, match=r"needs 8-bit data.*x = 0\.3 \(x·255 = 76\.5\)"):
        vae.model(torch.tensor([[0.0, 0.3, 1.0]]))          # the model's data check, as pyrovae.train's
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="needs 8-bit data"):  # Pyro's own check
        DiscretizedLogisticLikelihood(3)(torch.zeros(1, 2, 3)).log_prob(torch.tensor([[0.0, 0.3, 1.0]]))
    with pytest.raises(ConfigError, match=r"'discretized-logistic' models the 256 grey levels.*data.binarize = 'none', "
                                          r"got 'dynamic'"):
        config.load(None, ["model.likelihood='discretized-logistic'"])


@pytest.mark.parametrize("components", [1, 4])
def test_the_likelihood_in_a_vae_matches_its_hand_written_density(components):
    torch.manual_seed(0)
    vae = pyrovae.VAE((2, 3, 4), 5, hidden=(16,), likelihood="discretized-logistic",
                      likelihood_options={"components": components})
    assert vae.likelihood.num_params == (2 if components == 1 else 3 * components)
    x = torch.randint(0, 256, (6, 2, 3, 4)) / 255.0
    z = torch.randn(6, 5)
    p = vae.likelihood_of(z)
    assert p.batch_shape == (6,) and p.event_shape == (2, 3, 4)
    torch.testing.assert_close(p.log_prob(x), vae.log_likelihood(z, x))
    assert vae.sample(3, mean=False).shape == (3, 2, 3, 4)
    with torch.no_grad():      # the notes' closed form is Pyro's analytic-KL ELBO on the same draws
        pyro.set_rng_seed(1)
        cf = pyrovae.closed_form_elbo(vae, x, num_particles=3)
        pyro.set_rng_seed(1)
        analytic = pyrovae.analytic_elbo(vae.model, vae.guide, x, num_particles=3)
    torch.testing.assert_close(cf, analytic)


def test_bits_per_dim_by_hand():
    # −2000 nats over 784 dimensions: 2000 / (784 · 0.6931472) = 2000 / 543.4274 = 3.680344 bits/dim
    assert bits_per_dim(-2000.0, 784) == pytest.approx(3.680344, abs=1e-6)
    # a model giving each of the 256 levels 1/256 spends exactly 8 bits per dimension
    assert bits_per_dim(3072 * math.log(1 / 256), 3072) == pytest.approx(8.0, abs=1e-12)
    # a density on [0, 1]: + log2 256 = 8 bits per dimension for the change of scale
    assert bits_per_dim(-2000.0, 784, density_on_unit_interval=True) == pytest.approx(11.680344, abs=1e-6)
    torch.testing.assert_close(bits_per_dim(torch.tensor([-2000.0, 0.0]), 784), torch.tensor([3.680344, 0.0]))
    assert bits_per_dim_summary({"mean": -2000.0, "se": 5.434274}, 784) == pytest.approx(
        {"mean": 3.680344, "se": 0.01}, abs=1e-6)
    with pytest.raises(InputError, match="dims must be a positive integer"):
        bits_per_dim(-1.0, 0)
