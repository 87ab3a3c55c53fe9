"""The fast training step (pyrovae.inference.faststep) against Pyro's own ELBO classes.

Each case runs a few steps of a pair from one seed twice — through FastStep (checked against the
Pyro ELBO at its first step, then on its own) and through Pyro's ``Trace_ELBO`` /
``TraceMeanField_ELBO`` themselves (``pyrovae.MeanField_ELBO`` is tested equal to the latter in
tests/test_meanfield_conformance.py) — and asserts the same losses and gradients, bit for bit, at
every step; the pairs are the patterns of Pyro's tests/infer cases for these ELBOs (masks, scales,
plates, subsampling, global and hierarchical latents, latents without a closed-form KL, factors,
autoguides). Pairs the fast step cannot stand in for (score-function guides, enumeration,
auxiliary guide sites, ``obs_mask``'s extra latents, a structure that changes) must leave it off
and the numbers Pyro's.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

from pyrovae import MeanField_ELBO
from pyrovae.inference import faststep
from pyrovae.inference.faststep import FastStep
from pyrovae.inference.train import Trainer

N, D, B = 12, 5, 4
X = torch.rand(N, D, generator=torch.Generator().manual_seed(0)).bernoulli()


class Net(torch.nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = torch.nn.Linear(d_in, d_out)

    def forward(self, v):
        return self.lin(v)


def vae_pair(obs=lambda logits, x: dist.Bernoulli(logits=logits).to_event(1), prior=None, scale=1.0):
    """A small VAE pair; ``obs`` builds the likelihood, ``prior`` the latent's prior."""
    dec, enc, enc_s = Net(2, D), Net(D, 2), Net(D, 2)

    def model(x):
        pyro.module("dec", dec)
        with poutine.scale(scale=scale), pyro.plate("data", x.shape[0]):
            p = prior(x) if prior else dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1)
            z = pyro.sample("z", p)
            pyro.sample("x", obs(dec(z), x), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        pyro.module("enc_s", enc_s)
        with poutine.scale(scale=scale), pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(enc(x), torch.nn.functional.softplus(enc_s(x)) + 1e-3).to_event(1))
    return model, guide


def hierarchical_pair():
    """A global latent outside the plate, a local z2 → z1 chain inside, a factor site."""
    dec, enc = Net(2, D), Net(D, 4)

    def model(x):
        pyro.module("dec", dec)
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 + g.unsqueeze(-1), 0.5).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z1)).to_event(1), obs=x)
        pyro.factor("penalty", -0.1 * g ** 2)

    def guide(x):
        pyro.module("enc", enc)
        loc = pyro.param("g_loc", torch.tensor(0.1))
        pyro.sample("g", dist.Normal(loc, 0.7))
        with pyro.plate("data", x.shape[0]):
            h = enc(x)
            z2 = pyro.sample("z2", dist.Normal(h[:, :2], 1.0).to_event(1))
            pyro.sample("z1", dist.Normal(h[:, 2:] + z2, 0.3).to_event(1))
    return model, guide


def subsample_pair():
    """Pyro's own minibatching: a plate of size N subsampled to B inside the pair."""
    dec, enc = Net(2, D), Net(D, 2)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", N, subsample_size=B) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(B, 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x[idx])

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", N, subsample_size=B) as idx:
            pyro.sample("z", dist.Normal(enc(x[idx]), 1.0).to_event(1))
    return model, guide


def masked_obs(logits, x):
    return dist.Bernoulli(logits=logits).to_event(1).mask(torch.arange(x.shape[0]) % 3 != 0)


def gaussian_obs(logits, x):
    return dist.Normal(logits, 0.5).to_event(1)


def laplace_prior(x):  # no closed-form KL against the Normal guide: log p − log q
    return dist.Laplace(x.new_zeros(x.shape[0], 2), 1.0).to_event(1)


PAIRS = {
    "vae (fused Bernoulli)": lambda: vae_pair(),
    "masked likelihood": lambda: vae_pair(obs=masked_obs),
    "Gaussian likelihood": lambda: vae_pair(obs=gaussian_obs),
    "poutine.scale": lambda: vae_pair(scale=2.5),
    "latent without a closed-form KL": lambda: vae_pair(prior=laplace_prior),
    "global + hierarchical latents, factor": hierarchical_pair,
    "subsampled plate": subsample_pair,
}
#: pairs whose likelihood has no fused sum (not a Bernoulli, or masked): the fast step is Trace_ELBO to the bit
NOT_FUSED = {"masked likelihood", "Gaussian likelihood"}
#: name → (the ELBO FastStep stands in for, Pyro's class): the mean-field step is bit for bit
#: pyrovae's MeanField_ELBO (its fused Bernoulli sum) and equal to Pyro's TraceMeanField_ELBO to float rounding
ELBOS = {"trace": (Trace_ELBO, Trace_ELBO), "mean-field": (MeanField_ELBO, TraceMeanField_ELBO)}


