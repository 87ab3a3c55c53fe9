"""Checks of pyrovae.exact against brute force, numerical integration and Pyro's own ELBO."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from scipy import integrate, special

from pyrovae.lab.exact import (
    make_ppca_exact_guide,
    make_ppca_model,
    make_toy_guide,
    make_toy_model,
    ppca_log_evidence,
    ppca_mle,
    ppca_mle_log_likelihood,
    ppca_posterior,
    toy_log_evidence,
)

DTYPE = torch.float64
TOY = dict(a=0.5, b=2.0, mu=1.0)


def random_ppca(D, L, sigma=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, L, generator=g, dtype=DTYPE)
    b = torch.randn(D, generator=g, dtype=DTYPE)
    return {"W": W, "b": b, "sigma": torch.tensor(sigma, dtype=DTYPE)}


def sample_ppca(params, N, seed=1):
    g = torch.Generator().manual_seed(seed)
    D, L = params["W"].shape
    z = torch.randn(N, L, generator=g, dtype=DTYPE)
    noise = torch.randn(N, D, generator=g, dtype=DTYPE)
    return z @ params["W"].T + params["b"] + params["sigma"] * noise


def log_joint(x, z, params):
    """log p(x | z) + log p(z) for PPCA, written out from the generative story."""
    lik = dist.Normal(z @ params["W"].T + params["b"], params["sigma"]).log_prob(x).sum(-1)
    return lik + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)


def sample_toy(N, a, b, mu, seed=2):
    g = torch.Generator().manual_seed(seed)
    z = a + (b - a) * torch.rand(N, 1, generator=g, dtype=DTYPE)
    return mu + z * torch.randn(N, 1, generator=g, dtype=DTYPE)


# ---------------------------------------------------------------- PPCA


def test_ppca_log_evidence_equals_full_covariance_gaussian():
    params = random_ppca(D=6, L=2)
    x = sample_ppca(params, N=50)
    W, b, sigma = params.values()
    brute = dist.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(6, dtype=DTYPE)).log_prob(x)
    log_ev = ppca_log_evidence(x, **params)
    assert log_ev.shape == (50,)
    assert torch.allclose(log_ev, brute, rtol=0, atol=1e-10)


def test_ppca_log_evidence_equals_integral_over_one_dimensional_latent():
    params = random_ppca(D=3, L=1)
    x = sample_ppca(params, N=4)
    log_ev = ppca_log_evidence(x, **params)
    for n in range(4):

        def joint(z, n=n):
            return math.exp(log_joint(x[n], torch.tensor([z], dtype=DTYPE), params).item())

        evidence, _ = integrate.quad(joint, -np.inf, np.inf, epsabs=0, epsrel=1e-12)
        assert log_ev[n].item() == pytest.approx(math.log(evidence), abs=1e-8)


def test_ppca_posterior_is_bayes_rule():
    params = random_ppca(D=5, L=3)
    x = sample_ppca(params, N=20)
    loc, cov = ppca_posterior(x, **params)
    assert loc.shape == (20, 3) and cov.shape == (3, 3)
    z = torch.randn(7, 20, 3, dtype=DTYPE) * 2  # arbitrary points, not posterior draws
    bayes = log_joint(x, z, params) - ppca_log_evidence(x, **params)
    log_q = dist.MultivariateNormal(loc, covariance_matrix=cov).log_prob(z)
    assert torch.allclose(log_q, bayes, rtol=0, atol=1e-8)


def mean_log_lik(x, params):
    return ppca_log_evidence(x, **params).mean()


def test_ppca_mle_is_the_maximum():
    truth = random_ppca(D=5, L=2)
    x = sample_ppca(truth, N=2000)
    fit = ppca_mle(x, latent_dim=2)
    best = mean_log_lik(x, fit)
    assert best >= mean_log_lik(x, truth)
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        perturbed = {
            "W": fit["W"] + 0.05 * torch.randn(5, 2, generator=g, dtype=DTYPE),
            "b": fit["b"] + 0.05 * torch.randn(5, generator=g, dtype=DTYPE),
            "sigma": fit["sigma"] * math.exp(0.05 * torch.randn(1, generator=g).item()),
        }
        assert best > mean_log_lik(x, perturbed)
    # ... and a stationary point: the gradient of the log-likelihood vanishes there.
    leaves = {k: v.clone().requires_grad_() for k, v in fit.items()}
    grads = torch.autograd.grad(mean_log_lik(x, leaves), list(leaves.values()))
    for grad in grads:
        assert grad.abs().max() < 1e-8


def test_ppca_mle_recovers_generating_parameters():
    # Relative standard error of sigma_hat is about sqrt(1 / (2 N (D - L))) ~ 0.3 % here;
    # the 2 % tolerance is ~7 standard errors.
    truth = random_ppca(D=5, L=2, sigma=0.5)
    x = sample_ppca(truth, N=20000)
    fit = ppca_mle(x, latent_dim=2)
    assert fit["sigma"].item() == pytest.approx(0.5, rel=0.02)
    # W is identified only up to a rotation: compare W W^T.
    gram, gram_true = fit["W"] @ fit["W"].T, truth["W"] @ truth["W"].T
    assert torch.linalg.norm(gram - gram_true) / torch.linalg.norm(gram_true) < 0.05


def test_ppca_mle_log_likelihood_is_mean_test_evidence():
    truth = random_ppca(D=5, L=2)
    x_train, x_test = sample_ppca(truth, N=3000, seed=4), sample_ppca(truth, N=1000, seed=5)
    value = ppca_mle_log_likelihood(x_train, x_test, latent_dim=2)
    assert value.shape == ()
    assert value == mean_log_lik(x_test, ppca_mle(x_train, 2))
    # held out, the ML fit is close to (and may be below) the truth: 0.05 nats of slack.
    assert abs(value - mean_log_lik(x_test, truth)) < 0.05


def test_ppca_mle_rejects_full_rank_latent():
    with pytest.raises(ValueError):
        ppca_mle(torch.randn(10, 3, dtype=DTYPE), latent_dim=3)


@pytest.mark.parametrize("seed", range(5))
def test_exact_posterior_guide_makes_trace_elbo_tight(seed):
    params = random_ppca(D=6, L=2, seed=seed)
    x = sample_ppca(params, N=100, seed=seed + 10)
    model, guide = make_ppca_model(**params), make_ppca_exact_guide(**params)
    pyro.set_rng_seed(seed)
    loss = Trace_ELBO().loss(model, guide, x)  # one draw of z per datapoint
    assert loss == pytest.approx(-ppca_log_evidence(x, **params).sum().item(), rel=0, abs=1e-6)


# ---------------------------------------------------------------- toy model


def toy_evidence_quad(x, a, b, mu):
    """int_a^b N(x; mu, z^2) / (b - a) dz by adaptive quadrature."""
    value, _ = integrate.quad(
        lambda z: math.exp(-((x - mu) ** 2) / (2 * z * z)) / (z * math.sqrt(2 * math.pi)),
        a, b, epsabs=0, epsrel=1e-12,
    )
    return value / (b - a)


def toy_evidence_closed_form(x, a, b, mu):
    """[E1(c / b^2) - E1(c / a^2)] / (2 (b - a) sqrt(2 pi)), c = (x - mu)^2 / 2."""
    c = (x - mu) ** 2 / 2
    return (special.exp1(c / b**2) - special.exp1(c / a**2)) / (2 * (b - a) * math.sqrt(2 * math.pi))


def test_toy_evidence_agrees_with_quad_and_closed_form():
    xs = [1.0, 1.3, -0.7, 4.0, 9.0, -15.0]
    log_ev = toy_log_evidence(torch.tensor(xs, dtype=DTYPE).unsqueeze(-1), **TOY)
    assert log_ev.shape == (len(xs),)
    for x, value in zip(xs, log_ev.tolist()):
        assert value == pytest.approx(math.log(toy_evidence_quad(x, **TOY)), abs=1e-9)
        if x != TOY["mu"]:  # E1 diverges at c = 0; there p(x) = log(b / a) / ((b - a) sqrt(2 pi))
            assert value == pytest.approx(math.log(toy_evidence_closed_form(x, **TOY)), abs=1e-9)
    at_mu = math.log(math.log(TOY["b"] / TOY["a"]) / ((TOY["b"] - TOY["a"]) * math.sqrt(2 * math.pi)))
    assert log_ev[0].item() == pytest.approx(at_mu, abs=1e-9)


def test_toy_evidence_integrates_to_one():
    def density(x):
        return toy_log_evidence(torch.tensor([x], dtype=DTYPE), **TOY).exp().item()

    mu = TOY["mu"]
    left, _ = integrate.quad(density, -np.inf, mu, epsabs=1e-12, epsrel=1e-10)
    right, _ = integrate.quad(density, mu, np.inf, epsabs=1e-12, epsrel=1e-10)
    assert left + right == pytest.approx(1.0, abs=1e-6)


def test_toy_model_and_guide_shapes():
    x = sample_toy(8, **TOY)
    model, guide = make_toy_model(**TOY), make_toy_guide(**TOY)
    guide_trace = pyro.poutine.trace(guide).get_trace(x)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(x)
    z = guide_trace.nodes["z"]["value"]
    assert z.shape == (8,) and z.dtype == DTYPE
    assert ((z > TOY["a"]) & (z < TOY["b"])).all()
    assert model_trace.nodes["x"]["fn"].event_shape == (1,)
    assert model_trace.log_prob_sum().isfinite()


def test_toy_model_rejects_nonpositive_scale():
    with pytest.raises(ValueError):
        make_toy_model(0.0, 1.0, 0.0)


def elbo_loss_and_standard_error(model, guide, x, batches=50, particles=20):
    """Mean of `batches` vectorised Trace_ELBO losses and its standard error."""
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    losses = torch.tensor([elbo.loss(model, guide, x) for _ in range(batches)])
    return losses.mean().item(), (losses.std() / math.sqrt(batches)).item()


def randomise_toy_guide(guide, x, seed):
    guide(x)  # creates the parameters
    g = torch.Generator().manual_seed(seed)
    for name in ("toy_guide_weight", "toy_guide_bias"):
        pyro.get_param_store()[name] = torch.randn(2, generator=g, dtype=DTYPE)


@pytest.mark.parametrize("guide_seed", [None, 0, 1])  # None: the initial guide, close to the prior
def test_toy_trace_elbo_is_a_lower_bound(guide_seed):
    x = sample_toy(40, **TOY)
    model, guide = make_toy_model(**TOY), make_toy_guide(**TOY)
    if guide_seed is not None:
        randomise_toy_guide(guide, x, guide_seed)
    loss, se = elbo_loss_and_standard_error(model, guide, x)
    neg_log_evidence = -toy_log_evidence(x, **TOY).sum().item()
    assert loss >= neg_log_evidence - 4 * se
    if guide_seed is None:  # the prior is not the posterior: the gap sum_n KL(q || p(z|x_n)) > 0
        assert loss > neg_log_evidence + 4 * se


def test_toy_guide_can_learn_the_posterior():
    # float32 for speed (Beta reparameterised draws are ~10x slower in float64). From the
    # near-prior start the gap is ~0.25 nats per datapoint; after 100 steps it is ~0.02.
    x = sample_toy(200, **TOY)
    neg_log_evidence = -toy_log_evidence(x, **TOY).sum().item()
    x = x.float()
    model, guide = make_toy_model(**TOY), make_toy_guide(**TOY)
    gap_before = elbo_loss_and_standard_error(model, guide, x)[0] - neg_log_evidence
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, Adam({"lr": 0.05}), elbo)
    for _ in range(100):
        svi.step(x)
    gap_after = elbo_loss_and_standard_error(model, guide, x)[0] - neg_log_evidence
    assert 0 < gap_after < 0.25 * gap_before
