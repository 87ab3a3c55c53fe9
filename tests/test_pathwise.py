"""STL_ELBO and DReG_IWAE: Pyro's values on the same draws, unbiased gradients (4 standard errors,
against the closed-form gradient or Pyro's estimator), lower variance, STL's zero gradient at the
posterior, SVI, minibatch scale, refusals.

The Gaussian pair repeats one datapoint x in a plate of N copies, each with its own decoder
parameters (a_n, b_n) and guide parameters (μ_n, log σ_n), all equal: one backward pass gives N
independent draws of every gradient. Model p(z) = N(0, 1), p(x|z) = N(a z + b, 1); guide
q(z) = N(μ, σ²); posterior N(a(x − b)/(1 + a²), 1/(1 + a²)).
"""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.optim import Adam

import pyrovae
from pyrovae.errors import ConfigError, PairError
from pyrovae.inference.elbos import make_elbo
from pyrovae.inference.pathwise import DReG_IWAE, STL_ELBO

X = 1.5
GUIDE, MODEL = ("mu", "log_sigma"), ("a", "b")


@pytest.fixture(autouse=True)
def clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def gaussian_pair(n, a=1.2, b=0.3, mu=0.2, log_sigma=-0.3, shared=False):
    """(model, guide, x) of the repeated Gaussian datapoint; ``shared``: a parameter c_n in both,
    the prior's mean and a shift of the guide's mean (a VampPrior-like coupling)."""
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731

    def model(x):
        a_, b_ = pyro.param("a", full(a)), pyro.param("b", full(b))
        c = pyro.param("c", full(0.1)) if shared else 0.0
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(c + torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(a_ * z + b_, 1.0), obs=x)

    def guide(x):
        m, s = pyro.param("mu", full(mu)), pyro.param("log_sigma", full(log_sigma))
        c = pyro.param("c", full(0.1)) if shared else 0.0
        with pyro.plate("data", n):
            pyro.sample("z", dist.Normal(m + c, s.exp()))

    return model, guide, torch.full((n,), X, dtype=torch.float64)


def draws(elbo, model, guide, x, seed=0):
    """name → d(loss)/d(param) of one seeded ``loss_and_grads`` (one draw per datapoint copy), the loss."""
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        poutine.trace(guide).get_trace(x), poutine.trace(model).get_trace(x)  # create the parameters
    store = pyro.get_param_store()
    for p in store.values():
        p.unconstrained().grad = None
    pyro.set_rng_seed(seed)
    loss = elbo.loss_and_grads(model, guide, x)
    return {n: store.get_param(n).unconstrained().grad.clone() for n in store.keys()}, loss


def exact_elbo_gradient(a=1.2, b=0.3, mu=0.2, log_sigma=-0.3):
    """d(−ELBO)/d(μ, log σ, a, b) of one datapoint, from the closed-form ELBO."""
    p = torch.tensor([mu, log_sigma, a, b], dtype=torch.float64, requires_grad=True)
    m, ls, a_, b_ = p
    s2 = (2 * ls).exp()
    elbo = (-0.5 * ((X - a_ * m - b_) ** 2 + a_ ** 2 * s2) - 0.5 * (m ** 2 + s2) + ls
            - math.log(2 * math.pi) + 0.5 * (1 + math.log(2 * math.pi)))
    return dict(zip(GUIDE + MODEL, torch.autograd.grad(-elbo, p)[0]))


def within_4_se(sample, target, what):
    """The mean of ``sample`` agrees with ``target`` (a number, or another sample: difference of means)
    within 4 standard errors."""
    se = sample.std() / math.sqrt(len(sample))
    if torch.is_tensor(target) and target.dim():
        se = (se ** 2 + target.var() / len(target)).sqrt()
        target = target.mean()
    assert abs(sample.mean() - target) < 4 * se, (what, sample.mean().item(), float(target), se.item())


def iwae(k, **kw):
    return dict(num_particles=k, vectorize_particles=True, max_plate_nesting=1, **kw)


# --- values: Pyro's on the same draws --------------------------------------------------------------

