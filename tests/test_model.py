"""The VAE model/guide pair: every component combination trains, bad input fails clearly."""
import itertools

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn

from pyrovae import GUIDES, LIKELIHOODS, PRIORS, VAE
from pyrovae.components.priors import Prior

SHAPE = (6, 5)
ELBOS = {
    "trace": lambda: Trace_ELBO(),
    "mean-field": lambda: TraceMeanField_ELBO(),
    "iwae": lambda: RenyiELBO(alpha=0, num_particles=3),
    "graph": lambda: TraceGraph_ELBO(),
}
SMALL = {"mixture": {"components": 3}, "vamp": {"components": 3}}


def batch(n=5):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("prior,likelihood,guide",
                         list(itertools.product(PRIORS.names(), LIKELIHOODS.names(), GUIDES.names())))
def test_every_combination_takes_an_svi_step_with_every_elbo(prior, likelihood, guide):
    vae = VAE(SHAPE, 3, hidden=(8,), prior=prior, likelihood=likelihood, guide=guide,
              prior_options=SMALL.get(prior))
    x = torch.round(batch() * 255) / 255  # 8-bit levels k/255: in every likelihood's support
    for make in ELBOS.values():
        pyro.clear_param_store()
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), make())
        before = [p.detach().clone() for p in vae.parameters()]
        loss = svi.step(x)
        assert torch.isfinite(torch.tensor(loss))
        moved = sum(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))
        assert moved > 0


def test_training_learns_structure():
    """Two binary prototypes with 5% of pixels flipped: the entropy is log 2 + 30 H(0.05) ≈ 6.7
    nats per datapoint, against 30 log 2 ≈ 20.8 for coin flips. SVI must get well below the latter."""
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(2, *SHAPE, generator=g) > 0.5).float()
    labels = torch.randint(0, 2, (128,), generator=g)
    flips = (torch.rand(128, *SHAPE, generator=g) < 0.05).float()
    x = (protos[labels] - flips).abs()
    torch.manual_seed(0)
    vae = VAE(SHAPE, 2, hidden=(32,))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), TraceMeanField_ELBO())
    losses = [svi.step(x) / len(x) for _ in range(300)]
    assert sum(losses[-20:]) / 20 < 12.0, losses[-1]


def test_describe_in_notation():
    vae = VAE((28, 28), 50)
    text = str(vae)
    assert "p(z)   = N(0, I_50)" in text
    assert "p(x|z) = Bernoulli(sigmoid(f_θ(z)))" in text
    assert "q(z|x) = N(μ_φ(x), diag σ²_φ(x))" in text
    assert all(line in repr(vae) for line in vae.describe().splitlines())


def test_what_a_trained_vae_is_used_for():
    vae = VAE((28, 28), 2, likelihood="gaussian-decoder")
    x = torch.rand(7, 28, 28)
    q = vae.encode(x)
    assert q["loc"].shape == (7, 2) and (q["scale"] > 0).all()
    p = vae.decode(q["loc"])
    assert p["loc"].shape == (7, 28, 28) and (p["scale"] >= 0.01).all()
    assert vae.reconstruct(x).shape == x.shape
    assert vae.sample(4).shape == (4, 28, 28)
    assert vae.sample(3, mean=False).shape == (3, 28, 28)


def test_bernoulli_sample_is_binary_and_mean_is_a_probability():
    vae = VAE(10, 2, hidden=(8,))
    s = vae.sample(50, mean=False)
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    m = vae.sample(50)
    assert (m >= 0).all() and (m <= 1).all()


def test_conv_networks():
    vae = VAE((28, 28), 4, net="conv", likelihood="gaussian-decoder")
    x = torch.rand(3, 28, 28)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO(num_particles=2, vectorize_particles=True))
    assert torch.isfinite(torch.tensor(svi.step(x)))
    assert vae.reconstruct(x).shape == x.shape


def test_user_networks_and_user_prior_object():
    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(30, 12)

        def forward(self, x):
            return torch.tanh(self.lin(x.flatten(-2)))

    class StudentT(Prior):
        def forward(self):
            return pyro.distributions.StudentT(3.0, self.zero.expand(self.latent_dim), 1.0).to_event(1)

    dec = nn.Linear(3, 30)  # flat output P·D, reshaped by the VAE
    vae = VAE(SHAPE, 3, encoder=Enc(), decoder=dec, prior=StudentT(3))
    assert vae.family.feature_dim == 12
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    assert torch.isfinite(torch.tensor(svi.step(batch())))


def test_minibatch_scaled_to_data_set_size():
    vae = VAE(SHAPE, 3, hidden=(8,), num_data=1000)
    x = batch(10)
    pyro.set_rng_seed(1)
    scaled = Trace_ELBO().loss(vae.model, vae.guide, x)
    vae.num_data = None
    pyro.set_rng_seed(1)
    plain = Trace_ELBO().loss(vae.model, vae.guide, x)
    assert scaled == pytest.approx(plain * 100, rel=1e-5)