def steps(pair, Elbo, fast: bool, n: int = 3, x=X, particles: int = 1, wrap=None):
    """``n`` steps from seed 0 (SGD on the gradients between them): [(loss, {param: grad})], FastStep's
    state. With ``fast``, the first step is the Pyro ELBO's, the second FastStep's check, then FastStep
    (``wrap(fast_step)`` in its place where given: the traced step, tests/test_tracedstep.py)."""
    pyro.clear_param_store()
    torch.manual_seed(1)
    model, guide = pair()
    pyro.set_rng_seed(0)
    elbo = Elbo(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=2)
    step = FastStep.for_elbo(elbo) if fast else None
    step = wrap(step) if wrap and step else step
    out = []
    with pyro.validation_enabled(False):
        for i in range(n):  # as in the trainer, the first step is the Pyro ELBO's (autoguides set up)
            loss = (step if step and i else elbo).loss_and_grads(model, guide, x)
            params = dict(pyro.get_param_store().named_parameters())
            out.append((loss, {k: p.grad.clone() for k, p in params.items() if p.grad is not None}))
            with torch.no_grad():
                for p in params.values():
                    if p.grad is not None:
                        p -= 0.05 * p.grad
                        p.grad = None
    return out, step and step.state


def fast_step_of(elbo) -> FastStep:
    """The FastStep in the trainer's chain of ELBOs (a VerifiedParticles around it for vectorized particles)."""
    while not isinstance(elbo, FastStep):
        elbo = elbo.elbo
    return elbo


def assert_same(a, b, rel=0.0):
    """The same losses and gradients at every step: bit for bit, or to ``rel`` relative."""
    for (loss_a, grads_a), (loss_b, grads_b) in zip(a, b):
        assert loss_a == pytest.approx(loss_b, rel=rel, abs=0)
        assert grads_a.keys() == grads_b.keys() and grads_a
        for k in grads_a:
            assert torch.allclose(grads_a[k], grads_b[k], rtol=rel, atol=rel * grads_b[k].abs().max()), k


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("elbo", ELBOS)
@pytest.mark.parametrize("pair", PAIRS)
def test_fast_step_is_pyros_elbo_to_the_bit(pair, elbo, particles):
    """r = 1, and r = 3 particles vectorized in Pyro's plate."""
    ours, pyros = ELBOS[elbo]
    fast, state = steps(PAIRS[pair], ours, fast=True, particles=particles)
    assert state == "on"
    # a Bernoulli likelihood is summed in one BCE kernel (as MeanField_ELBO does): Trace_ELBO's sum to rounding
    bitwise = elbo == "mean-field" or pair in NOT_FUSED
    assert_same(fast, steps(PAIRS[pair], ours, fast=False, particles=particles)[0], rel=0.0 if bitwise else 1e-5)
    assert_same(fast, steps(PAIRS[pair], pyros, fast=False, particles=particles)[0],
                rel=0.0 if pyros is ours and bitwise else 1e-5)


def score_function_pair():
    enc = Net(D, 1)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(c.unsqueeze(-1).expand(-1, D), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=enc(x).squeeze(-1)))
    return model, guide


def obs_mask_pair():  # obs_mask adds a latent "x_unobserved" that the guide does not sample
    model, guide = vae_pair()

    def masked_model(x):
        pyro.module("dec2", Net(1, 1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand(-1, D), 1.0).to_event(1), obs=x,
                        obs_mask=torch.arange(x.shape[0]) % 2 == 0)
    return masked_model, guide


def auto_normal_pair():
    model = vae_pair(obs=gaussian_obs)[0]
    return model, AutoNormal(model)


def auto_diagonal_pair():  # an auxiliary guide site (the joint latent vector)
    model = vae_pair(obs=gaussian_obs)[0]
    return model, AutoDiagonalNormal(model)


@pytest.mark.parametrize("pair, state, elbo", [
    (auto_normal_pair, "on", "trace"),          # auxiliary "z_unconstrained", a Delta at "z"
    (auto_normal_pair, "on", "mean-field"),
    (auto_diagonal_pair, "on", "trace"),        # one auxiliary joint latent, Deltas at the model's sites
    (auto_diagonal_pair, "on", "mean-field"),
    (score_function_pair, "off", "trace"),      # a discrete latent: Pyro's score-function term
    (score_function_pair, "off", "mean-field"),
    (obs_mask_pair, "off", "trace"),            # the model's "x_unobserved", not in the guide (a mean-field
])                                              # ELBO refuses such a pair itself)
def test_autoguides_and_guides_it_cannot_stand_in_for(pair, state, elbo):
    ours, pyros = ELBOS[elbo]
    fast, got = steps(pair, ours, fast=True)
    assert got == state
    assert_same(fast, steps(pair, ours, fast=False)[0])


