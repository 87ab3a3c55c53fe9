"""Discrete latents (issue 13 §2): guide sites marked for enumeration are summed exactly by the
estimators (as TraceEnum_ELBO sums them), others are sampled; sites only the model enumerates
are summed out of the joint; ``train(..., elbo="enum")``.

The pair is a small semi-supervised VAE written as Pyro's ss-vae example writes it: ``model(xs,
ys=None)`` with y ~ OneHotCategorical observed when ``ys`` is given, z ~ N(0, I), x ~ N(dec(z, y),
0.5² I); ``guide(xs, ys=None)`` samples y ~ q(y|x) when ``ys`` is None (enumerated under
``config_enumerate``), then z ~ q(z|x, y). The decoder is linear, so log p(x) has a closed form:
x | y ~ N(W_y y + b, W_z W_zᵀ + 0.25 I), and log p(x) = logsumexp_y [log p(y) + log p(x|y)]. A
variant without z (``latent=False``) has no continuous latent: every enumerated estimate is exact.
"""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from torch import nn

import pyrovae
from pyrovae.errors import PairError
from pyrovae.inference import estimators
from pyrovae.inference.estimators import log_weights
from pyrovae.inference.elbos import innermost
from pyrovae.inference.train import Trainer

D, K, L, B = 6, 3, 2, 16   # data, classes, latent, batch
F64 = torch.float64


