"""The estimators against closed forms, Pyro's own ELBOs, and each other (float64)."""
import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyrovae import VAE, analytic_elbo, analytic_sites, closed_form_elbo, iwae_bound, mc_elbo
from pyrovae.inference.estimators import log_weights

L = 4


def small_vae(likelihood="bernoulli", **kw):
    torch.manual_seed(1)
    return VAE((6, 5), L, hidden=(16,), likelihood=likelihood, **kw).double()


def data(n=8, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 6, 5, generator=g, dtype=torch.float64)


def hand_kl(vae, x):
    q = vae.encode(x)
    mu, sigma = q["loc"], q["scale"]
    return 0.5 * (mu ** 2 + sigma ** 2 - torch.log(sigma ** 2) - 1).sum(-1), mu, sigma


def decoder_ignoring_z(vae):
    """Zero the decoder's last layer: log p(x|z) no longer depends on z, so the ELBO is exact."""
    last = vae.decoder.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.normal_()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian-decoder"])
def test_analytic_kl_equals_hand_written_kl(likelihood):
    vae, x = small_vae(likelihood), data()
    decoder_ignoring_z(vae)
    recon = vae.likelihood.log_density(vae._decoder_out(vae.decoder(torch.zeros(1, L, dtype=torch.float64))), x)
    kl_inside = (recon - analytic_elbo(vae.model, vae.guide, x)).detach()
    kl, _, _ = hand_kl(vae, x)
    assert analytic_sites(vae.model, vae.guide, x) == ["z"]
    assert torch.allclose(kl_inside, kl, rtol=1e-6, atol=0)


def test_notes_kl_differs_from_full_kl_by_half_latent_dim():
    vae, x = small_vae(), data()
    decoder_ignoring_z(vae)
    recon = vae.likelihood.log_density(vae._decoder_out(vae.decoder(torch.zeros(1, L, dtype=torch.float64))), x)
    kl_inside = (recon - analytic_elbo(vae.model, vae.guide, x)).detach()
    _, mu, sigma = hand_kl(vae, x)
    notes = 0.5 * (mu ** 2).sum(-1) + 0.5 * (sigma ** 2).sum(-1) - sigma.log().sum(-1)
    assert torch.allclose(notes - kl_inside, torch.full_like(notes, L / 2), atol=1e-10)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli", "gaussian", "gaussian-learned",
                                        "gaussian-decoder", "laplace"])
def test_closed_form_equals_trace_mean_field_values_and_gradients(likelihood):
    vae, x = small_vae(likelihood), data()
    pyro.set_rng_seed(7)
    per_point = closed_form_elbo(vae, x)
    pyro.set_rng_seed(7)
    assert torch.allclose(per_point, analytic_elbo(vae.model, vae.guide, x), rtol=1e-10)

    params = list(vae.parameters())
    grads_cf = torch.autograd.grad(-per_point.sum(), params, allow_unused=True)
    pyro.set_rng_seed(7)
    loss = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.allclose(loss, -per_point.sum(), rtol=1e-10)
    grads_pyro = torch.autograd.grad(loss, params, allow_unused=True)
    checked = 0
    for p, a, b in zip(params, grads_cf, grads_pyro):
        if a is None and b is None:
            continue
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8), p.shape
        checked += 1
    assert checked == len(params)


def test_mc_elbo_is_trace_elbo_per_datapoint():
    vae, x = small_vae(), data()
    pyro.set_rng_seed(3)
    ours = mc_elbo(vae.model, vae.guide, x, num_particles=5)
    pyro.set_rng_seed(3)
    elbo = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    pyros = elbo.differentiable_loss(vae.model, vae.guide, x)
    assert torch.allclose(ours.sum(), -pyros, rtol=1e-10)


def test_mc_elbo_mean_within_4_standard_errors_of_closed_form():
    vae, x = small_vae("gaussian-decoder"), data(6)
    r = 4000
    with torch.no_grad():
        mc = log_weights(vae.model, vae.guide, x, num_particles=r)                                   # [r, B]
        cf = closed_form_elbo(vae, x.repeat(r, 1, 1)).reshape(r, x.shape[0])           # [r, B]
    se = (mc.var(0) / r + cf.var(0) / r).sqrt()
    assert ((mc.mean(0) - cf.mean(0)).abs() < 4 * se).all()


