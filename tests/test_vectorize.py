"""Vectorized particles are checked against the same draws run one at a time before they are trusted.

A decoder with ``nn.BatchNorm1d(W)`` after its first layer does not broadcast over a leading
particle dimension: at batch size B = W it reads ``[particles, B, W]`` as (N, C, L) and runs
without an error, normalising over the wrong axes. The estimators must still give the number of
Pyro's own ELBOs run one particle at a time (``vectorize_particles=False``), within 4 standard
errors, at B = W and at B = W ± 1 (where the vectorized run fails outright), in evaluation and in
training mode.
"""
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn
from torch.nn.functional import softplus

from pyrovae import analytic_elbo, mc_elbo
from pyrovae.inference.elbos import innermost
from pyrovae.inference.estimators import log_weights
from pyrovae.inference.state import Snapshot, modules_of
from pyrovae.inference.vectorize import particles_agree

WIDTH, D, L = 8, 3, 2


class BatchNormDecoder(nn.Module):
    """z ~ N(0, I), x | z ~ N(f(z), 1) with f = Linear → BatchNorm1d(WIDTH) → tanh → Linear; q(z|x) Gaussian."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Linear(D, 2 * L)
        self.decoder = nn.Sequential(nn.Linear(L, WIDTH), nn.BatchNorm1d(WIDTH), nn.Tanh(), nn.Linear(WIDTH, D))
        norm = self.decoder[1]
        with torch.no_grad():  # running statistics far from (0, 1): evaluation mode depends on them
            norm.running_mean.normal_(0, 2)
            norm.running_var.uniform_(0.2, 3.0)
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.normal_()

    def model(self, x):
        pyro.module("bn_decoder", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("bn_decoder", self)
        loc, scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, softplus(scale) + 0.1).to_event(1))


def data(n, seed=3):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def pyro_per_particle(elbo_class, pair, x, particles):
    """Pyro's ELBO of the batch (summed over it) for each of ``particles`` draws, one at a time."""
    elbo = elbo_class(num_particles=1, vectorize_particles=False)
    return torch.tensor([-elbo.loss(*pair, x) for _ in range(particles)])


def agree(ours, theirs):
    """|mean difference| within 4 standard errors (the two samples' errors combined)."""
    se = math.sqrt(ours.var().item() / len(ours) + theirs.var().item() / len(theirs))
    gap = abs(ours.mean().item() - theirs.mean().item())
    return gap <= 4 * se, f"{ours.mean().item():.3f} vs {theirs.mean().item():.3f} (4 SE = {4 * se:.3f})"


CASES = [pytest.param(batch, training, analytic, id=f"B={batch}-{'train' if training else 'eval'}-"
                      f"{'mean-field' if analytic else 'trace'}",
                      marks=pytest.mark.slow)
         for batch in (WIDTH - 1, WIDTH, WIDTH + 1) for training in (False, True) for analytic in (False, True)]


@pytest.mark.parametrize("batch, training, analytic", CASES)
def test_batch_norm_at_its_width_gives_pyros_number(batch, training, analytic):
    pyro.clear_param_store()
    net, x = BatchNormDecoder(), data(batch)
    net.train(training)
    pair = (net.model, net.guide)
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = log_weights(*pair, x, num_particles=200, analytic=analytic).sum(-1)
        pyro.set_rng_seed(0)
        estimate = (analytic_elbo if analytic else mc_elbo)(*pair, x, num_particles=200)
    assert torch.allclose(estimate.sum(), rows.mean(), rtol=1e-5)  # the estimator is the mean of these rows
    theirs = pyro_per_particle(TraceMeanField_ELBO if analytic else Trace_ELBO, pair, x, 200)
    ok, text = agree(rows, theirs)
    assert ok, text