def bcat(*tensors):
    """Concatenate along the last dimension, broadcasting the others (enumerated y is [K, 1, 1, K])."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], -1)


class SemiSupervised(nn.Module):
    """M2 of Kingma et al. (2014), small; ``latent=False`` drops z (y is then the only latent)."""

    def __init__(self, latent: bool = True, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.latent = latent
        self.dec, self.enc_y, self.enc_z = nn.Linear(L + K, D), nn.Linear(D, K), nn.Linear(D + K, 2 * L)
        with torch.no_grad():  # classes well apart: q(y|x) matters
            self.dec.weight.mul_(3.0)
        self.double()

    def model(self, xs, ys=None):
        pyro.module("ss", self)
        with pyro.plate("data", xs.shape[0]):
            ys = pyro.sample("y", dist.OneHotCategorical(logits=xs.new_zeros(K)), obs=ys)
            z = pyro.sample("z", dist.Normal(xs.new_zeros(L), 1.0).to_event(1)) if self.latent else xs.new_zeros(L)
            pyro.sample("x", dist.Normal(self.dec(bcat(z, ys)), 0.5).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        """y sampled (no enumeration)."""
        pyro.module("ss", self)
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.enc_y(xs)))
            if self.latent:
                loc, s = self.enc_z(bcat(xs, ys)).chunk(2, -1)
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(s) + 0.1).to_event(1))

    @config_enumerate
    def guide_enum(self, xs, ys=None):
        """The same guide with y enumerated (infer={"enumerate": "parallel"})."""
        return self.guide(xs, ys)

    @torch.no_grad()
    def near_exact_encoders(self, temper=0.5, widen=1.2):
        """Encoders near the exact posterior (the decoder is linear-Gaussian): q(z|x, y) with the
        exact mean and ``widen`` × the exact marginal standard deviations; q(y|x) with ``temper`` ×
        the exact logits (x | y has one covariance for all y: the logits are linear in x)."""
        W, b = self.dec.weight, self.dec.bias
        Wz, Wy = W[:, :L], W[:, L:]
        if self.latent:
            cov = torch.linalg.inv(torch.eye(L, dtype=F64) + Wz.T @ Wz / 0.25)
            A = cov @ Wz.T / 0.25                                                   # [L, D]
            std = (widen * cov.diagonal().sqrt()).clamp(min=0.11)
            self.enc_z.weight.zero_()
            self.enc_z.weight[:L] = torch.cat([A, -A @ Wy], 1)
            self.enc_z.bias[:L] = -A @ b
            self.enc_z.bias[L:] = (std - 0.1).expm1().log()                         # softplus⁻¹
        P = torch.linalg.inv(0.25 * torch.eye(D, dtype=F64) + (Wz @ Wz.T if self.latent else 0.0))
        means = (Wy + b.unsqueeze(-1)).T                                               # [K, D]
        self.enc_y.weight.copy_(temper * means @ P)
        self.enc_y.bias.copy_(temper * -0.5 * ((means @ P) * means).sum(-1))
        return self

    @torch.no_grad()
    def sample(self, n, seed=1):
        """n datapoints drawn from the model."""
        g = torch.Generator().manual_seed(seed)
        ys = nn.functional.one_hot(torch.randint(0, K, (n,), generator=g), K).to(F64)
        z = torch.randn(n, L, generator=g, dtype=F64) if self.latent else torch.zeros(n, L, dtype=F64)
        return self.dec(bcat(z, ys)) + 0.5 * torch.randn(n, D, generator=g, dtype=F64)

    @torch.no_grad()
    def log_px(self, xs):
        """Exact log p(x), [batch]."""
        W, b = self.dec.weight, self.dec.bias
        Wz, Wy = W[:, :L], W[:, L:]
        cov = 0.25 * torch.eye(D, dtype=F64) + (Wz @ Wz.T if self.latent else 0.0)
        log_joint = torch.stack([dist.MultivariateNormal(Wy[:, k] + b, cov).log_prob(xs) for k in range(K)])
        return torch.logsumexp(log_joint, 0) - math.log(K)


MEANS = 3.0 * torch.randn(K, D, generator=torch.Generator().manual_seed(0), dtype=F64)


def data(n=B, seed=1):
    """(xs, ys): three Gaussian clusters in D dimensions, ys one-hot."""
    g = torch.Generator().manual_seed(seed)
    ys = nn.functional.one_hot(torch.randint(0, K, (n,), generator=g), K).to(F64)
    return ys @ MEANS + torch.randn(n, D, generator=g, dtype=F64), ys


def trace_enum(r):
    return TraceEnum_ELBO(max_plate_nesting=1, num_particles=r, vectorize_particles=r > 1)


# -- (1) the enumerated estimate is TraceEnum_ELBO's ------------------------------------------------
def test_enumerated_mc_elbo_is_trace_enum_elbo():
    """Same seed, same draws: Σ_i mc_elbo = −TraceEnum_ELBO.loss to float64 rounding; and over 30
    independent draws each, the means agree within 4 standard errors."""
    ss, (xs, _) = SemiSupervised(), data()
    r = 20
    with torch.no_grad():
        pyro.set_rng_seed(3)
        ours = pyrovae.mc_elbo(ss.model, ss.guide_enum, xs, num_particles=r)
        pyro.set_rng_seed(3)
        theirs = trace_enum(r).loss(ss.model, ss.guide_enum, xs)
    assert ours.shape == (B,)
    assert ours.sum().item() == pytest.approx(-theirs, rel=1e-10, abs=0)

    R = 30
    pyro.set_rng_seed(4)
    with torch.no_grad():
        a = torch.tensor([pyrovae.mc_elbo(ss.model, ss.guide_enum, xs, num_particles=r).sum().item() for _ in range(R)])
        b = -torch.tensor([trace_enum(r).loss(ss.model, ss.guide_enum, xs) for _ in range(R)], dtype=F64)
    se = math.sqrt(a.var().item() / R + b.var().item() / R)
    assert 0 < se and abs(a.mean().item() - b.mean().item()) < 4 * se, (a.mean(), b.mean(), se)


def test_without_a_continuous_latent_every_enumerated_estimate_is_exact():
    """y the only latent: mc_elbo = TraceEnum_ELBO's (deterministic) loss exactly, ELBO ≤ log p(x),
    and one importance sample with y summed out is log p(x) itself."""
    ss, (xs, _) = SemiSupervised(latent=False), data()
    with torch.no_grad():
        elbo = pyrovae.mc_elbo(ss.model, ss.guide_enum, xs)
        again = pyrovae.mc_elbo(ss.model, ss.guide_enum, xs, num_particles=7)
        iw = pyrovae.iwae_bound(ss.model, ss.guide_enum, xs, num_samples=1)
        sampled = pyrovae.mc_elbo(ss.model, ss.guide, xs)
    assert elbo.sum().item() == pytest.approx(-trace_enum(1).loss(ss.model, ss.guide_enum, xs), rel=1e-12, abs=0)
    torch.testing.assert_close(again, elbo, rtol=1e-12, atol=1e-12)          # no randomness left
    log_px = ss.log_px(xs)
    torch.testing.assert_close(iw, log_px, rtol=1e-10, atol=1e-10)
    assert (elbo < log_px - 1e-3).all()                                         # q(y|x) is not the posterior
    assert not torch.allclose(sampled, elbo)                                    # the sampled y is a draw


# -- (2) sampled y: the same expectation -----------------------------------------------------------
def test_sampled_discrete_latent_agrees_with_the_enumerated_one():
    """E_q(y)[...] summed exactly and estimated by sampling y: per datapoint within 4 standard errors.
    Encoders near the exact posterior, q(y|x) flattened (large entropy), data from the model: the
    noise is mostly y's, and the test has the power to see a wrong term of q(y)."""
    ss = SemiSupervised().near_exact_encoders(temper=0.2)
    xs = ss.sample(B)
    pyro.set_rng_seed(5)
    with torch.no_grad():
        sampled = log_weights(ss.model, ss.guide, xs, num_particles=4000)                           # [r, B]
        enum = torch.stack([pyrovae.mc_elbo(ss.model, ss.guide_enum, xs, num_particles=100) for _ in range(20)])
    se = (sampled.var(0) / sampled.shape[0] + enum.var(0) / enum.shape[0]).sqrt()
    gap = sampled.mean(0) - enum.mean(0)
    assert (gap.abs() < 4 * se).all(), (gap / se)
    se_sum = se.pow(2).sum().sqrt()
    assert gap.sum().abs() < 4 * se_sum, (gap.sum(), se_sum)
    # the test's power: leaving out q(y|x)'s entropy (−log q of the enumerated y) would miss by > 20 SE
    entropy = dist.OneHotCategorical(logits=ss.enc_y(xs)).entropy().sum()
    assert entropy > 20 * se_sum, (entropy, se_sum)
    # and summing y out leaves less noise per particle than sampling it
    assert (100 * enum.var(0) < sampled.var(0)).all()