def test_iwae_is_above_elbo_and_nondecreasing_in_k():
    """E[IWAE_1] = ELBO ≤ E[IWAE_10] ≤ E[IWAE_100] ≤ E[IWAE_1000] (4 standard errors)."""
    vae, x = small_vae(), data(32)
    with torch.no_grad():
        elbo = mc_elbo(vae.model, vae.guide, x, num_particles=4000)                                   # [B]
        draws = {k: torch.stack([iwae_bound(vae.model, vae.guide, x, num_samples=k) for _ in range(8)]) - elbo
                 for k in (1, 10, 100, 1000)}                                            # [R, B] gaps
    mean = {k: d.mean().item() for k, d in draws.items()}
    # the batch mean's standard error over the draws, datapoint by datapoint (stratified)
    se = {k: (d.var(0).sum() / d.shape[0]).sqrt().item() / d.shape[1] for k, d in draws.items()}
    assert abs(mean[1]) < 4 * se[1] + 0.01, (mean, se)  # IWAE with k = 1 is the ELBO
    for a, b in ((1, 10), (10, 100), (100, 1000)):  # never a significant decrease
        assert mean[b] - mean[a] > -4 * math.hypot(se[a], se[b]), (mean, se)
    assert mean[10] - mean[1] > 4 * math.hypot(se[1], se[10]), (mean, se)  # and a real gain
    assert mean[1000] - mean[10] > 4 * math.hypot(se[10], se[1000]), (mean, se)


def test_iwae_chunking_gives_the_same_bound():
    """k = 64 particles in chunks of 7 (nine of 7 and a last one of 1).

    1. The same draws: iwae_bound's running log-sum-exp over the chunks equals the one-shot
       logsumexp of log_weights' 64 rows (drawn chunk by chunk in the same order from the same
       seed) to float64 rounding; a chunk dropped, counted twice or mis-combined moves it by
       log(57/64) = −0.12 nats or more (against 1e-10).
    2. log_weights with chunks of 7 returns all 64 rows (not 63, not 70), each a fresh draw.
    3. Chunks of 7 and one chunk of 64 are the same estimator: over 16 repeats each, the means of
       the bound (averaged over the 4 datapoints) differ by less than 4 standard errors, the SE
       of each batch mean being √(Σ_i var_i / R) / B from the repeats' spread per datapoint.
    """
    vae, x = small_vae(), data(4)
    k = 64
    with torch.no_grad():
        pyro.set_rng_seed(5)
        chunked = iwae_bound(vae.model, vae.guide, x, num_samples=k, chunk_size=7)
        pyro.set_rng_seed(5)
        lw = log_weights(vae.model, vae.guide, x, num_particles=k, chunk_size=7)                  # [k, B]
    assert lw.shape == (k, 4) and torch.isfinite(lw).all()
    assert len({tuple(row.tolist()) for row in lw}) == k                            # no chunk repeated
    torch.testing.assert_close(chunked, torch.logsumexp(lw, 0) - math.log(k), rtol=0, atol=1e-10)
    assert (chunked > lw.mean(0)).all()  # above the ELBO estimate of the same draws (Jensen)

    R = 16
    with torch.no_grad():
        draws = {c: torch.stack([iwae_bound(vae.model, vae.guide, x, num_samples=k, chunk_size=c) for _ in range(R)])
                 for c in (7, k)}                                                     # [R, B] each
    mean = {c: d.mean().item() for c, d in draws.items()}
    se = {c: (d.var(0).sum() / R).sqrt().item() / d.shape[1] for c, d in draws.items()}
    assert abs(mean[7] - mean[k]) < 4 * math.hypot(se[7], se[k]), (mean, se)


def test_estimators_ignore_the_minibatch_scale():
    vae, x = small_vae(num_data=1000), data()
    plain = small_vae()
    pyro.set_rng_seed(4)
    a = analytic_elbo(vae.model, vae.guide, x)
    pyro.set_rng_seed(4)
    b = analytic_elbo(plain.model, plain.guide, x)
    assert torch.allclose(a, b)
    pyro.set_rng_seed(4)
    scaled = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.allclose(scaled, -a.sum() * 1000 / x.shape[0])


