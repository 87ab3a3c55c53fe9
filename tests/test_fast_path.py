"""The training step's fast paths give the general path's numbers.

``MeanField_ELBO`` sums a Bernoulli likelihood in one fused kernel (``summed_log_density``) while
Pyro's validation is off; these tests hold it to Pyro's ``TraceMeanField_ELBO`` (same seed, same loss
and gradients, float64) on a pair written as in Pyro's VAE tutorial, and check that every case it
does not cover (a mask, a tensor scale, broadcasting, validated arguments, another distribution, a
subclass with its own ``log_prob``) falls back to the element-wise log-density.
"""
from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch import nn

from pyrovae.components.distributions import IndependentBernoulli
from pyrovae.inference.elbos import MeanField_ELBO
from pyrovae.inference.traces import summed_log_density
from pyrovae.inference.train import ScaleData, ScaleLatents

D, L, H = 7, 3, 5


def binary(n=9, seed=0):
    return torch.bernoulli(torch.full((n, D), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(seed))


def site(fn, value, scale=1.0, mask=None):
    return {"fn": fn, "value": value, "scale": scale, "mask": mask, "args": (), "kwargs": {}}


def general(s):
    """Σ s·log p, masked, the way Pyro's Trace.compute_log_prob sums it."""
    log_p = s["fn"].log_prob(s["value"])
    log_p = log_p if s["mask"] is None else log_p.masked_fill(~s["mask"], 0.0)
    return (log_p * s["scale"]).sum()


@pytest.mark.parametrize("given", ["logits", "probs"])
@pytest.mark.parametrize("events", [0, 1, 2])
def test_summed_log_density_equals_the_general_sum(given, events):
    x = binary().reshape(9, D, 1).expand(9, D, 2).contiguous()
    logits = torch.randn(9, D, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = {"logits": logits} if given == "logits" else {"probs": torch.sigmoid(logits)}
    fn = dist.Bernoulli(**params, validate_args=False).to_event(events)
    s = site(fn, x, scale=600.0 / 9)
    total = summed_log_density(s)
    assert total is not None and total.shape == ()
    assert total.item() == pytest.approx(general(s).item(), rel=1e-12)
    expected = (x * torch.log(torch.sigmoid(logits)) + (1 - x) * torch.log(torch.sigmoid(-logits))).sum() * 600 / 9
    assert total.item() == pytest.approx(expected.item(), rel=1e-10)  # the Bernoulli log-density itself


@pytest.mark.parametrize("x_kind", ["binary", "relaxed"])
@pytest.mark.parametrize("events", [1, 2])
def test_summed_log_density_of_pyrovaes_bernoulli(x_kind, events):
    """pyrovae's IndependentBernoulli (the built-in VAE's likelihood) sums in the same fused kernel, for
    binary x (where its log_prob takes −softplus((1 − 2x) l)) and intensities (BCE) alike."""
    g = torch.Generator().manual_seed(2)
    x = binary().reshape(9, D, 1).expand(9, D, 2).contiguous()
    x = x if x_kind == "binary" else torch.rand(x.shape, dtype=torch.float64, generator=g)
    logits = 3 * torch.randn(9, D, 2, dtype=torch.float64, generator=g)
    s = site(IndependentBernoulli(logits, events), x, scale=600.0 / 9)
    total = summed_log_density(s)
    assert total is not None and total.shape == ()
    assert total.item() == pytest.approx(general(s).item(), rel=1e-12)
    expected = (x * torch.log(torch.sigmoid(logits)) + (1 - x) * torch.log(torch.sigmoid(-logits))).sum() * 600 / 9
    assert total.item() == pytest.approx(expected.item(), rel=1e-10)
    particles = site(IndependentBernoulli(logits.expand(4, 9, D, 2), events), x)  # x broadcasts: the general way
    assert summed_log_density(particles) is None


class OwnLogProb(dist.Bernoulli):
    def log_prob(self, value):
        return super().log_prob(value) * 2


def test_summed_log_density_falls_back_where_it_does_not_apply():
    x, logits = binary(), torch.zeros(9, D, dtype=torch.float64)
    bern = dist.Bernoulli(logits=logits, validate_args=False).to_event(1)
    assert summed_log_density(site(bern, x)) is not None
    cases = {
        "mask": site(bern, x, mask=torch.arange(9) < 4),
        "tensor scale": site(bern, x, scale=torch.full((9,), 2.0, dtype=torch.float64)),
        "broadcast logits": site(dist.Bernoulli(logits=logits[:1], validate_args=False).to_event(1), x),
        "not a Bernoulli": site(dist.Normal(logits, 1.0).to_event(1), x),
        "own log_prob": site(OwnLogProb(logits=logits, validate_args=False).to_event(1), x),
    }
    for name, s in cases.items():
        assert summed_log_density(s) is None, name


def test_summed_log_density_of_a_validating_bernoulli_is_the_same_number_and_checks_the_data():
    """Pyro's validation (a run's first step): the fused sum still, and the support check still raises."""
    x, logits = binary(), torch.randn(9, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    quiet = summed_log_density(site(dist.Bernoulli(logits=logits, validate_args=False).to_event(1), x))
    assert torch.equal(summed_log_density(site(dist.Bernoulli(logits=logits, validate_args=True).to_event(1), x)), quiet)
    with pytest.raises(ValueError, match="support"):
        summed_log_density(site(dist.Bernoulli(logits=logits, validate_args=True).to_event(1), x * 0.5))


class TutorialPair(nn.Module):
    """Pyro's VAE tutorial in miniature: pyro.module, pyro.plate("data"), Normal prior, Bernoulli likelihood."""

    def __init__(self, given="logits", mask=None):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.dec = nn.Linear(D, 2 * L).double(), nn.Linear(L, D).double()
        self.given, self.mask = given, mask

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], L), x.new_ones(x.shape[0], L)).to_event(1))
            out = self.dec(z)
            params = {"logits": out} if self.given == "logits" else {"probs": torch.sigmoid(out)}
            with poutine.mask(mask=self.mask) if self.mask is not None else nullcontext():
                pyro.sample("obs", dist.Bernoulli(**params, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, s = self.enc(x).chunk(2, -1)
            pyro.sample("latent", dist.Normal(loc, torch.exp(s)).to_event(1))


def loss_and_grads(elbo, pair, x, params, validate):
    pyro.set_rng_seed(3)
    with pyro.validation_enabled(validate):
        loss = elbo.differentiable_loss(*pair, x)
    return loss.item(), torch.autograd.grad(loss, params)


def scaled(vae, beta=1.0):
    """The pair as the trainer wraps it: minibatch sites × N/B = 600/9, latent sites × β."""
    return [ScaleLatents(beta)(ScaleData(600.0 / 9, 9)(fn)) for fn in (vae.model, vae.guide)]


@pytest.mark.parametrize("given", ["logits", "probs"])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_tutorial_pair_has_pyros_loss_and_gradients(given, beta):
    vae = TutorialPair(given)
    params, x = list(vae.parameters()), binary()
    for validate in (False, True):  # the fast path, and the general one (validation on)
        ours = loss_and_grads(MeanField_ELBO(max_plate_nesting=1), scaled(vae, beta), x, params, validate)
        pyros = loss_and_grads(TraceMeanField_ELBO(max_plate_nesting=1), scaled(vae, beta), x, params, validate)
        assert ours[0] == pytest.approx(pyros[0], rel=1e-12)
        for a, b in zip(ours[1], pyros[1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mask", [None, "rows"])
def test_fast_path_taken_only_where_it_applies(mask):
    """Unmasked: x's log p is only summed (no element-wise log_prob kept); masked: the general path,
    which still gives Pyro's loss and gradients."""
    m = None if mask is None else torch.arange(9) < 5
    vae = TutorialPair(mask=m)
    with pyro.validation_enabled(False):
        model_trace, _ = MeanField_ELBO(max_plate_nesting=1)._get_trace(*scaled(vae), (binary(),), {})
    assert ("log_prob" in model_trace.nodes["obs"]) == (mask is not None)
    params, x = list(vae.parameters()), binary()
    ours = loss_and_grads(MeanField_ELBO(max_plate_nesting=1), scaled(vae), x, params, False)
    pyros = loss_and_grads(TraceMeanField_ELBO(max_plate_nesting=1), scaled(vae), x, params, False)
    assert ours[0] == pytest.approx(pyros[0], rel=1e-12)
    for a, b in zip(ours[1], pyros[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