# -- (3) importance weights ------------------------------------------------------------------------
def test_iwae_with_a_discrete_latent_is_above_the_elbo_and_reaches_log_px():
    """Encoders near the exact posterior (so that 5000 samples suffice), data from the model."""
    ss = SemiSupervised().near_exact_encoders()
    xs = ss.sample(B)
    log_px = ss.log_px(xs)
    k = 64
    lw = {}
    with torch.no_grad():
        for name in ("guide", "guide_enum"):    # draw by draw: the same seed, the same draws
            g = getattr(ss, name)
            iw = _seeded(6, pyrovae.iwae_bound, ss.model, g, xs, num_samples=k)
            elbo = _seeded(6, pyrovae.mc_elbo, ss.model, g, xs, num_particles=k)
            assert (iw >= elbo - 1e-10).all() and (iw > elbo + 1e-3).any(), name
            lw[name] = _seeded(6, log_weights, ss.model, g, xs, num_particles=k)                     # [k, B]
            torch.testing.assert_close(iw, torch.logsumexp(lw[name], 0) - math.log(k), rtol=0, atol=1e-10)
        # in expectation: IWAE_k of sampled y well above the ELBO (exact in y), both below log p(x)
        elbo = pyrovae.mc_elbo(ss.model, ss.guide_enum, xs, num_particles=4000)
        draws = torch.stack([pyrovae.iwae_bound(ss.model, ss.guide, xs, num_samples=k) for _ in range(8)])   # [8, B]
        se = (draws.var(0).sum() / draws.shape[0]).sqrt() / B
        big = {name: pyrovae.iwae_bound(ss.model, getattr(ss, name), xs, num_samples=5000)
               for name in ("guide", "guide_enum")}
    assert draws.mean() - elbo.mean() > 4 * se + 0.05, (draws.mean(), elbo.mean(), se)
    assert (elbo < log_px).all() and (log_px - elbo).mean() > 0.1
    for name, bound in big.items():
        gap = log_px - bound
        assert gap.mean().abs() < 0.02 and gap.abs().max() < 0.1, (name, gap)
    # summing y out of each weight leaves less noise than sampling it
    assert lw["guide_enum"].var(0).sum() < lw["guide"].var(0).sum()