def hand_written_pair(D=3):
    """A model/guide pair written by hand with no pyrovae component: z ~ N(0, 1), x ~ N(z·1, I)."""
    def model(x):
        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
            pyro.sample("obs", pyro.distributions.Normal(z.unsqueeze(-1).expand(z.shape + (D,)), 1.0).to_event(1), obs=x)

    def guide(x):
        w = pyro.param("w", torch.tensor(0.2, dtype=torch.float64))
        s = pyro.param("s", torch.tensor(0.7, dtype=torch.float64), constraint=pyro.distributions.constraints.positive)
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(w * x.sum(-1), s))

    return model, guide


def test_hand_written_pair_exact_evidence():
    """x ~ N(0, I + 11ᵀ): every estimator is a lower bound; IWAE(5000) reaches log p(x)."""
    D = 3
    model, guide = hand_written_pair(D)
    x = torch.randn(5, D, dtype=torch.float64)
    cov = torch.eye(D, dtype=torch.float64) + 1.0
    log_px = torch.distributions.MultivariateNormal(torch.zeros(D, dtype=torch.float64), cov).log_prob(x)
    with torch.no_grad():
        elbo = mc_elbo(model, guide, x, num_particles=5000)
        ana = analytic_elbo(model, guide, x, num_particles=5000)
        iw = iwae_bound(model, guide, x, num_samples=5000)
    assert analytic_sites(model, guide, x) == ["z"]
    assert (elbo < log_px).all() and (ana < log_px).all()
    assert torch.allclose(iw, log_px, atol=0.05)


def test_missing_data_plate_is_a_clear_error():
    def model(x):
        pyro.sample("obs", pyro.distributions.Normal(0.0, 1.0).expand(x.shape).to_event(2), obs=x)

    def guide(x):
        pass

    with pytest.raises(ValueError, match="pyro.plate"):
        mc_elbo(model, guide, torch.zeros(3, 2))


def test_closed_form_rejects_components_without_one():
    for kw in ({"prior": "mixture"}, {"guide": "iaf"}, {"prior": "vamp", "prior_options": {"components": 2}}):
        vae = small_vae(**kw)
        with pytest.raises(ValueError, match="no closed form"):
            closed_form_elbo(vae, data())


def test_ppca_exact_posterior_makes_every_draw_exact_and_a_wrong_guide_is_below():
    """Probabilistic PCA (z ~ N(0, I), x ~ N(Wz + b, σ²I)): log p(x) in closed form."""
    from pyrovae.lab.exact import make_ppca_exact_guide, make_ppca_model, ppca_log_evidence, ppca_posterior

    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 2, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    sigma = 0.5
    x = (torch.randn(40, 2, generator=g, dtype=torch.float64) @ W.T + b
         + sigma * torch.randn(40, 5, generator=g, dtype=torch.float64))
    model, exact = make_ppca_model(W, b, sigma), make_ppca_exact_guide(W, b, sigma)
    log_px = ppca_log_evidence(x, W, b, sigma)
    draws = log_weights(model, exact, x, num_particles=20)                                          # [20, 40]
    assert torch.allclose(draws, log_px.expand_as(draws), atol=1e-8)                  # every draw is exact

    def wrong(x):  # the posterior mean shifted by 0.2 and its spread inflated 1.2 times
        loc, cov = ppca_posterior(x, W, b, sigma)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.MultivariateNormal(loc + 0.2, covariance_matrix=1.44 * cov))

    with torch.no_grad():
        lw = log_weights(model, wrong, x, num_particles=2000)
        elbo, se = lw.mean(0), lw.std(0) / math.sqrt(2000)
        iw = iwae_bound(model, wrong, x, num_samples=5000)
    assert (elbo < log_px - 4 * se).all()
    assert (iw > elbo).all()
    assert (iw - log_px).mean().abs() < 0.05 and (iw - log_px).abs().max() < 0.1, (iw - log_px)
