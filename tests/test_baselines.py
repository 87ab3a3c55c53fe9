"""Checks of pyrovae.baselines: closed-form Gaussians and Pyro-fitted mixtures."""

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from scipy import stats

from pyrovae.lab.baselines import (
    fit_bernoulli_mixture,
    fit_gaussian,
    fit_gaussian_mixture,
    gaussian_log_likelihood,
    init_mixture,
    make_mixture_model,
    mixture_distribution,
    mixture_guide,
    mixture_log_likelihood,
)

DTYPE = torch.float64


def correlated_gaussian_data(N=500, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g, dtype=DTYPE)
    return torch.randn(N, D, generator=g, dtype=DTYPE) @ A + torch.arange(D, dtype=DTYPE)


def true_bernoulli_mixture(D=24, dtype=torch.float32):
    """Three well-separated components over D pixels: each 'on' over its own third."""
    probs = torch.full((3, D), 0.1, dtype=dtype)
    for k in range(3):
        probs[k, k * D // 3 : (k + 1) * D // 3] = 0.9
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=dtype)
    return {"family": "bernoulli", "weights": weights, "probs": probs}


def sample_mixture(params, N, seed=1):
    """Ancestral samples k ~ Categorical(w), x ~ component k; uses the mixture's distribution."""
    torch.manual_seed(seed)
    return mixture_distribution(params).sample((N,))


# ---------------------------------------------------------------- single Gaussian


def test_diagonal_gaussian_is_sample_mean_and_variance():
    x = correlated_gaussian_data()
    fit = fit_gaussian(x)
    assert torch.allclose(fit["loc"], x.mean(0))
    assert torch.allclose(fit["scale"] ** 2, x.var(0, unbiased=False))
    expected = stats.norm.logpdf(x.numpy(), fit["loc"].numpy(), fit["scale"].numpy()).sum(-1)
    log_lik = gaussian_log_likelihood(fit, x)
    assert log_lik.shape == (500,)
    assert torch.allclose(log_lik, torch.from_numpy(expected), rtol=0, atol=1e-10)


def test_full_gaussian_is_sample_mean_and_covariance():
    x = correlated_gaussian_data()
    fit = fit_gaussian(x, covariance="full", var_floor=0.0)
    cov = fit["scale_tril"] @ fit["scale_tril"].T
    assert torch.allclose(cov, torch.cov(x.T, correction=0))
    expected = stats.multivariate_normal(fit["loc"].numpy(), cov.numpy()).logpdf(x.numpy())
    assert torch.allclose(gaussian_log_likelihood(fit, x), torch.from_numpy(expected), atol=1e-10)
    # and beats the diagonal fit on correlated data
    assert gaussian_log_likelihood(fit, x).mean() > gaussian_log_likelihood(fit_gaussian(x), x).mean()


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_gaussian_ml_fit_beats_perturbed_fits(covariance):
    x = correlated_gaussian_data()
    fit = fit_gaussian(x, covariance=covariance, var_floor=0.0)
    best = gaussian_log_likelihood(fit, x).mean()
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        perturbed = {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=DTYPE) for k, v in fit.items()}
        if covariance == "full":
            perturbed["scale_tril"] = perturbed["scale_tril"].tril()
        assert best > gaussian_log_likelihood(perturbed, x).mean()


def test_variance_floor_keeps_constant_pixels_finite():
    x = torch.rand(50, 6, dtype=DTYPE)
    x[:, 2] = 0.0  # a constant "border pixel"
    for covariance in ("diagonal", "full"):
        fit = fit_gaussian(x, covariance=covariance)
        assert gaussian_log_likelihood(fit, x).isfinite().all()
    assert fit_gaussian(x)["scale"][2] == pytest.approx(1e-3)


# ---------------------------------------------------------------- mixtures


def brute_force_log_likelihood(params, x):
    """logsumexp_k [log w_k + sum_d log p(x_d | theta_kd)], one component at a time."""
    per_component = []
    for k in range(params["weights"].shape[0]):
        if params["family"] == "bernoulli":
            p = params["probs"][k]
            log_px = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
        else:
            log_px = torch.distributions.Normal(params["loc"][k], params["scale"][k]).log_prob(x).sum(-1)
        per_component.append(params["weights"][k].log() + log_px)
    return torch.stack(per_component, -1).logsumexp(-1)