def _seeded(seed, fn, *args, **kwargs):
    pyro.set_rng_seed(seed)
    return fn(*args, **kwargs)


# -- (4) labeled data: nothing to enumerate --------------------------------------------------------
@pytest.mark.parametrize("guide", ["guide", "guide_enum"])
def test_labeled_mc_elbo_is_trace_elbo_per_datapoint(guide):
    ss, (xs, ys) = SemiSupervised(), data()
    g = getattr(ss, guide)
    pyro.set_rng_seed(7)
    ours = pyrovae.mc_elbo(ss.model, g, xs, ys, num_particles=5)
    pyro.set_rng_seed(7)
    theirs = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1).differentiable_loss(
        ss.model, g, xs, ys)
    assert ours.shape == (B,)
    torch.testing.assert_close(ours.sum(), -theirs, rtol=1e-10, atol=0)
    by_name = _seeded(7, pyrovae.mc_elbo, ss.model, g, xs=xs, ys=ys, num_particles=5)
    torch.testing.assert_close(by_name, ours, rtol=0, atol=0)


# -- the other estimators and paths ------------------------------------------------------------------
def test_elbo_parts_and_analytic_elbo_weigh_each_value_by_its_probability():
    """No z: reconstruction = Σ_y q(y|x) log p(x|y) and kl = KL(q(y|x) ‖ p(y)) exactly; with z,
    analytic_elbo (closed-form KL of z given each y) agrees with mc_elbo: the batch sum within 4
    standard errors, each datapoint within 5."""
    ss, (xs, _) = SemiSupervised(latent=False), data()
    with torch.no_grad():
        parts = pyrovae.elbo_parts(ss.model, ss.guide_enum, xs)
        q = dist.OneHotCategorical(logits=ss.enc_y(xs))
        p = dist.OneHotCategorical(logits=torch.zeros(K, dtype=F64))
        loc = ss.dec(bcat(torch.zeros(1, L, dtype=F64), torch.eye(K, dtype=F64)))                  # [K, D]
        recon = (q.probs * dist.Normal(loc, 0.5).log_prob(xs.unsqueeze(-2)).sum(-1)).sum(-1)
    torch.testing.assert_close(parts["reconstruction"], recon, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["kl"], torch.distributions.kl_divergence(q, p), rtol=1e-10, atol=1e-10)
    assert pyrovae.analytic_sites(ss.model, ss.guide_enum, xs) == []

    ss, (xs, _) = SemiSupervised(), data()
    assert pyrovae.analytic_sites(ss.model, ss.guide_enum, xs) == ["z"]
    pyro.set_rng_seed(8)
    with torch.no_grad():
        an = log_weights(ss.model, ss.guide_enum, xs, num_particles=2000, analytic=True)     # [r, B], per particle
        mc = torch.stack([pyrovae.mc_elbo(ss.model, ss.guide_enum, xs, num_particles=100) for _ in range(20)])
        parts = pyrovae.elbo_parts(ss.model, ss.guide_enum, xs, num_particles=100)
    se = (an.var(0) / an.shape[0] + mc.var(0) / mc.shape[0]).sqrt()
    gap = an.mean(0) - mc.mean(0)
    assert (gap.abs() < 5 * se).all() and gap.sum().abs() < 4 * se.pow(2).sum().sqrt(), (gap / se)
    torch.testing.assert_close(parts["elbo"], parts["reconstruction"] - parts["kl"])
    assert ((parts["elbo"] - an.mean(0)).abs() < 5 * (an.var(0) / 100).sqrt()).all()


def test_the_sequential_fallback_enumerates_too(monkeypatch):
    """Particles one at a time (what a pair that cannot vectorize gets): the same estimates."""
    exact, (xs, _) = SemiSupervised(latent=False), data()
    ss = SemiSupervised()
    with torch.no_grad():
        pyro.set_rng_seed(9)
        vec = torch.stack([pyrovae.mc_elbo(ss.model, ss.guide_enum, xs, num_particles=50) for _ in range(8)])
        monkeypatch.setattr(estimators, "_vectorized", lambda *a, **k: None)
        seq = torch.stack([pyrovae.mc_elbo(ss.model, ss.guide_enum, xs, num_particles=50) for _ in range(8)])
        iw = pyrovae.iwae_bound(exact.model, exact.guide_enum, xs, num_samples=3)
        elbo = pyrovae.mc_elbo(exact.model, exact.guide_enum, xs, num_particles=2)
    se_sum = (vec.var(0).sum() / 8 + seq.var(0).sum() / 8).sqrt()         # of the batch sums, stratified
    assert (vec.mean(0).sum() - seq.mean(0).sum()).abs() < 4 * se_sum, (vec.mean(0).sum(), seq.mean(0).sum(), se_sum)
    torch.testing.assert_close(iw, exact.log_px(xs), rtol=1e-10, atol=1e-10)
    assert elbo.sum().item() == pytest.approx(-trace_enum(1).loss(exact.model, exact.guide_enum, xs), rel=1e-12)