def test_minibatch_scale_follows_each_batch_size():
    """Alternating batch sizes, each trace has its own plate size and minibatch scale num_data / batch."""
    vae = VAE(SHAPE, 3, hidden=(8,), num_data=120)
    for n in (10, 6, 10, 8, 6):
        tr = poutine.trace(poutine.replay(vae.model, trace=poutine.trace(vae.guide).get_trace(batch(n)))).get_trace(batch(n))
        for name in ("z", "x"):
            assert tr.nodes[name]["scale"] == pytest.approx(120 / n)
            assert tr.nodes[name]["cond_indep_stack"][0].size == n
            assert tr.nodes[name]["fn"].batch_shape == (n,)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("x,match", [
    (torch.rand(4, 5, 6), r"shape \[batch, 6, 5\], got \[4, 5, 6\]"),
    (torch.rand(30), r"shape \[batch, 6, 5\], got \[30\]"),
    (torch.full((2, 6, 5), float("nan")), "finite, got 60 NaN/Inf"),
    (torch.full((2, 6, 5), 2.0), r"\[0, 1\] for the bernoulli likelihood.*\[2, 2\]"),
    (-torch.rand(2, 6, 5), r"\[0, 1\]"),
    (torch.ones(2, 6, 5, dtype=torch.long), "floating-point"),
])
def test_bad_data_raises_value_error_naming_it(x, match):
    vae = VAE(SHAPE, 3, hidden=(8,))
    for program in (vae.model, vae.guide):
        with pytest.raises(ValueError, match=match):
            program(x)


def test_non_tensor_data_is_a_type_error():
    with pytest.raises(TypeError, match="torch.Tensor"):
        VAE(SHAPE, 3).guide([[0.0] * 5] * 6)


def test_gaussian_accepts_real_values_outside_unit_interval():
    x = 5 * torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))  # far outside [0, 1]
    vae = VAE(SHAPE, 3, hidden=(8,), likelihood="gaussian")
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    assert guide_trace.nodes["z"]["value"].shape == (2, 3)
    assert torch.equal(model_trace.nodes["x"]["value"], x)
    assert torch.isfinite(model_trace.log_prob_sum()) and torch.isfinite(guide_trace.log_prob_sum())
    with pytest.raises(ValueError, match=r"\[0, 1\] for the bernoulli likelihood"):  # the default refuses them
        VAE(SHAPE, 3, hidden=(8,)).guide(x)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"latent_dim": 0}, ValueError, "latent_dim must be a positive integer, got 0"),
    ({"latent_dim": -3}, ValueError, "latent_dim"),
    ({"latent_dim": 2.5}, ValueError, "latent_dim"),
    ({"input_shape": (0, 3)}, ValueError, "input_shape"),
    ({"input_shape": "mnist"}, ValueError, "input_shape"),
    ({"prior": "gauss"}, ValueError, "unknown prior 'gauss'; expected one of laplace, learned-normal, mixture, normal, vamp"),
    ({"likelihood": "poisson"}, ValueError, "unknown likelihood 'poisson'; expected one of bernoulli"),
    ({"guide": "flowz"}, ValueError, "unknown guide 'flowz'; expected one of diagonal, fullrank, iaf, lowrank"),
    ({"net": "transformer"}, ValueError, "unknown net 'transformer'"),
    ({"activation": "swishy"}, ValueError, "unknown activation 'swishy'"),
    ({"prior": "mixture", "prior_options": {"components": 0}}, ValueError, "components must be a positive integer, got 0"),
    ({"prior": "vamp", "prior_options": {"components": -1}}, ValueError, "components"),
    ({"prior": "mixture", "prior_options": {"k": 3}}, ValueError, r"unknown option\(s\) \['k'\] for prior 'mixture'; valid options: components, init_scale"),
    ({"likelihood": "gaussian", "likelihood_options": {"scale": -1.0}}, ValueError, "scale must be a positive number"),
    ({"guide": "lowrank", "guide_options": {"rank": 0}}, ValueError, "rank"),
    ({"prior": 3}, TypeError, "prior must be a name"),
    ({"encoder": "mlp"}, TypeError, "encoder must be an nn.Module, got str"),
    ({"decoder": nn.Linear(3, 7)}, ValueError, r"decoder output must end in \[1, 6, 5\] \(or 30 flat\).*got shape \[2, 7\]"),
    ({"encoder": nn.Identity()}, ValueError, r"encoder must map \[batch, 6, 5\] to \[batch, features\]"),
    ({"net": "conv"}, ValueError, r"conv networks cannot fit input_shape \(6, 5\)"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, error, match):
    args = {"input_shape": SHAPE, "latent_dim": 3, **kwargs}
    with pytest.raises(error, match=match):
        VAE(args.pop("input_shape"), args.pop("latent_dim"), **args)


def test_a_checked_batch_modified_in_place_is_checked_again():
    vae = VAE(SHAPE, 3, hidden=(8,))
    x = batch()
    vae.guide(x)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        vae.model(x)
