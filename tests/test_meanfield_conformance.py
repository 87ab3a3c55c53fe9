"""MeanField_ELBO on the cases of Pyro's own test suite that exercise TraceMeanField_ELBO.

Each test below re-states one test of Pyro's ``tests/infer`` (named in its docstring; the files are
the same at Pyro 1.9.0, 1.9.1 and master of October 2024, and 1.9.2 ships the same ELBO code) with
:class:`pyrovae.MeanField_ELBO` in place of ``TraceMeanField_ELBO``; no Pyro test code is copied.
Pyro runs its tests with float64 tensors and validation on; here each case runs with validation on
*and* off, since MeanField_ELBO takes its lean path (no unused log-densities) only with validation
off. Besides Pyro's own assertion, a case asserts that Pyro's class, run from the same seed, gives
the same losses and gradients (``same_as_pyro``).

Not mirrored: the ``JitTraceMeanField_ELBO`` cases of test_jit.py and test_gradient.py (pyrovae has
no JIT variant; the non-JIT cases of test_jit.py are here).
"""
import warnings
from contextlib import nullcontext
from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.testing import fakes
from pyro.distributions.transforms import block_autoregressive, iterated
from pyro.infer import ELBO, SVI, TraceMeanField_ELBO
from pyro.infer.autoguide import (AutoDiagonalNormal, AutoIAFNormal, AutoLaplaceApproximation,
                                  AutoLowRankMultivariateNormal, AutoMultivariateNormal, AutoNormal,
                                  AutoNormalizingFlow)
from pyro.infer.util import torch_item
from pyro.optim import Adam, ClippedAdam
from torch.distributions import biject_to, constraints

from pyrovae import MeanField_ELBO


@pytest.fixture(autouse=True)
def float64():
    """Pyro's test suite runs with float64 as torch's default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(params=[True, False], ids=["validate", "novalidate"])
def validate(request):
    with pyro.validation_enabled(request.param):
        yield request.param


def seeded(run, Elbo):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return run(Elbo)


def same_as_pyro(run):
    """``run(Elbo)`` with MeanField_ELBO and with TraceMeanField_ELBO from the same seed: results equal
    (numbers, tensors, dicts and lists of them); MeanField_ELBO's result."""
    ours, pyros = seeded(run, MeanField_ELBO), seeded(run, TraceMeanField_ELBO)
    torch.testing.assert_close(ours, pyros, rtol=1e-10, atol=1e-12)
    return ours


