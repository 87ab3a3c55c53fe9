"""Any pair's arguments: model(x, y) by tuple, model(xs=..., ys=...) by dict, plates without a
size, global sites left unscaled, and pairs whose code cannot run vectorized particles."""
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

import pyrovae
from pyrovae.inference.train import ScaleData, Trainer

D, L, K = 6, 2, 3   # data, latent and label sizes


class CVAE(nn.Module):
    """A conditional VAE written as Pyro's CVAE example writes it: model(xs, ys), ``pyro.plate("data")``
    without a size; y one-hot [B, K]."""

    def __init__(self):
        super().__init__()
        self.dec, self.enc = nn.Linear(L + K, D), nn.Linear(D + K, 2 * L)

    def model(self, xs, ys):
        pyro.module("dec", self.dec)
        with pyro.plate("data"):
            z = pyro.sample("z", dist.Normal(xs.new_zeros(xs.shape[0], L), 1.0).to_event(1))
            ys_ = ys.expand(z.shape[:-1] + ys.shape[-1:])
            loc = self.dec(torch.cat([z, ys_], -1))
            pyro.sample("x", dist.Normal(loc, 0.5).to_event(1), obs=xs)

    def guide(self, xs, ys):
        pyro.module("enc", self.enc)
        loc, s = self.enc(torch.cat([xs, ys], -1)).chunk(2, -1)
        with pyro.plate("data"):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(s) + 1e-3).to_event(1))


def cvae_data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys = nn.functional.one_hot(torch.randint(0, K, (n,), generator=g), K).float()
    xs = torch.randn(n, D, generator=g) + 2 * ys @ torch.randn(K, D, generator=g)
    return xs, ys


def test_estimators_take_the_models_arguments_and_equal_trace_elbo():
    cvae, (xs, ys) = CVAE(), cvae_data(16)
    pyro.set_rng_seed(3)
    ours = pyrovae.mc_elbo(cvae.model, cvae.guide, xs, ys, num_particles=5)
    pyro.set_rng_seed(3)
    pyros = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1).loss(cvae.model, cvae.guide, xs, ys)
    assert ours.shape == (16,)
    assert ours.sum().item() == pytest.approx(-pyros, rel=1e-5)
    by_name = pyrovae.mc_elbo(cvae.model, cvae.guide, xs=xs, ys=ys, num_particles=3)
    assert by_name.shape == (16,) and torch.isfinite(by_name).all()
    iw = pyrovae.iwae_bound(cvae.model, cvae.guide, xs, ys, num_samples=200)
    elbo = pyrovae.mc_elbo(cvae.model, cvae.guide, xs, ys, num_particles=200)
    assert (iw >= elbo - 1e-4).all()  # log-mean-exp ≥ mean, draw by draw


def test_options_are_keyword_only():
    cvae, (xs, ys) = CVAE(), cvae_data(8)
    with pytest.raises(pyrovae.errors.InputTypeError, match=r"write num_particles=10 \(options are keyword-only"):
        pyrovae.mc_elbo(cvae.model, cvae.guide, xs, ys, 10)


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_train_a_two_argument_pair_from_a_tuple_or_a_dict(form):
    cvae, (xs, ys) = CVAE(), cvae_data()
    data = (xs, ys) if form == "tuple" else {"xs": xs, "ys": ys}
    test = (xs[:50], ys[:50]) if form == "tuple" else {"xs": xs[:50], "ys": ys[:50]}
    rows = pyrovae.train(cvae.model, cvae.guide, data, test_data=test, epochs=30, batch_size=50, lr=0.02,
                         elbo="mean-field", seed=0, progress=False)
    assert rows[-1]["train_elbo"] > rows[0]["train_elbo"] + 1.0
    # per datapoint, the scale undone: 6 Gaussian dimensions of sd 0.5 score about −6 nats at best
    assert -30 < rows[-1]["test_elbo"] < 0
    assert rows[-1]["test_elbo"] == pytest.approx(rows[-1]["reconstruction"] - rows[-1]["kl"], rel=1e-5)


def test_a_minibatch_of_a_plate_without_size_is_scaled_and_a_global_site_is_not():
    """ScaleData: sites over the batch × N/B, global ones × 1 — the minibatch loss is then an unbiased
    estimate of the whole data set's, checked here exactly on the log-densities of one trace."""
    xs = torch.randn(40, 3)

    def model(xs):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))          # global
        with pyro.plate("data"):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([3]).to_event(1), obs=xs)

    n, b = 1000, 40
    trace = poutine.trace(ScaleData(n / b, b)(model)).get_trace(xs)
    trace.compute_log_prob()
    assert trace.nodes["mu"]["scale"] == 1.0 and trace.nodes["x"]["scale"] == pytest.approx(n / b)


def test_a_subsampled_plate_is_left_to_pyro():
    def model(xs):
        with pyro.plate("data", 1000, subsample=torch.arange(40)):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1), obs=xs)

    trace = poutine.trace(ScaleData(1000 / 40, 40)(model)).get_trace(torch.randn(40, 3))
    assert trace.nodes["x"]["scale"] == pytest.approx(1000 / 40)  # Pyro's own scale, not squared