# -- sites the model enumerates ------------------------------------------------------------------------
def test_a_mixture_enumerated_in_the_model_with_an_empty_guide_is_exact():
    """k ~ Categorical(w) enumerated in the model, x | k ~ N(μ_k, σ_k²): every estimate is log p(x),
    and elbo_parts splits it into E_p(k|x)[log p(x|k)] − KL(p(k|x) ‖ p(k))."""
    g = torch.Generator().manual_seed(2)
    w = torch.softmax(torch.randn(K, generator=g, dtype=F64), 0)
    mu, sigma = 2 * torch.randn(K, D, generator=g, dtype=F64), 0.5 + torch.rand(K, D, generator=g, dtype=F64)
    xs = mu[torch.multinomial(w, B, True, generator=g)] + torch.randn(B, D, generator=g, dtype=F64)

    def model(xs):
        with pyro.plate("data", xs.shape[0]):
            k = pyro.sample("k", dist.Categorical(w), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(mu[k], sigma[k]).to_event(1), obs=xs)

    def guide(xs):
        pass

    log_lik = dist.Normal(mu, sigma).log_prob(xs.unsqueeze(-2)).sum(-1)                               # [B, K]
    log_px = torch.logsumexp(log_lik + w.log(), -1)
    post = (log_lik + w.log() - log_px.unsqueeze(-1)).exp()
    with torch.no_grad():
        elbo = pyrovae.mc_elbo(model, guide, xs, num_particles=3)
        iw = pyrovae.iwae_bound(model, guide, xs, num_samples=2)
        parts = pyrovae.elbo_parts(model, guide, xs)
    for estimate in (elbo, iw, parts["elbo"]):
        torch.testing.assert_close(estimate, log_px, rtol=1e-10, atol=1e-10)
    assert elbo.sum().item() == pytest.approx(-trace_enum(1).loss(model, guide, xs), rel=1e-12)
    torch.testing.assert_close(parts["reconstruction"], (post * log_lik).sum(-1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["kl"], (post * (post.log() - w.log())).sum(-1), rtol=1e-10, atol=1e-10)


def test_sites_enumerated_in_the_model_and_in_the_guide_together_are_trace_enum_elbo():
    """x | y, k, z ~ N(dec(z, y) + o_k, 0.5² I): y enumerated in the guide, k in the model (absent
    from the guide), z sampled; the same draws give TraceEnum_ELBO's loss. Without z, one importance
    sample is log p(x) = logsumexp_{y,k} log p(x, y, k)."""
    offsets = 2 * torch.randn(2, D, generator=torch.Generator().manual_seed(5), dtype=F64)

    def pair(ss):
        def model(xs):
            with pyro.plate("data", xs.shape[0]):
                ys = pyro.sample("y", dist.OneHotCategorical(logits=xs.new_zeros(K)))
                k = pyro.sample("k", dist.Categorical(logits=xs.new_zeros(2)), infer={"enumerate": "parallel"})
                z = pyro.sample("z", dist.Normal(xs.new_zeros(L), 1.0).to_event(1)) if ss.latent else xs.new_zeros(L)
                pyro.sample("x", dist.Normal(ss.dec(bcat(z, ys)) + offsets[k], 0.5).to_event(1), obs=xs)
        return model, ss.guide_enum

    ss, (xs, _) = SemiSupervised(), data()
    model, guide = pair(ss)
    with torch.no_grad():
        ours = _seeded(3, pyrovae.mc_elbo, model, guide, xs, num_particles=10)
        theirs = _seeded(3, trace_enum(10).loss, model, guide, xs)
    assert ours.sum().item() == pytest.approx(-theirs, rel=1e-10, abs=0)

    exact = SemiSupervised(latent=False)
    model, guide = pair(exact)
    W, b = exact.dec.weight.detach(), exact.dec.bias.detach()
    loc = (W[:, L:].T + b).unsqueeze(1) + offsets                                                 # [y, k, D]
    log_px = torch.logsumexp(dist.Normal(loc, 0.5).log_prob(xs[:, None, None]).sum(-1).flatten(1), -1) - math.log(2 * K)
    with torch.no_grad():
        iw = pyrovae.iwae_bound(model, guide, xs, num_samples=1)
        elbo = pyrovae.mc_elbo(model, guide, xs)
        parts = pyrovae.elbo_parts(model, guide, xs)
    torch.testing.assert_close(iw, log_px, rtol=1e-10, atol=1e-10)
    assert elbo.sum().item() == pytest.approx(-trace_enum(1).loss(model, guide, xs), rel=1e-12)
    assert (elbo < log_px).all()
    torch.testing.assert_close(parts["elbo"], elbo, rtol=1e-10, atol=1e-10)


def test_a_kl_that_depends_on_a_site_the_model_enumerates_is_not_taken_in_closed_form():
    """A mixture prior, k enumerated in the model, z | k ~ N(μ_k, I): KL(q(z|x) ‖ p(z|k)) cannot stand
    inside the sum over k, so analytic_elbo estimates z's terms by sampling (and is mc_elbo, draw by
    draw); both are TraceEnum_ELBO's."""
    ss, (xs, _) = SemiSupervised(latent=True), data()
    centres = torch.randn(K, L, generator=torch.Generator().manual_seed(6), dtype=F64)

    def model(xs):
        with pyro.plate("data", xs.shape[0]):
            k = pyro.sample("k", dist.Categorical(logits=xs.new_zeros(K)), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(centres[k], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(ss.dec(bcat(z, xs.new_zeros(K))), 0.5).to_event(1), obs=xs)

    def guide(xs):
        loc, s = ss.enc_z(bcat(xs, xs.new_zeros(K))).chunk(2, -1)
        with pyro.plate("data", xs.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(s) + 0.1).to_event(1))

    with torch.no_grad():
        assert pyrovae.analytic_sites(model, guide, xs) == []
        analytic = _seeded(4, pyrovae.analytic_elbo, model, guide, xs, num_particles=10)
        mc = _seeded(4, pyrovae.mc_elbo, model, guide, xs, num_particles=10)
        theirs = _seeded(4, trace_enum(10).loss, model, guide, xs)
    torch.testing.assert_close(analytic, mc, rtol=0, atol=0)
    assert mc.sum().item() == pytest.approx(-theirs, rel=1e-10)


def test_what_the_estimators_cannot_sum_is_refused_naming_the_site():
    ss, (xs, _) = SemiSupervised(), data()
    sequential = config_enumerate(ss.guide, default="sequential")
    with pytest.raises(PairError, match="site 'y' is marked .*'sequential'"):
        pyrovae.iwae_bound(ss.model, sequential, xs, num_samples=2)

    def global_model(xs, enumerate_=None):
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(K, dtype=F64)), infer={"enumerate": enumerate_})
        with pyro.plate("data", xs.shape[0]):
            pyro.sample("x", dist.Normal(c.to(F64).unsqueeze(-1) * torch.ones(D, dtype=F64), 1.0).to_event(1), obs=xs)

    def global_guide(xs, enumerate_=None):
        pyro.sample("c", dist.Categorical(logits=torch.zeros(K, dtype=F64)))

    with pytest.raises(PairError, match="site 'c' is enumerated outside every plate"):
        pyrovae.mc_elbo(global_model, config_enumerate(global_guide), xs)
    with pytest.raises(PairError, match="the model's site 'c' is enumerated outside every plate"):
        pyrovae.mc_elbo(global_model, lambda xs, enumerate_: None, xs, enumerate_="parallel")
    assert torch.isfinite(pyrovae.mc_elbo(global_model, global_guide, xs)).all()   # sampled, the pair is fine

    def model_with_a_global(xs):
        plate = pyro.plate("data", xs.shape[0])
        with plate:
            y = pyro.sample("y", dist.Categorical(logits=xs.new_zeros(K)))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with plate:
            loc = (w + y.to(F64)).unsqueeze(-1) * torch.ones(D, dtype=F64)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=xs)

    @config_enumerate
    def guide_with_a_global(xs):
        with pyro.plate("data", xs.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=xs.new_zeros(K)))
        pyro.sample("w", dist.Normal(y.to(F64).mean(-1, keepdim=True), 1.0))      # a global site that depends on y

    with pytest.raises(PairError, match="site 'w' lies outside the data plate but depends on the enumerated"):
        pyrovae.mc_elbo(model_with_a_global, guide_with_a_global, xs)