def converged(run, seed=0):
    """``run(MeanField_ELBO)`` for a long run (Pyro's convergence tests), from ``seed``, with validation
    off: the lean path, the one that traces differently from Pyro's class (with validation on it
    traces as Pyro's does; the short ``same_as_pyro`` comparisons cover both)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(False):
        return run(MeanField_ELBO)


def grads():
    return {name: p.grad.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def raises_the_same(run):
    """Both classes raise NotImplementedError (a guide that is not reparametrized; Pyro xfails these)."""
    for Elbo in (MeanField_ELBO, TraceMeanField_ELBO):
        with pytest.raises(NotImplementedError):
            seeded(run, Elbo)


def test_builds_on_pyros_public_elbo_only():
    """MeanField_ELBO subclasses Pyro's ELBO base, not TraceMeanField_ELBO, and defines no private method
    of Pyro's but ``_get_trace``, the one ELBO declares abstract (so a Pyro release that renames one
    cannot silently mix its code with ours); ``ELBO.__call__`` (an nn.Module loss) works with it."""
    assert MeanField_ELBO.__mro__ == (MeanField_ELBO, ELBO, object)
    pyro_private = {n for n in dir(TraceMeanField_ELBO) if n.startswith("_") and not n.startswith("__")} - {"_abc_impl"}
    assert pyro_private & set(vars(MeanField_ELBO)) == {"_get_trace"} <= ELBO.__abstractmethods__
    model, guide = observed_y()
    losses = same_as_pyro(lambda Elbo: [Elbo().differentiable_loss(model, guide), Elbo()(model, guide)()])
    assert losses[0].item() != losses[1].item()  # two draws, each equal to Pyro's


# ---------------------------------------------------------------- tests/infer/test_gradient.py

REPARAM = pytest.mark.parametrize("reparameterized,has_rsample",
                                  [(True, None), (True, False), (True, True), (False, None)],
                                  ids=["reparam", "reparam-False", "reparam-True", "nonreparam"])


def normal_pair(reparameterized, has_rsample, data, subsample_size):
    Normal = dist.Normal if reparameterized else fakes.NonreparameterizedNormal

    def model(subsample=None):
        with pyro.plate("data", len(data), subsample_size, subsample) as ind:
            z = pyro.sample("z", Normal(0, 1))
            pyro.sample("x", Normal(z, 1), obs=data[ind])

    def guide(subsample=None):
        scale = pyro.param("scale", lambda: torch.tensor([1.0]))
        with pyro.plate("data", len(data), subsample_size, subsample):
            loc = pyro.param("loc", lambda: torch.zeros(len(data)), event_dim=0)
            z_dist = Normal(loc, scale)
            if has_rsample is not None:
                z_dist.has_rsample_(has_rsample)
            pyro.sample("z", z_dist)

    return model, guide


@pytest.mark.parametrize("scale", [1.0, 2.0], ids=["unscaled", "scaled"])
@REPARAM
@pytest.mark.parametrize("subsample", [False, True], ids=["full", "subsample"])
def test_subsample_gradient(validate, reparameterized, has_rsample, subsample, scale):
    """test_gradient.py::test_subsample_gradient[TraceMeanField_ELBO-...]: 50000 vectorized particles,
    gradients of −ELBO w.r.t. loc and scale against their exact values."""
    data = torch.tensor([-0.5, 2.0])
    model, guide = normal_pair(reparameterized, has_rsample, data, 1 if subsample else len(data))
    if scale != 1.0:
        model, guide = poutine.scale(model, scale=scale), poutine.scale(guide, scale=scale)
    batches = [torch.tensor([0]), torch.tensor([1])] if subsample else [torch.tensor([0, 1])]

    def run(Elbo):
        elbo = Elbo(max_plate_nesting=1, num_particles=50000, vectorize_particles=True,
                    strict_enumeration_warning=False)
        svi = SVI(model, guide, Adam({"lr": 0.1}), loss=elbo)
        return [svi.loss_and_grads(model, guide, subsample=b) for b in batches], grads()

    fully_reparametrized = reparameterized and has_rsample is not False
    if validate and not fully_reparametrized:
        return raises_the_same(run)
    _, actual = same_as_pyro(run)
    if fully_reparametrized:  # without validation a non-reparametrized guide gives Pyro's class's (biased) numbers
        normalizer = 2 if subsample else 1
        expected = {"loc": scale * torch.tensor([0.5, -2.0]), "scale": scale * torch.tensor([2.0])}
        torch.testing.assert_close({k: g / normalizer for k, g in actual.items()}, expected, atol=0.06 * scale, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("reparameterized", [True, False], ids=["reparam", "nonreparam"])
@pytest.mark.parametrize("subsample", [False, True], ids=["full", "subsample"])
def test_subsample_gradient_sequential(validate, reparameterized, subsample):
    """test_gradient.py::test_subsample_gradient_sequential[TraceMeanField_ELBO-...]: 500 calls of
    loss_and_grads, 10 particles each (not vectorized), a random subsample of one of two points; the
    summed gradient over the calls against its expectation. Pyro's class from the same seed is compared
    over the first 20 calls, with validation on and off; the 500 calls run with it off."""
    data = torch.tensor([-0.5, 2.0])
    subsample_size = 1 if subsample else len(data)
    Normal = dist.Normal if reparameterized else fakes.NonreparameterizedNormal

    def model():
        with pyro.plate("data", len(data), subsample_size) as ind:
            x = data[ind]
            z = pyro.sample("z", Normal(0, 1).expand_by(x.shape))
            pyro.sample("x", Normal(z, 1), obs=x)

    def guide():
        loc = pyro.param("loc", lambda: torch.zeros(len(data), requires_grad=True))
        scale = pyro.param("scale", lambda: torch.tensor([1.0], requires_grad=True))
        with pyro.plate("data", len(data), subsample_size) as ind:
            pyro.sample("z", Normal(loc[ind], scale))

    def run(Elbo, iters=20):
        elbo = Elbo(num_particles=10, strict_enumeration_warning=False)
        svi = SVI(model, guide, Adam({"lr": 0.1}), elbo)
        return [svi.loss_and_grads(model, guide) for _ in range(iters)], grads()

    if validate and not reparameterized:
        return raises_the_same(run)
    same_as_pyro(run)
    if reparameterized and not validate:
        iters = 500
        _, actual = converged(partial(run, iters=iters))
        expected = {"loc": torch.tensor([0.5, -2.0]), "scale": torch.tensor([2.0])}
        torch.testing.assert_close({k: g / iters for k, g in actual.items()}, expected, atol=0.333, rtol=0)


# ---------------------------------------------------------------- tests/infer/test_valid_models.py

def assert_ok(model, guide, elbo, **kwargs):
    """test_valid_models.py's assert_ok: an SVI step, then loss, differentiable_loss and loss_and_grads
    from one seed agree. Returns the three numbers."""
    SVI(model, guide, Adam({"lr": 1e-6}), elbo).step(**kwargs)
    pyro.set_rng_seed(0)
    loss = elbo.loss(model, guide, **kwargs)
    pyro.set_rng_seed(0)
    differentiable_loss = torch_item(elbo.differentiable_loss(model, guide, **kwargs))
    pyro.set_rng_seed(0)
    loss_and_grads = elbo.loss_and_grads(model, guide, **kwargs)
    assert differentiable_loss == pytest.approx(loss, abs=0.01)
    assert loss_and_grads == pytest.approx(loss, abs=0.01)
    return [loss, differentiable_loss, loss_and_grads]


def assert_ok_as_pyro(model, guide, **options):
    return same_as_pyro(lambda Elbo: assert_ok(model, guide, Elbo(**options)))


def test_mean_field_ok(validate):
    """test_valid_models.py::test_mean_field_ok: a latent site y that the guide also samples."""
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(x, 1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        x = pyro.sample("x", dist.Normal(loc, 1.0))
        pyro.sample("y", dist.Normal(x, 1.0))

    assert_ok_as_pyro(model, guide)


@pytest.mark.parametrize("mask", [True, False])
def test_mean_field_mask_ok(validate, mask):
    """test_valid_models.py::test_mean_field_mask_ok: ``dist.mask(False)`` makes the KL the number 0.0
    (MeanField_ELBO used to fail on it: 'float' object has no attribute 'shape')."""
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0).mask(mask))
        pyro.sample("y", dist.Normal(x, 1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        x = pyro.sample("x", dist.Normal(loc, 1.0).mask(mask))
        pyro.sample("y", dist.Normal(x, 1.0))

    losses = assert_ok_as_pyro(model, guide)
    if not mask:  # KL(q(x) ‖ p(x)) masked out; y | x has the same law under both: the ELBO is 0
        assert losses == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("mask", [True, False, torch.tensor(True), torch.tensor(False)])
def test_poutine_mask_on_latent_sites(validate, mask):
    """Not in Pyro's suite: ``poutine.mask`` around the latent site in model and guide, the form the
    issue named (the crash came from ``dist.mask(False)``, test_mean_field_mask_ok: a masked-off site's
    KL is then a zero tensor); −ELBO = mask·KL(q ‖ p) − log p(x=0 | z) at the drawn z."""
    def model():
        with poutine.mask(mask=mask):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.3))
        with poutine.mask(mask=mask):
            pyro.sample("z", dist.Normal(loc, 0.5))

    assert_ok_as_pyro(model, guide)
    pyro.set_rng_seed(1)
    z = poutine.trace(guide).get_trace().nodes["z"]["value"]
    kl = torch.distributions.kl_divergence(dist.Normal(0.3, 0.5), dist.Normal(0.0, 1.0)) * bool(mask)
    pyro.set_rng_seed(1)
    expected = kl - dist.Normal(z, 1.0).log_prob(torch.tensor(0.0))
    assert MeanField_ELBO().loss(model, guide) == pytest.approx(expected.item())


def test_mean_field_warn(validate):
    """test_valid_models.py::test_mean_field_warn: the guide samples the latent sites in another order
    than the model; with validation on both classes warn (Pyro's class checks only then)."""
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(x, 1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        y = pyro.sample("y", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(y, 1.0))

    def run(Elbo):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = SVI(model, guide, Adam({"lr": 1e-6}), Elbo()).step()
        return loss, any(str(w.message).startswith("Failed to verify mean field restriction") for w in caught)

    _, warned = same_as_pyro(run)
    assert warned == validate


def masked_and_scaled(mask=None, scale=None):
    """poutine.mask(mask) and poutine.scale(scale), each only where given."""
    return (nullcontext() if mask is None else poutine.mask(mask=mask),
            nullcontext() if scale is None else poutine.scale(scale=scale))


def observed_y(mask=None, scale=None):
    """The model and guide of test_reparam_ok, test_reparam_mask_ok and test_reparam_scale_ok."""
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        masking, scaling = masked_and_scaled(mask, scale)
        with masking, scaling:
            pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(0.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("x", dist.Normal(loc, 1.0))

    return model, guide


def test_reparam_ok(validate):
    """test_valid_models.py::test_reparam_ok[TraceMeanField_ELBO]."""
    assert_ok_as_pyro(*observed_y())


@pytest.mark.parametrize("mask", [True, False, torch.tensor(True), torch.tensor(False)])
def test_reparam_mask_ok(validate, mask):
    """test_valid_models.py::test_reparam_mask_ok[TraceMeanField_ELBO-...]: a masked observed site."""
    assert_ok_as_pyro(*observed_y(mask=mask))


@pytest.mark.parametrize("scale", [1, 0.1, torch.tensor(0.5)])
def test_reparam_scale_ok(validate, scale):
    """test_valid_models.py::test_reparam_scale_ok[TraceMeanField_ELBO-...]: a scaled observed site."""
    assert_ok_as_pyro(*observed_y(scale=scale))


def dirichlet_plate(mask=None, scale=None):
    """The model and guide of test_reparam_mask_plate_ok and test_reparam_scale_plate_ok."""
    data = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)).exp()
    data /= data.sum(-1, keepdim=True)

    def model():
        c = pyro.sample("c", dist.LogNormal(0.0, 1.0).expand([3]).to_event(1))
        masking, scaling = masked_and_scaled(mask, scale)
        with pyro.plate("data", len(data)), masking, scaling:
            pyro.sample("obs", dist.Dirichlet(c), obs=data)

    def guide():
        loc = pyro.param("loc", torch.zeros(3))
        scale_ = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
        pyro.sample("c", dist.LogNormal(loc, scale_).to_event(1))

    return model, guide


@pytest.mark.parametrize("mask", [True, False, torch.tensor(True), torch.tensor(False), torch.tensor([False, True])])
def test_reparam_mask_plate_ok(validate, mask):
    """test_valid_models.py::test_reparam_mask_plate_ok[TraceMeanField_ELBO-...]."""
    assert_ok_as_pyro(*dirichlet_plate(mask=mask))


@pytest.mark.parametrize("scale", [1, 0.1, torch.tensor(0.5), torch.tensor([0.1, 0.9])])
def test_reparam_scale_plate_ok(validate, scale):
    """test_valid_models.py::test_reparam_scale_plate_ok[TraceMeanField_ELBO-...]."""
    assert_ok_as_pyro(*dirichlet_plate(scale=scale))


OBS_MASKS = [torch.tensor(True), torch.tensor(False), torch.tensor([True]), torch.tensor([False])]


@pytest.mark.parametrize("num_particles", [1, 2])
@pytest.mark.parametrize("mask", OBS_MASKS + [torch.tensor([False, True, False])])
def test_obs_mask_ok(validate, mask, num_particles):
    """test_valid_models.py::test_obs_mask_ok[TraceMeanField_ELBO-...]: ``obs_mask`` splits y into an
    observed site and a latent ``y_unobserved`` that the guide samples under the opposite mask;
    vectorized particles, plate nesting guessed."""
    data = torch.tensor([7.0, 7.0, 7.0])

    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with pyro.plate("plate", len(data)):
            y = pyro.sample("y", dist.Normal(x, 1.0), obs=data, obs_mask=mask)
            assert ((y == data) == mask).all()

    def guide():
        loc = pyro.param("loc", torch.zeros(()))
        scale = pyro.param("scale", torch.ones(()), constraint=constraints.positive)
        x = pyro.sample("x", dist.Normal(loc, scale))
        with pyro.plate("plate", len(data)), poutine.mask(mask=~mask):
            pyro.sample("y_unobserved", dist.Normal(x, 1.0))

    assert_ok_as_pyro(model, guide, num_particles=num_particles, vectorize_particles=True,
                      strict_enumeration_warning=False)


@pytest.mark.parametrize("num_particles", [1, 2])
@pytest.mark.parametrize("mask", OBS_MASKS + [torch.tensor([False, True, True, False])])
def test_obs_mask_multivariate_ok(validate, mask, num_particles):
    """test_valid_models.py::test_obs_mask_multivariate_ok[TraceMeanField_ELBO-...]."""
    data = torch.full((4, 3), 7.0)

    def model():
        x = pyro.sample("x", dist.MultivariateNormal(torch.zeros(3), torch.eye(3)))
        with pyro.plate("plate", len(data)):
            y = pyro.sample("y", dist.MultivariateNormal(x, torch.eye(3)), obs=data, obs_mask=mask)
            assert ((y == data).all(-1) == mask).all()

    def guide():
        loc = pyro.param("loc", torch.zeros(3))
        cov = pyro.param("cov", torch.eye(3), constraint=constraints.positive_definite)
        x = pyro.sample("x", dist.MultivariateNormal(loc, cov))
        with pyro.plate("plate", len(data)), poutine.mask(mask=~mask):
            pyro.sample("y_unobserved", dist.MultivariateNormal(x, torch.eye(3)))

    assert_ok_as_pyro(model, guide, num_particles=num_particles, vectorize_particles=True,
                      strict_enumeration_warning=False)


def test_obs_mask_multivariate_error(validate):
    """test_valid_models.py::test_obs_mask_multivariate_error[TraceMeanField_ELBO]: a mask over the
    event dimension is refused."""
    data = torch.full((3, 2), 7.0)
    mask = torch.tensor([[False, False], [False, True], [True, False]])

    def model():
        x = pyro.sample("x", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
        with pyro.plate("plate", len(data)):
            pyro.sample("y", dist.MultivariateNormal(x, torch.eye(2)), obs=data, obs_mask=mask)

    def guide():
        loc = pyro.param("loc", torch.zeros(2))
        x = pyro.sample("x", dist.MultivariateNormal(loc, torch.eye(2)))
        with pyro.plate("plate", len(data)), poutine.mask(mask=~mask):
            pyro.sample("y_unobserved", dist.MultivariateNormal(x, torch.eye(2)))

    with pytest.raises(ValueError, match="Invalid obs_mask shape"):
        SVI(model, guide, Adam({"lr": 1e-6}), MeanField_ELBO(strict_enumeration_warning=False)).step()


# ---------------------------------------------------------------- tests/infer/test_inference.py

@pytest.mark.slow
def test_elbo_analytic_kl(validate):
    """test_inference.py::NormalNormalTests::test_elbo_analytic_kl: 3000 Adam steps on a conjugate
    normal-normal model reach the exact posterior (squared errors of loc and log σ below 0.05).
    Pyro's class from the same seed is compared over the first 20 steps; the 3000 run without validation."""
    lam0, loc0 = torch.tensor([0.1, 0.1]), torch.tensor([0.0, 0.5])  # prior precision and mean
    lam = torch.tensor([6.0, 4.0])  # observation precision
    data = torch.tensor([[-0.1, 0.3], [0.00, 0.4], [0.20, 0.5], [0.10, 0.7]])
    lam_n = lam0 + len(data) * lam
    loc_n = data.sum(0) * lam / lam_n + loc0 * lam0 / lam_n
    log_sig_n = -0.5 * torch.log(lam_n)

    def model():
        loc = pyro.sample("loc_latent", dist.Normal(loc0, lam0 ** -0.5).to_event(1))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(loc, lam ** -0.5).to_event(1), obs=data)

    def guide():
        loc_q = pyro.param("loc_q", loc_n + 0.134)
        log_sig_q = pyro.param("log_sig_q", log_sig_n - 0.14)
        pyro.sample("loc_latent", dist.Normal(loc_q, log_sig_q.exp()).to_event(1))

    def run(Elbo, steps=20):
        svi = SVI(model, guide, Adam({"lr": 0.001}), loss=Elbo())
        return [svi.step() for _ in range(steps)], [pyro.param("loc_q").detach(), pyro.param("log_sig_q").detach()]

    same_as_pyro(run)
    if validate:
        return
    converged(partial(run, steps=3000))
    assert ((pyro.param("loc_q") - loc_n) ** 2).sum().item() < 0.05
    assert ((pyro.param("log_sig_q") - log_sig_n) ** 2).sum().item() < 0.05


# ---------------------------------------------------------------- tests/infer/autoguide/test_inference.py

AUTOGUIDE_SEED = 3  # see test_auto_diagonal_gaussians
AUTO_GAUSSIANS = [AutoDiagonalNormal, AutoMultivariateNormal, AutoLowRankMultivariateNormal, AutoLaplaceApproximation]
AUTO_DIRICHLET = [AutoDiagonalNormal, AutoIAFNormal, AutoMultivariateNormal, AutoLowRankMultivariateNormal,
                  AutoLaplaceApproximation,
                  pytest.param(lambda m: AutoNormalizingFlow(m, partial(iterated, 2, block_autoregressive)), id="flow")]


def two_normals():
    pyro.sample("x", dist.Normal(-0.2, 1.2))
    pyro.sample("y", dist.Normal(0.2, 0.7))


def auto_guide(auto_class, model):
    return auto_class(model, rank=1) if auto_class is AutoLowRankMultivariateNormal else auto_class(model)


@pytest.mark.parametrize("auto_class", AUTO_GAUSSIANS + [AutoNormal])
def test_autoguides_step_as_pyros_class(validate, auto_class):
    """Autoguides (their latent sites are Deltas or, for AutoNormal, Normals with a closed-form KL):
    20 SVI steps give Pyro's class's losses and parameters."""
    def run(Elbo):
        guide = auto_guide(auto_class, two_normals)
        svi = SVI(two_normals, guide, Adam({"lr": 0.01}), loss=Elbo())
        losses = [svi.step() for _ in range(20)]
        return losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    same_as_pyro(run)


@pytest.mark.slow
@pytest.mark.parametrize("auto_class", AUTO_GAUSSIANS)
def test_auto_diagonal_gaussians(auto_class):
    """autoguide/test_inference.py::test_auto_diagonal_gaussians[TraceMeanField_ELBO-...]: 3001 steps
    recover the prior's locs and scales (see ``converged``). The case is seed-sensitive in Pyro's suite too
    (which runs it unseeded): AutoLowRankMultivariateNormal ends with a loc 0.061, 0.053 and 0.10 off
    (0.05 allowed) from seeds 0, 1 and 2, with Pyro's class exactly as with this one (the two runs are
    bit for bit the same; test_autoguides_step_as_pyros_class), and passes from seeds 3 to 8.
    """
    n_steps = 3001
    guide = auto_guide(auto_class, two_normals)

    def run(Elbo):
        adam = ClippedAdam({"lr": 0.01, "betas": (0.95, 0.999), "lrd": 0.1 ** (1 / n_steps)})
        svi = SVI(two_normals, guide, adam, loss=Elbo())
        for _ in range(n_steps):
            assert torch.isfinite(torch.tensor(svi.step()))

    converged(run, seed=AUTOGUIDE_SEED)
    if auto_class is AutoLaplaceApproximation:
        guide = guide.laplace_approximation()
    loc, scale = guide._loc_scale()
    torch.testing.assert_close(loc.detach(), torch.tensor([-0.2, 0.2]), atol=0.05, rtol=0)
    torch.testing.assert_close(scale.detach(), torch.tensor([1.2, 0.7]), atol=0.08, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("auto_class", AUTO_DIRICHLET)
def test_auto_dirichlet(auto_class):
    """autoguide/test_inference.py::test_auto_dirichlet[TraceMeanField_ELBO-...]: 2000 steps bring the
    guide's mean near the Dirichlet posterior mean of categorical data (see ``converged``)."""
    prior = torch.tensor([0.5, 1.0, 1.5, 3.0])
    data = torch.tensor([0] * 4 + [1] * 2 + [2] * 5).long()
    posterior = torch.tensor([4.5, 3.0, 6.5, 3.0])

    def model(data):
        p = pyro.sample("p", dist.Dirichlet(prior))
        with pyro.plate("data_plate"):
            pyro.sample("data", dist.Categorical(p).expand_by(data.shape), obs=data)

    guide = auto_class(model)

    def run(Elbo):
        svi = SVI(model, guide, Adam({"lr": 0.003}), loss=Elbo())
        for _ in range(2000):
            assert torch.isfinite(torch.tensor(svi.step(data)))

    converged(run, seed=AUTOGUIDE_SEED)
    flow = isinstance(guide, (AutoIAFNormal, AutoNormalizingFlow))
    loc = guide.transform(torch.zeros(guide.latent_dim)) if flow else guide.loc
    torch.testing.assert_close(biject_to(constraints.simplex)(loc), posterior / posterior.sum(), atol=0.2, rtol=0)


# ---------------------------------------------------------------- tests/infer/test_jit.py (non-JIT cases)

def test_loss(validate):
    """test_jit.py::test_loss[TraceMeanField_ELBO]: 10000 vectorized particles estimate −ELBO = 18.611
    (loc with a closed-form KL, LogNormal scale too)."""
    def model(data):
        loc = pyro.sample("loc", dist.Normal(0, 1))
        scale = pyro.sample("scale", dist.LogNormal(0, 1))
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)

    def guide(data):
        loc_loc = pyro.param("loc_loc", lambda: torch.tensor(1.0))
        scale_loc = pyro.param("scale_loc", lambda: torch.tensor(-1.0))
        pyro.sample("loc", dist.Normal(loc_loc, 2))
        pyro.sample("scale", dist.LogNormal(scale_loc, 0.1))

    def run(Elbo):
        elbo = Elbo(num_particles=10_000, vectorize_particles=True, max_plate_nesting=0,
                    strict_enumeration_warning=False)
        return [elbo.loss(model, guide, torch.tensor(1.0)), elbo.loss_and_grads(model, guide, torch.tensor(1.0))]

    for loss in same_as_pyro(run):
        assert loss == pytest.approx(18.611, rel=0.1)


@pytest.mark.parametrize("num_particles", [1, 10])
def test_svi(validate, num_particles):
    """test_jit.py::test_svi[TraceMeanField_ELBO-...]: an empty guide, 40 steps."""
    data = torch.arange(10.0)

    def model(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("x", dist.Normal(loc, scale).expand_by(data.shape).to_event(1), obs=data)

    def run(Elbo):
        svi = SVI(model, lambda data: None, Adam({"lr": 0.0005, "betas": (0.90, 0.999)}),
                  Elbo(num_particles=num_particles, strict_enumeration_warning=False))
        return [svi.step(data) for _ in range(40)]

    same_as_pyro(run)


def test_svi_irregular_batch_size(validate):
    """test_jit.py::test_svi_irregular_batch_size[TraceMeanField_ELBO]: batches of 10 then 3 (without
    Pyro's ``@poutine.broadcast``, a no-op since plates broadcast by themselves)."""
    def model(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", dist.Normal(loc, scale).expand([data.shape[0]]), obs=data)

    def run(Elbo):
        elbo = Elbo(strict_enumeration_warning=False, max_plate_nesting=1)
        svi = SVI(model, lambda data: None, Adam({"lr": 1e-6}), elbo)
        return [svi.step(torch.ones(10)), svi.step(torch.ones(3))]

    same_as_pyro(run)