def test_the_trainers_step_is_the_whole_data_sets_loss_per_datapoint():
    """One step's reported loss = the full-data loss per datapoint of the same parameters, in
    expectation: with a deterministic pair (no latent) exactly."""
    x = torch.randn(300, 2)

    def model(x):
        m = pyro.param("m", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(m, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    trainer = Trainer(model, guide, x, batch_size=60, lr=1e-9, elbo="trace", num_particles=1, test_data=None,
                      device="cpu")
    batch = x[:60]
    expected = -dist.Normal(torch.zeros(2), 1.0).log_prob(batch).sum(-1).mean().item()
    assert trainer.step((batch,), {}) == pytest.approx(expected, rel=1e-6)


class MaskedPair(nn.Module):
    """Observes x where ``mask`` is set, by indexing — code that cannot run vectorized particles."""

    def __init__(self, indexing=True):
        super().__init__()
        self.indexing, self.dec, self.enc = indexing, nn.Linear(L, D), nn.Linear(D, L)

    def model(self, x, mask):
        pyro.module("dec", self.dec)
        B = x.shape[0]
        with pyro.plate("data", B):
            z = pyro.sample("z", dist.Normal(x.new_zeros(L), 1.0).to_event(1))
            loc = self.dec(z)
            if self.indexing:
                pyro.sample("x", dist.Normal(loc[mask].view(B, -1), 1.0).to_event(1), obs=x[mask].view(B, -1))
            else:
                pyro.sample("x", dist.Normal(loc, 1.0).mask(mask).to_event(1), obs=x)

    def guide(self, x, mask):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.enc(x * mask), 1.0).to_event(1))


def test_a_pair_that_cannot_vectorize_runs_its_particles_one_at_a_time():
    torch.manual_seed(0)
    x = torch.randn(12, D)
    mask = torch.zeros(12, D, dtype=torch.bool)
    mask[:, :4] = True                      # four observed dimensions in every row
    pair = MaskedPair()
    with pytest.warns(UserWarning, match="cannot run its particles vectorized"):
        seq = pyrovae.log_weights(pair.model, pair.guide, x, mask, num_particles=400)
    assert seq.shape == (400, 12) and torch.isfinite(seq).all()
    # the same ELBO by a masked twin (no indexing; vectorizes), and by a closed form of each draw's mean
    twin = MaskedPair(indexing=False)
    twin.load_state_dict(pair.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # the twin vectorizes: no warning
        vec = pyrovae.log_weights(twin.model, twin.guide, x, mask, num_particles=400)
    se = (seq.var(0) / 400 + vec.var(0) / 400).sqrt()
    assert ((seq.mean(0) - vec.mean(0)).abs() <= 4 * se).all()


def test_any_pyro_elbo_instance_trains():
    cvae, (xs, ys) = CVAE(), cvae_data()
    elbo = pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1)
    rows = pyrovae.train(cvae.model, cvae.guide, (xs, ys), epochs=2, batch_size=100, elbo=elbo, progress=False)
    assert len(rows) == 2 and math.isfinite(rows[-1]["train_elbo"])


def test_an_extra_term_adds_its_own_scaled_elbo_to_each_step():
    """Two data sets, one deterministic pair each (no latents): one step's loss is exactly the
    sum of both full-data losses' minibatch estimates, each scaled to its own N, the extra one
    weighted — and the extra term's parameter is trained."""
    a, b = torch.randn(300, 2), torch.randn(50, 2) + 3

    def model_a(x):
        m = pyro.param("m", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(m, 1.0).to_event(1), obs=x)

    def model_b(x):
        m, s = pyro.param("m", torch.zeros(2)), pyro.param("s", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(m + s, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    extra = pyrovae.Term(model_b, guide, b, batch_size=10, weight=0.5)
    trainer = Trainer(model_a, guide, a, batch_size=60, lr=1e-9, elbo="trace", num_particles=1, test_data=None,
                      device="cpu", extra=[extra])
    assert sorted(trainer.params) == ["m", "s"]
    loss = trainer.step((a[:60],), {})
    nll = lambda x: -dist.Normal(torch.zeros(2), 1.0).log_prob(x).sum()
    first_b = trainer.extra[0].data.lead.order(1)[:10]   # the extra term's first minibatch
    expected = (300 / 60 * nll(a[:60]) + 0.5 * 50 / 10 * nll(b[first_b])) / 300
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    pyrovae.train(model_a, guide, a, epochs=40, batch_size=60, lr=0.1, progress=False, extra=[extra])
    assert pyro.param("s").detach().sub(3 - a.mean(0)).abs().max() < 0.5   # m fits a, m + s fits b


def test_training_a_pair_that_cannot_vectorize_falls_back_to_one_particle_at_a_time():
    torch.manual_seed(0)
    x = torch.randn(60, D)
    mask = torch.zeros(60, D, dtype=torch.bool)
    mask[:, :4] = True
    pair = MaskedPair()
    with pytest.warns(UserWarning, match="training runs them one at a time"):
        rows = pyrovae.train(pair.model, pair.guide, (x, mask), epochs=3, batch_size=20, num_particles=4,
                             lr=0.01, progress=False)
    assert len(rows) == 3 and all(math.isfinite(r["train_elbo"]) for r in rows)