def random_mixture(family, K=4, D=7, N=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, D, generator=g, dtype=DTYPE)
    if family == "bernoulli":
        x = x.round()
    params = init_mixture(x, K, family, generator=g)
    params["weights"] = torch.rand(K, generator=g, dtype=DTYPE).softmax(0)
    for name in ("probs", "loc"):
        if name in params:
            params[name] = torch.rand(K, D, generator=g, dtype=DTYPE) * 0.9 + 0.05
    if family == "gaussian":
        params["scale"] = torch.rand(K, D, generator=g, dtype=DTYPE) + 0.1
    return params, x


@pytest.mark.parametrize("family", ["bernoulli", "gaussian"])
def test_mixture_log_likelihood_equals_brute_force(family):
    params, x = random_mixture(family)
    log_lik = mixture_log_likelihood(params, x)
    assert log_lik.shape == (30,)
    assert torch.allclose(log_lik, brute_force_log_likelihood(params, x), rtol=0, atol=1e-6)
    chunked = mixture_log_likelihood(params, x, max_elements=4 * 7 * 4)  # chunks of 4 rows
    assert torch.allclose(chunked, log_lik, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["bernoulli", "gaussian"])
def test_enumerated_elbo_is_the_exact_marginal_likelihood(family):
    params, x = random_mixture(family)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(make_mixture_model(params), mixture_guide, x)
    assert loss == pytest.approx(-mixture_log_likelihood(params, x).sum().item(), rel=1e-4)


def test_subsampled_elbo_is_unbiased_for_the_marginal_likelihood():
    params, x = random_mixture("bernoulli", N=40)
    model = make_mixture_model(params, subsample_size=10)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    losses = torch.tensor([elbo.loss(model, mixture_guide, x) for _ in range(200)])
    exact = -mixture_log_likelihood(params, x).sum()
    assert abs(losses.mean() - exact) < 4 * losses.std() / 200**0.5  # 4 standard errors


def test_bernoulli_mixture_fit_recovers_the_generating_likelihood():
    truth = true_bernoulli_mixture()
    x = sample_mixture(truth, N=3000)
    x_test = sample_mixture(truth, N=1000, seed=2)
    fit, history = fit_bernoulli_mixture(x, 3, steps=150, batch_size=500, lr=0.1, seed=0)
    assert len(history) == 150
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert last > first + 1.0  # nats per datapoint
    assert fit["probs"].shape == (3, 24) and fit["weights"].shape == (3,)
    assert ((fit["probs"] >= 1e-3) & (fit["probs"] <= 1 - 1e-3)).all()
    # held-out log-likelihood within 0.06 nats per datapoint of the generating mixture's (the fit
    # sits ~0.02 below it: estimation error plus Adam's noise at a constant learning rate)
    fitted = mixture_log_likelihood(fit, x_test).mean()
    assert fitted == pytest.approx(mixture_log_likelihood(truth, x_test).mean().item(), abs=0.06)
    # the global param store is untouched
    assert "probs" not in pyro.get_param_store()


def test_gaussian_mixture_fit_recovers_the_generating_likelihood():
    truth = {
        "family": "gaussian",
        "weights": torch.tensor([0.6, 0.4]),
        "loc": torch.tensor([[0.2, 0.3, 0.8], [0.8, 0.6, 0.1]]),
        "scale": torch.tensor([[0.05, 0.1, 0.08], [0.1, 0.05, 0.06]]),
    }
    x, x_test = sample_mixture(truth, N=2000), sample_mixture(truth, N=1000, seed=2)
    fit, history = fit_gaussian_mixture(x, 2, steps=200, batch_size=500, lr=0.05, seed=0)
    assert sum(history[-10:]) / 10 > sum(history[:10]) / 10 + 1.0
    assert (fit["scale"] > 1 / 256).all()
    fitted = mixture_log_likelihood(fit, x_test).mean()
    assert fitted == pytest.approx(mixture_log_likelihood(truth, x_test).mean().item(), abs=0.06)


def test_mixture_fit_is_reproducible_and_leaves_global_rng_alone():
    x = sample_mixture(true_bernoulli_mixture(), N=200)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = fit_bernoulli_mixture(x, 3, steps=5, batch_size=50, seed=7)
    assert torch.rand(1) == before
    second = fit_bernoulli_mixture(x, 3, steps=5, batch_size=50, seed=7)
    assert first[1] == second[1]
    assert torch.equal(first[0]["probs"], second[0]["probs"])