# -- (5) training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("form,num_particles", [("tuple", 1), ("dict", 3)])
def test_train_with_the_enum_elbo_improves_the_enumerated_elbo(form, num_particles):
    """Unlabeled data through the enumerated guide (elbo="enum"), labeled data as an extra term."""
    ss = SemiSupervised(seed=2)
    x, y = data(400, seed=3)
    x_test, _ = data(100, seed=4)
    unlabeled = (x[40:],) if form == "tuple" else {"xs": x[40:]}
    labeled = (x[:40], y[:40]) if form == "tuple" else {"xs": x[:40], "ys": y[:40]}
    test = (x_test,) if form == "tuple" else {"xs": x_test}
    with torch.no_grad():
        before = pyrovae.mc_elbo(ss.model, ss.guide_enum, x_test, num_particles=20).mean().item()
    trainer = Trainer(ss.model, ss.guide_enum, unlabeled, batch_size=60, lr=0.02, elbo="enum",
                      num_particles=num_particles, test_data=None, device="cpu")
    assert isinstance(innermost(trainer.elbo), TraceEnum_ELBO)
    assert trainer.elbo.max_plate_nesting == 1 + (num_particles > 1)   # the data plate, and the particles'
    extra = pyrovae.Term(ss.model, ss.guide, labeled, elbo="trace", batch_size=20)   # y observed: nothing to sum
    rows = pyrovae.train(ss.model, ss.guide_enum, unlabeled, test_data=test, epochs=15, batch_size=60, lr=0.02,
                         elbo="enum", num_particles=num_particles, seed=0, progress=False, extra=[extra])
    with torch.no_grad():
        after = pyrovae.mc_elbo(ss.model, ss.guide_enum, x_test, num_particles=20).mean().item()
    assert rows[-1]["train_elbo"] > rows[0]["train_elbo"] + 30.0, rows
    assert after > before + 30.0 and rows[-1]["test_elbo"] > before + 30.0, (before, after, rows[-1])
    assert rows[-1]["test_elbo"] == pytest.approx(rows[-1]["reconstruction"] - rows[-1]["kl"], rel=1e-6)
    assert rows[-1]["kl"] > 0