@pytest.mark.parametrize("guide", ["diagonal", "iaf"])
@pytest.mark.parametrize("k", [1, 3])
def test_values_equal_pyros_on_a_vae(guide, k):
    """STL_ELBO's loss is Trace_ELBO's, DReG_IWAE's RenyiELBO(alpha=0)'s, same seed, with and
    without a minibatch scale (7). float32: Pyro's inverse of its autoregressive flow (which
    log q(sg z) needs) allocates in the default dtype."""
    vae = pyrovae.VAE(6, 3, hidden=(8,), guide=guide)
    x = (torch.rand(12, 6, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    options = dict(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
    for scale in (1.0, 7.0):
        pair = [poutine.scale(fn, scale) for fn in (vae.model, vae.guide)]
        for ours, pyros in ((STL_ELBO, Trace_ELBO), (DReG_IWAE, RenyiELBO)):
            for method in ("loss", "loss_and_grads"):
                values = []
                for elbo in (ours(**options), pyros(**options)):
                    pyro.set_rng_seed(1)
                    values.append(getattr(elbo, method)(*pair, x))
                assert values[0] == values[1], (ours, scale, method, values)


def test_looped_particles_give_the_same_value():
    model, guide, x = gaussian_pair(5)
    for ours, pyros in ((STL_ELBO, Trace_ELBO), (DReG_IWAE, RenyiELBO)):
        options = dict(num_particles=3, vectorize_particles=False, max_plate_nesting=1)
        pyro.set_rng_seed(2)
        a = ours(**options).loss(model, guide, x)
        pyro.set_rng_seed(2)
        assert a == pytest.approx(pyros(**options).loss(model, guide, x), rel=1e-13)


# --- gradients: unbiased, lower variance ----------------------------------------------------------

def test_stl_gradient_is_unbiased_with_lower_encoder_variance():
    """4000 draws: STL's and Trace_ELBO's mean gradients lie within 4 standard errors of the
    closed-form gradient for μ, log σ, a, b; STL's encoder gradients vary less."""
    model, guide, x = gaussian_pair(4000)
    exact = exact_elbo_gradient()
    stl, _ = draws(STL_ELBO(), model, guide, x, seed=0)
    standard, _ = draws(Trace_ELBO(), model, guide, x, seed=1)
    for name in GUIDE + MODEL:
        within_4_se(stl[name], exact[name], ("stl", name))
        within_4_se(standard[name], exact[name], ("standard", name))
    for name in GUIDE:
        ratio = (stl[name].var() / standard[name].var()).item()
        print(f"STL/Trace_ELBO variance of d/d{name}: {ratio:.3f}")
        assert ratio < 0.5, (name, ratio)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_dreg_gradient_is_unbiased_with_lower_encoder_variance(scale):
    """k = 8, 3000 draws (scale 1 and a minibatch scale 3 around both): DReG's mean gradient agrees
    with RenyiELBO(alpha=0)'s within 4 standard errors of the difference for μ, log σ, a, b; DReG's
    encoder gradients vary less."""
    model, guide, x = gaussian_pair(3000, mu=0.6, log_sigma=-0.6)
    model, guide = poutine.scale(model, scale), poutine.scale(guide, scale)
    dreg, _ = draws(DReG_IWAE(**iwae(8)), model, guide, x, seed=0)
    standard, _ = draws(RenyiELBO(alpha=0, **iwae(8)), model, guide, x, seed=1)
    for name in GUIDE + MODEL:
        within_4_se(dreg[name], standard[name], (scale, name))
    for name in GUIDE:
        ratio = (dreg[name].var() / standard[name].var()).item()
        print(f"scale {scale}: DReG/IWAE variance of d/d{name}: {ratio:.3f}")
        assert ratio < 0.5, (name, ratio)


def test_dreg_decoder_gradient_is_iwaes_on_the_same_draw():
    model, guide, x = gaussian_pair(50)
    dreg, dreg_loss = draws(DReG_IWAE(**iwae(5)), model, guide, x, seed=4)
    standard, loss = draws(RenyiELBO(alpha=0, **iwae(5)), model, guide, x, seed=4)
    assert dreg_loss == pytest.approx(loss, rel=1e-13)
    for name in MODEL:
        torch.testing.assert_close(dreg[name], standard[name], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(dreg["mu"], standard["mu"])  # the encoder's is DReG's own


def test_dreg_parameter_in_model_and_guide_is_unbiased():
    """A parameter c in both traces (prior mean, guide shift), 3000 draws, k = 8: DReG's mean
    gradient of c agrees with RenyiELBO's within 4 standard errors (as do the others)."""
    model, guide, x = gaussian_pair(3000, shared=True)
    dreg, _ = draws(DReG_IWAE(**iwae(8)), model, guide, x, seed=0)
    standard, _ = draws(RenyiELBO(alpha=0, **iwae(8)), model, guide, x, seed=1)
    for name in GUIDE + MODEL + ("c",):
        within_4_se(dreg[name], standard[name], name)


def test_dependent_guide_sites_are_unbiased():
    """A guide with z₂ ~ q(z₂ | z₁) (its mean λ·z₁): the score is removed by replaying the guide on
    the detached draws. 4000 draws: STL agrees with Trace_ELBO and DReG (k = 4) with RenyiELBO within
    4 standard errors, for the guide's and the model's parameters."""
    n = 4000
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731

    def model(x):
        w = pyro.param("w", full(0.8))
        with pyro.plate("data", n):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros_like(x), 1.0))
            z2 = pyro.sample("z2", dist.Normal(w * z1, 1.0))
            pyro.sample("x", dist.Normal(z1 + z2, 0.5), obs=x)

    def guide(x):
        m, lam = pyro.param("m", full(0.3)), pyro.param("lam", full(0.2))
        with pyro.plate("data", n):
            z1 = pyro.sample("z1", dist.Normal(m, 0.8))
            pyro.sample("z2", dist.Normal(lam * z1 + 0.1, 0.7))

    x = full(X)
    for ours, pyros in ((STL_ELBO(), Trace_ELBO()), (DReG_IWAE(**iwae(4)), RenyiELBO(alpha=0, **iwae(4)))):
        a, _ = draws(ours, model, guide, x, seed=0)
        b, _ = draws(pyros, model, guide, x, seed=1)
        for name in ("m", "lam", "w"):
            within_4_se(a[name], b[name], (type(ours).__name__, name))


def test_stl_guide_gradient_is_zero_at_the_posterior():
    """q = p(z|x): log p(x, z) − log q(z) = log p(x) for every z, so STL's guide gradient is 0
    (to rounding) on every draw; Trace_ELBO's is not."""
    a, b = 1.2, 0.3
    mu, log_sigma = a * (X - b) / (1 + a * a), -0.5 * math.log(1 + a * a)
    model, guide, x = gaussian_pair(200, a=a, b=b, mu=mu, log_sigma=log_sigma)
    stl, _ = draws(STL_ELBO(), model, guide, x)
    standard, _ = draws(Trace_ELBO(), model, guide, x)
    for name in GUIDE:
        assert stl[name].abs().max() < 1e-12, name
        assert standard[name].abs().max() > 0.1, name


def test_stl_guide_gradient_is_zero_at_the_posterior_of_dependent_sites():
    """z₁ ~ N(0, 1), z₂ | z₁ ~ N(w z₁, 1), x ~ N(z₁ + z₂, 0.5²); the guide q(z₁) q(z₂ | z₁) set to
    the exact posterior (a 2-d Gaussian, computed here): STL's guide gradient is 0 on every draw,
    which needs the score of the joint q removed with z₁ detached inside q(z₂ | z₁) too (the
    guide replayed on the detached draws), not each site's density at its own detached value."""
    w, noise = 0.8, 0.5
    prior_cov = torch.tensor([[1.0, w], [w, w * w + 1.0]], dtype=torch.float64)
    h = torch.ones(2, dtype=torch.float64)
    cov = torch.linalg.inv(torch.linalg.inv(prior_cov) + torch.outer(h, h) / noise ** 2)
    mean = cov @ h * X / noise ** 2
    lam = cov[1, 0] / cov[0, 0]
    init = {"m1": mean[0], "log_s1": cov[0, 0].sqrt().log(), "lam": lam, "m0": mean[1] - lam * mean[0],
            "log_s2": (cov[1, 1] - cov[1, 0] ** 2 / cov[0, 0]).sqrt().log()}

    def model(x):
        with pyro.plate("data", 200):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros_like(x), 1.0))
            z2 = pyro.sample("z2", dist.Normal(w * z1, 1.0))
            pyro.sample("x", dist.Normal(z1 + z2, noise), obs=x)

    def guide(x):
        p = {name: pyro.param(name, value.clone()) for name, value in init.items()}
        with pyro.plate("data", 200):
            z1 = pyro.sample("z1", dist.Normal(p["m1"], p["log_s1"].exp()).expand([200]))
            pyro.sample("z2", dist.Normal(p["lam"] * z1 + p["m0"], p["log_s2"].exp()))

    x = torch.full((200,), X, dtype=torch.float64)
    stl, _ = draws(STL_ELBO(), model, guide, x)
    standard, _ = draws(Trace_ELBO(), model, guide, x)
    for name in init:
        assert stl[name].abs() < 1e-10, (name, stl[name])
        assert standard[name].abs() > 0.1, (name, standard[name])