def test_a_mismatch_warns_once_naming_the_pair_and_the_site():
    pyro.clear_param_store()
    net = BatchNormDecoder().eval()
    x = data(WIDTH)
    with pytest.warns(UserWarning, match=r"BatchNormDecoder.model/BatchNormDecoder.guide .*differ.*site 'x'"):
        assert not particles_agree(net.model, net.guide, (x,), {}, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not particles_agree(net.model, net.guide, (x,), {}, 1)  # cached: no second warning


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_the_check_leaves_parameters_buffers_modes_and_random_state(training):
    pyro.clear_param_store()
    net = BatchNormDecoder().train(training)
    net.decoder.insert(3, nn.Dropout(0.3))
    x = data(WIDTH)
    before = Snapshot(modules_of(net.model, net.guide))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        particles_agree(net.model, net.guide, (x,), {}, 1)
    after = Snapshot(modules_of(net.model, net.guide))
    assert [m.training for m in after.subs] == [m.training for m in before.subs]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(before.tensors, after.tensors))
    assert torch.equal(before.rng.cpu, after.rng.cpu)
    assert net.decoder[1].num_batches_tracked.item() == 0


@pytest.mark.parametrize("batch", [WIDTH, 2 * WIDTH])
def test_training_decides_vectorize_particles_by_the_same_check(batch):
    """At B = W the decoder's vectorized particles are wrong without an error: training runs them one
    at a time (with a warning). At another batch size the vectorized run fails outright: the same."""
    from pyrovae.inference.train import Trainer

    pyro.clear_param_store()
    net = BatchNormDecoder().train()
    x = data(batch)
    with pytest.warns(UserWarning, match="training runs them one at a time"):
        trainer = Trainer(net.model, net.guide, x, batch_size=batch, elbo="trace", num_particles=3, test_data=None,
                          device="cpu")
    assert isinstance(trainer.elbo, Trace_ELBO) and not trainer.elbo.vectorize_particles  # no fast step either
    assert math.isfinite(trainer.step((x,)))


def test_training_keeps_vectorized_particles_that_agree():
    from pyrovae.inference.train import Trainer

    pyro.clear_param_store()
    net = BatchNormDecoder().train()
    net.decoder[1] = nn.Identity()  # no BatchNorm: the decoder broadcasts over particles
    x = data(WIDTH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer = Trainer(net.model, net.guide, x, batch_size=WIDTH, elbo="trace", num_particles=3, test_data=None,
                          device="cpu")
        trainer.step((x,))
    assert innermost(trainer.elbo).vectorize_particles


class SqueezingPair(nn.Module):
    """A Bernoulli decoder that ends in ``.squeeze()``, as much user code does: right for any batch of
    B > 1 rows, vectorized or not, but a batch of one row vectorized (``[r, 1, D]``) loses its data
    dimension and Pyro refuses the shape, where the same row run one particle at a time is fine."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder, self.decoder = nn.Linear(D, 2 * L), nn.Linear(L, D)

    def model(self, x):
        pyro.module("squeezing", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(L), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z).squeeze()).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("squeezing", self)
        loc, scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, softplus(scale) + 0.1).to_event(1))


def test_training_checks_every_minibatch_shape():
    """Six rows in minibatches of five: the first minibatch's particles vectorize and agree, the last
    one (one row) cannot vectorize. Training checks that shape when it comes and runs its particles one
    at a time (one warning); the five-row minibatches stay vectorized."""
    from pyrovae import train
    from pyrovae.inference.train import Trainer

    pyro.clear_param_store()
    net = SqueezingPair()
    x = torch.bernoulli(torch.full((6, D), 0.4), generator=torch.Generator().manual_seed(1))
    trainer = Trainer(net.model, net.guide, x, batch_size=5, elbo="trace", num_particles=3, test_data=None,
                      device="cpu")
    assert innermost(trainer.elbo).vectorize_particles
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = train(net.model, net.guide, x, epochs=2, batch_size=5, num_particles=3, progress=False)
    said = [str(w.message) for w in caught if "one at a time" in str(w.message)]
    assert len(said) == 1 and "SqueezingPair.model" in said[0], said
    assert all(math.isfinite(row["train_elbo"]) for row in history)