def test_train_a_mixture_enumerated_in_the_model_to_its_exact_log_likelihood():
    """elbo="enum" with k enumerated in the model and an empty guide: the ELBO is log p(x) itself,
    so the test ELBO that training reports is the exact mean log-likelihood, and it rises."""
    x, _ = data(300, seed=7)

    def model(xs):
        w = pyro.param("w", torch.full((K,), 1.0 / K, dtype=F64), constraint=dist.constraints.simplex)
        mu = pyro.param("mu", xs[:K].clone() * 0.1)
        with pyro.plate("data", xs.shape[0]):
            k = pyro.sample("k", dist.Categorical(w), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(mu[k], 1.0).to_event(1), obs=xs)

    def guide(xs):
        pass

    rows = pyrovae.train(model, guide, x, test_data=x[:100], epochs=20, batch_size=50, lr=0.1, elbo="enum", seed=0,
                         progress=False)
    w, mu = pyro.param("w").detach(), pyro.param("mu").detach()
    log_px = torch.logsumexp(dist.Normal(mu, 1.0).log_prob(x[:100, None]).sum(-1) + w.log(), -1)
    assert rows[-1]["test_elbo"] == pytest.approx(log_px.mean().item(), rel=1e-10)
    assert rows[-1]["test_elbo"] > rows[0]["test_elbo"] + 5.0, rows