def test_enumerated_sites_leave_it_off():
    model, guide = score_function_pair()
    fast, got = steps(lambda: (model, config_enumerate(guide)), Trace_ELBO, fast=True, n=2)
    assert got == "off"


def labelled_pair(two_labels=False, model_enumerates=False):
    """An M2-shaped pair: a label y ~ q(y|x) enumerated in parallel in the guide, z ~ q(z|x, y), and
    p(y) p(z) p(x|z, y). ``two_labels``: the guide enumerates a second discrete site c too;
    ``model_enumerates``: the model enumerates a site of its own (the fast step sums one enumerated
    guide site, nothing else)."""
    K = 3
    enc, cls, dec = Net(D + K, 4), Net(D, K), Net(2 + K, D)

    def one_hot(y):
        return torch.nn.functional.one_hot(y, K)

    def joined(a, b):  # [..., m] and [..., n], the leading dimensions broadcast: [..., m + n]
        lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
        return torch.cat([a.expand(lead + a.shape[-1:]), b.to(a.dtype).expand(lead + b.shape[-1:])], -1)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=torch.zeros(K)))
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            if model_enumerates or two_labels:
                pyro.sample("c", dist.Bernoulli(0.3), infer={"enumerate": "parallel"} if model_enumerates else {})
            pyro.sample("x", dist.Bernoulli(logits=dec(joined(z, one_hot(y)))).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        pyro.module("cls", cls)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=cls(x)), infer={"enumerate": "parallel"})
            h = enc(joined(x, one_hot(y)))
            if two_labels:
                pyro.sample("c", dist.Bernoulli(torch.sigmoid(h[..., 0])), infer={"enumerate": "parallel"})
            pyro.sample("z", dist.Normal(h[..., :2], torch.nn.functional.softplus(h[..., 2:]) + 1e-3).to_event(1))
    return model, guide


def test_an_enumerated_label_is_summed_as_trace_enum_elbo_sums_it():
    """TraceEnum_ELBO with one guide site enumerated in parallel: the fast step is on, and every step's
    loss and gradients are TraceEnum_ELBO's on the same draws — to 1e-12 in float64 (the same sum),
    to faststep.ENUM_TOLERANCE in float32 (its terms added in another order)."""
    for dtype, rel in ((torch.float64, 1e-12), (torch.float32, faststep.ENUM_TOLERANCE)):
        x = X.to(dtype)
        with torch.autocast("cpu", enabled=False):
            torch.set_default_dtype(dtype)
            try:
                fast, state = steps(labelled_pair, pyro.infer.TraceEnum_ELBO, fast=True, x=x)
                pyros, _ = steps(labelled_pair, pyro.infer.TraceEnum_ELBO, fast=False, x=x)
            finally:
                torch.set_default_dtype(torch.float32)
        assert state == "on"
        assert_same(fast, pyros, rel=rel)


@pytest.mark.parametrize("options", [{"two_labels": True}, {"model_enumerates": True}],
                         ids=["two enumerated guide sites", "model enumerates"])
def test_enumerations_it_cannot_sum_leave_it_off(options):
    fast, state = steps(lambda: labelled_pair(**options), pyro.infer.TraceEnum_ELBO, fast=True)
    assert state == "off"
    assert_same(fast, steps(lambda: labelled_pair(**options), pyro.infer.TraceEnum_ELBO, fast=False)[0])


def test_a_structure_that_changes_turns_it_off():
    """A model that adds a site at its third call: the fast step stops there and Pyro's ELBO goes on."""
    model, guide = vae_pair(obs=gaussian_obs)
    calls = []

    def growing(x):
        calls.append(1)
        model(x)
        if len(calls) > 3:
            pyro.factor("extra", torch.tensor(-1.0))
    out, state = steps(lambda: (growing, guide), Trace_ELBO, fast=True, n=3)
    assert state == "off" and all(torch.isfinite(torch.tensor(loss)) for loss, _ in out)


