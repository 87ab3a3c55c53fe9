"""pyrovae's ELBOs against Pyro's: MeanField_ELBO gives TraceMeanField_ELBO's loss and gradients."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

import pyrovae
from pyrovae.inference.elbos import ELBOS, MeanField_ELBO, make_elbo
from pyrovae.inference.traces import kl_or_none, sample_sites, site_terms, traces
from pyrovae.inference.train import ScaleLatents


def binary(n=12, d=6, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) > 0.5).double()


def loss_and_grads(elbo, model, guide, x, params, validate):
    """−ELBO and d(−ELBO)/dθ for one seeded draw."""
    pyro.set_rng_seed(3)
    with pyro.validation_enabled(validate):
        loss = elbo.differentiable_loss(model, guide, x)
    return loss.item(), torch.autograd.grad(loss, params)


def assert_same_as_pyro(model, guide, x, params, num_particles=1):
    options = dict(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
    for validate in (False, True):
        ours = loss_and_grads(MeanField_ELBO(**options), model, guide, x, params, validate)
        pyros = loss_and_grads(TraceMeanField_ELBO(**options), model, guide, x, params, validate)
        assert ours[0] == pytest.approx(pyros[0], rel=1e-12)
        for a, b in zip(ours[1], pyros[1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("guide", ["diagonal", "iaf"])  # closed-form KL / no KL: Monte Carlo
@pytest.mark.parametrize("num_particles", [1, 3])
def test_mean_field_elbo_equals_pyros_on_a_vae(guide, num_particles):
    vae = pyrovae.VAE(6, 3, hidden=(8,), guide=guide).double()
    assert_same_as_pyro(vae.model, vae.guide, binary(), list(vae.parameters()), num_particles)


def test_mean_field_elbo_equals_pyros_when_scaled():
    """Minibatch scale N/B around the pair and β on the latent sites (KL warm-up)."""
    vae = pyrovae.VAE(6, 3, hidden=(8,)).double()
    pair = [ScaleLatents(0.3)(poutine.scale(fn, 7.0)) for fn in (vae.model, vae.guide)]
    assert_same_as_pyro(*pair, binary(), list(vae.parameters()))


def test_mean_field_elbo_equals_pyros_on_a_hand_written_pair():
    """Two latents, one with a registered KL (Normal ‖ Normal) and one without (Gamma ‖ LogNormal),
    a masked observation, and an auxiliary guide site."""
    loc = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    log_rate = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.arange(10) < 7

    def model(x):
        m = pyro.sample("m", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        with pyro.plate("data", x.shape[0]), poutine.mask(mask=mask):
            pyro.sample("x", dist.Normal(m, s), obs=x)

    def guide(x):
        pyro.sample("m", dist.Normal(loc, 0.5))
        pyro.sample("s", dist.Gamma(2.0, log_rate.exp()))
        pyro.sample("aux", dist.Normal(loc, 2.0), infer={"is_auxiliary": True})

    with pytest.raises(NotImplementedError):
        torch.distributions.kl_divergence(dist.Gamma(2.0, 1.0), dist.LogNormal(0.0, 1.0))
    assert_same_as_pyro(model, guide, x, [loc, log_rate])


def test_mean_field_elbo_skips_the_log_densities_it_does_not_use():
    """With a closed-form KL, neither log p(z) nor log q(z|x) is computed (validation off)."""
    vae = pyrovae.VAE(6, 3, hidden=(8,)).double()
    with pyro.validation_enabled(False):
        model_trace, guide_trace = MeanField_ELBO()._get_trace(vae.model, vae.guide, (binary(),), {})
    assert "log_prob" not in model_trace.nodes["z"] and "score_parts" not in guide_trace.nodes["z"]
    assert "log_prob_sum" in model_trace.nodes["x"]
    mu, sigma = vae.posterior_params(binary())
    kl = 0.5 * (mu ** 2 + sigma ** 2 - torch.log(sigma ** 2) - 1).sum()
    assert guide_trace.nodes["z"]["kl_sum"].item() == pytest.approx(kl.item(), rel=1e-12)


def test_mean_field_elbo_steps_pyros_svi_as_pyros_class_does():
    """SVI (loss_and_grads) and ``loss`` give Pyro's numbers step by step."""
    runs = {}
    for cls in (MeanField_ELBO, TraceMeanField_ELBO):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pyrovae.VAE(6, 2, hidden=(16,)).double()
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), cls())
        pyro.set_rng_seed(0)
        losses = [svi.step(binary(n=64)) for _ in range(5)] + [svi.evaluate_loss(binary(n=64))]
        runs[cls] = losses, [p.detach().clone() for p in vae.parameters()]
    assert runs[MeanField_ELBO][0] == pytest.approx(runs[TraceMeanField_ELBO][0], rel=1e-12)
    for a, b in zip(runs[MeanField_ELBO][1], runs[TraceMeanField_ELBO][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_registry_names_each_objective():
    assert list(ELBOS) == ["trace", "mean-field", "iwae", "graph", "enum"]
    assert type(make_elbo("mean-field")) is MeanField_ELBO
    iwae = make_elbo("iwae", num_particles=5)
    assert (type(iwae).__name__, iwae.alpha, iwae.num_particles, iwae.vectorize_particles) == ("RenyiELBO", 0, 5, True)
    with pytest.raises(ValueError, match="unknown elbo 'elbow'; expected one of enum, graph, iwae, mean-field, trace"):
        make_elbo("elbow")


def test_site_terms_name_each_term_of_the_walk_in_order():
    """The one per-site walk of the ELBO: which sites contribute which term, in which order — log p and
    −log q site by site (Trace_ELBO), or per model site −KL where one is given, else log p, −log q (a
    latent only the model has: log p alone), then the auxiliary guide sites (mean-field)."""
    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        k = pyro.sample("k", dist.Bernoulli(0.3))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(w + k, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.StudentT(5.0, x / 2, 0.7))  # no closed-form KL to a Normal
        pyro.sample("w", dist.Normal(0.1, 0.9))
        pyro.sample("u", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})

    x = torch.randn(4, generator=torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    model_sites, guide_sites = map(sample_sites, traces(model, guide, x))

    def log_density(site):
        return site["fn"].log_prob(site["value"]).sum()

    plain = list(site_terms(model_sites, guide_sites, log_density, log_density))
    assert [(kind, name) for kind, name, _ in plain] == [
        ("latent", "w"), ("latent", "k"), ("latent", "z"), ("observed", "x"),
        ("guide", "z"), ("guide", "w"), ("auxiliary", "u")]
    mean_field = list(site_terms(model_sites, guide_sites, log_density, log_density, kl=kl_or_none))
    assert [(kind, name) for kind, name, _ in mean_field] == [
        ("kl", "w"), ("latent", "k"), ("latent", "z"), ("guide", "z"), ("observed", "x"), ("auxiliary", "u")]
    closed = torch.distributions.kl_divergence(guide_sites["w"]["fn"], model_sites["w"]["fn"])
    assert mean_field[0][2].item() == pytest.approx(-closed.item(), rel=1e-12)
    assert plain[4][2].item() == pytest.approx(-log_density(guide_sites["z"]).item(), rel=1e-12)