# --- use: SVI, the trainer's scale, make_elbo, refusals -------------------------------------------

@pytest.mark.parametrize("elbo", [STL_ELBO(), DReG_IWAE(**iwae(4))])
def test_svi_lowers_the_loss_under_a_minibatch_scale(elbo):
    """20 Adam steps on a tiny VAE under poutine.scale(·, 10): the mean loss of the last 5 steps is
    below that of the first 5; differentiable_loss has loss's value and loss_and_grads' gradient."""
    pyro.set_rng_seed(0)
    vae = pyrovae.VAE(6, 2, hidden=(8,)).double()
    x = (torch.rand(16, 6, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    pair = [poutine.scale(fn, 10.0) for fn in (vae.model, vae.guide)]
    svi = SVI(*pair, Adam({"lr": 0.05}), elbo)
    losses = [svi.step(x) for _ in range(20)]
    assert sum(losses[-5:]) < sum(losses[:5]) - 5.0, losses
    params = list(vae.parameters())
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(*pair, x)
    grads = torch.autograd.grad(loss, params)
    pyro.set_rng_seed(3)
    for p in params:
        p.grad = None
    assert loss.item() == pytest.approx(elbo.loss_and_grads(*pair, x), rel=1e-12)
    for g, p in zip(grads, params):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)


def test_non_reparameterized_guide_site_is_refused():
    def model(x):
        with pyro.plate("data", 3):
            pyro.sample("flip", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.4))
        with pyro.plate("data", 3):
            pyro.sample("flip", dist.Bernoulli(p))

    for elbo in (STL_ELBO(), DReG_IWAE(**iwae(2))):
        with pytest.raises(PairError, match="guide site 'flip'.*Bernoulli.*no rsample"):
            elbo.loss(model, guide, torch.zeros(3))


def test_make_elbo_gradient():
    assert type(make_elbo("trace", gradient="stl")) is STL_ELBO
    dreg = make_elbo("iwae", num_particles=5, gradient="dreg")
    assert type(dreg) is DReG_IWAE and dreg.num_particles == 5 and dreg.vectorize_particles
    assert type(make_elbo("trace", gradient="standard")) is Trace_ELBO
    with pytest.raises(ConfigError, match="gradient 'dreg' is for elbo 'iwae', got elbo 'trace'"):
        make_elbo("trace", gradient="dreg")
    with pytest.raises(ConfigError, match="gradient 'stl' is for elbo 'trace', got elbo 'mean-field'"):
        make_elbo("mean-field", gradient="stl")
    with pytest.raises(ConfigError, match="gradient 'stl' is for elbo 'trace', got elbo a Trace_ELBO instance"):
        make_elbo(Trace_ELBO(), gradient="stl")
    with pytest.raises(ConfigError, match="gradient must be one of standard, stl, dreg, got 'sticky'"):
        make_elbo("trace", gradient="sticky")