def test_a_fast_step_that_disagrees_is_not_used(monkeypatch):
    """If the fast sum ever differed from the Pyro ELBO, the check would refuse it, warn, and the
    step's numbers would be Pyro's."""
    original = FastStep.losses

    def off_by_one(self, model_sites, guide_sites):
        loss, surrogate = original(self, model_sites, guide_sites)
        return loss + 1.0, surrogate + 1.0
    monkeypatch.setattr(FastStep, "losses", off_by_one)
    with pytest.warns(UserWarning, match="fast training step differs from Trace_ELBO on this pair"):
        fast, state = steps(lambda: vae_pair(), Trace_ELBO, fast=True)
    assert state == "off"
    assert_same(fast, steps(lambda: vae_pair(), Trace_ELBO, fast=False)[0])


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("elbo", ["trace", "mean-field"])
def test_trainer_with_and_without_the_fast_step_trains_the_same_parameters(elbo, particles):
    """pyrovae's trainer (minibatches scaled by ScaleData, Adam) for two epochs: identical
    parameters and history with ``fast_step`` on (used from the second step) and off."""
    import pyrovae
    runs = []
    for fast in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = pyrovae.VAE((D,), 2, hidden=(8,))
        trainer = Trainer(vae.model, vae.guide, X, batch_size=5, lr=1e-2, elbo=elbo, num_particles=particles,
                          test_data=None, device="cpu", fast_step=fast)
        history = [trainer.run_epoch(e) for e in (1, 2)]
        runs.append((history, {k: p.detach().clone() for k, p in trainer.params.items()},
                     fast_step_of(trainer.elbo).state if fast else None))
    (h_fast, p_fast, state), (h_pyro, p_pyro, _) = runs
    assert state == "on"
    if elbo == "mean-field":  # MeanField_ELBO sums the Bernoulli as the fast step does
        assert h_fast == h_pyro and all(torch.equal(p_fast[k], p_pyro[k]) for k in p_pyro)
    else:  # Trace_ELBO's element-wise Bernoulli against the fast step's fused BCE: float rounding
        assert h_fast == pytest.approx(h_pyro, rel=1e-6)
        assert all(torch.allclose(p_fast[k], p_pyro[k], rtol=1e-5, atol=1e-6) for k in p_pyro)


def test_only_trace_or_mean_field_with_vectorized_particles():
    assert FastStep.for_elbo(Trace_ELBO(num_particles=2)) is None  # particles in a Python loop
    assert FastStep.for_elbo(Trace_ELBO(num_particles=2, vectorize_particles=True)) is not None
    assert FastStep.for_elbo(TraceMeanField_ELBO()) is None  # Pyro's class: the trainer builds MeanField_ELBO
    assert FastStep.for_elbo(pyro.infer.RenyiELBO()) is None
    assert FastStep.for_elbo(pyro.infer.TraceEnum_ELBO()).enumerated  # one particle: the sum over labels
    assert FastStep.for_elbo(pyro.infer.TraceEnum_ELBO(num_particles=2, vectorize_particles=True)) is None
    assert FastStep.for_elbo(MeanField_ELBO()).mean_field
    assert faststep.TOLERANCE == 1e-6


def test_a_fast_step_that_raises_gives_the_step_to_pyro(monkeypatch):
    def raising(self, model, guide, args, kwargs):
        raise IndexError("shape-dependent indexing")
    monkeypatch.setattr(FastStep, "run", raising)
    with pytest.warns(UserWarning, match=r"fast training step cannot run this pair \(IndexError: shape-dependent"):
        fast, state = steps(lambda: vae_pair(), Trace_ELBO, fast=True)
    assert state == "off"
    assert_same(fast, steps(lambda: vae_pair(), Trace_ELBO, fast=False)[0])


@pytest.mark.parametrize("shape", [(40, 30), (3 * faststep.BLOCK + 5,)])  # one block, and four
@pytest.mark.parametrize("seed", range(3))
def test_the_check_compares_gradients_as_torch_allclose_does(seed, shape):
    """faststep.close is torch.allclose(rtol=tol, atol=tol·max|ref|): the same verdict on values at,
    inside and beyond the bound (element by element), and False at a NaN or an infinity anywhere."""
    torch.manual_seed(seed)
    tol, ref = 1e-6, torch.randn(shape)
    bound = tol * (ref.abs() + ref.abs().max())
    for factor in (0.0, 0.5, 0.99, 1.01, 2.0):
        for value in (ref + factor * bound, ref - factor * bound * torch.rand_like(ref).round()):
            expected = torch.allclose(value, ref, rtol=tol, atol=tol * float(ref.abs().max()))
            assert faststep.close(value, ref, tol) == expected
        if factor in (0.0, 0.5, 2.0):  # away from the bound by more than float32 rounding
            assert faststep.close(ref + factor * bound, ref, tol) == (factor <= 1.0)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in (0, ref.numel() - 1):
            value = ref.clone()
            value.view(-1)[where] = bad
            assert not faststep.close(value, ref, tol)
    assert faststep.close(torch.zeros(0), torch.zeros(0), tol)
