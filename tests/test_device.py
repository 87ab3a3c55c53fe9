"""Device placement and mixed precision.

Without a GPU, a change of dtype stands in for a change of device: ``module.double()`` and
``module.to("cuda")`` go through the same ``Module._apply``, so a tensor that a component creates
outside it (``torch.zeros(L)`` instead of ``self.zero.expand(L)``) stays float32 *and* stays on the
CPU. :class:`Float32Spy` watches every torch call while a float64 model runs and lists the
float32 tensors it sees: there must be none. The tests marked ``cuda`` run on a GPU only
(``pytest -m cuda``; benchmarks/gpu_check.sh) and skip without one.
"""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.overrides import TorchFunctionMode

import pyrovae
from pyrovae.inference import estimators as est
from pyrovae.inference.elbos import make_elbo
from pyrovae.inference.precision import check_precision, with_precision
from pyrovae.inference.settings import StepSettings
from pyrovae.inference.traces import sample_sites, traces
from pyrovae.model import FAMILIES



def needs_cuda(test):
    """Mark ``test`` ``cuda`` (``pytest -m cuda`` selects them) and skip it without a CUDA GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


class Float32Spy(TorchFunctionMode):
    """Records the torch functions that take or return a float32 tensor of one dimension or more
    (0-dim tensors are left out: Adam's step counts are float32 CPU scalars by design, and a 0-dim CPU
    tensor mixes with CUDA tensors anyway)."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def _look(self, value, func):
        if isinstance(value, torch.Tensor):
            if value.dtype == torch.float32 and value.dim() > 0 and value.numel() > 0:
                self.seen.setdefault(getattr(func, "__name__", repr(func)), tuple(value.shape))
        elif isinstance(value, (list, tuple)):
            for v in value:
                self._look(v, func)
        elif isinstance(value, dict):
            for v in value.values():
                self._look(v, func)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._look((args, kwargs), func)
        out = func(*args, **kwargs)
        self._look(out, func)
        return out


def _data(likelihood, shape, n=6, dtype=torch.float64):
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    if likelihood == "bernoulli":
        return x.round()
    return (x * 255).round() / 255 if likelihood == "discretized-logistic" else x


# every prior, guide and likelihood at least once. (VampPrior with the IAF guide is left out: Pyro's
# AffineAutoregressive inverts with torch.zeros(..., device=y.device), float32 whatever y's dtype — right
# device, wrong dtype, so it fails in float64 alone.)
COMPONENTS = [("normal", "diagonal", "bernoulli"), ("mixture", "fullrank", "gaussian-learned"),
              ("vamp", "lowrank", "laplace"), ("learned-normal", "iaf", "continuous-bernoulli"),
              ("laplace", "diagonal", "gaussian-decoder"), ("vamp", "diagonal", "discretized-logistic"),
              ("mixture", "diagonal", "gaussian")]


@pytest.mark.parametrize("prior,guide,likelihood", COMPONENTS)
def test_every_tensor_of_a_vae_follows_the_module(prior, guide, likelihood):
    pyro.clear_param_store()
    options = {"components": 5} if prior in ("vamp", "mixture") else {}
    vae = pyrovae.VAE((4, 4), 3, prior=prior, guide=guide, likelihood=likelihood, hidden=(8,),
                      prior_options=options).double()
    x = _data(likelihood, (4, 4))
    spy = Float32Spy()
    with spy, torch.no_grad():
        parts = est.elbo_parts(vae.model, vae.guide, x)
        bound = est.iwae_bound(vae.model, vae.guide, x, num_samples=4)
        model_trace, _ = traces(vae.model, vae.guide, x)
    assert spy.seen == {}
    assert parts["elbo"].dtype == bound.dtype == torch.float64 and torch.isfinite(bound).all()
    model_trace.compute_log_prob()
    assert {site["log_prob"].dtype for site in sample_sites(model_trace).values()} == {torch.float64}


@pytest.mark.parametrize("family", ["cvae", "m2", "2layer"])
def test_every_tensor_of_the_families_follows_the_module(family):
    pyro.clear_param_store()
    options = {"latent_dims": [3, 2], "hidden": [[8], [8]]} if family == "2layer" else {}
    sizes = {} if family == "2layer" else {"latent_dim": 3, "hidden": (8,)}
    labels = {} if family == "2layer" else {"num_classes": 3}
    vae = FAMILIES.build(family, options, input_shape=(4, 4), **sizes, **labels).double()
    x = _data("bernoulli", (4, 4))
    args = (x,) if family == "2layer" else (x, torch.tensor([0, 1, 2, 0, 1, 2]))
    spy = Float32Spy()
    with spy, torch.no_grad():
        est.elbo_parts(vae.model, vae.guide, *args)
        est.iwae_bound(vae.model, vae.guide, *args, num_samples=3)
    assert spy.seen == {}


def test_the_spy_sees_a_tensor_left_behind():
    """The check can fail: a prior that builds its distribution from torch.zeros(L) is caught."""
    class Careless(pyrovae.components.Prior):
        def forward(self):
            return dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1)

    pyro.clear_param_store()
    vae = pyrovae.VAE((4, 4), 3, prior=Careless(3), hidden=(8,)).double()
    spy = Float32Spy()
    with spy, torch.no_grad():
        est.elbo_parts(vae.model, vae.guide, _data("bernoulli", (4, 4)))
    assert "zeros" in spy.seen


def test_training_moves_every_component_with_the_model():
    """pyrovae.train on a float64 VAE with learned priors: parameters, pseudo-inputs and mixture
    weights keep the model's dtype through Adam's steps; no float32 tensor is made along the way."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = pyrovae.VAE((4, 4), 3, prior="vamp", prior_options={"components": 4}, hidden=(8,)).double()
    x = _data("bernoulli", (4, 4), n=32)
    spy = Float32Spy()
    with spy:
        history = pyrovae.train(vae.model, vae.guide, x, epochs=1, batch_size=16, device="cpu", progress=False)
    assert math.isfinite(history[0]["train_elbo"])
    assert spy.seen == {}
    assert all(p.dtype == torch.float64 for p in vae.parameters())
    assert vae.prior.pseudo_inputs.dtype == torch.float64


# -- bf16 -----------------------------------------------------------------------------------------------
def _loss(vae, x, precision, seed=0):
    """Trace_ELBO's loss (−ELBO summed over x) and the sites' log-density dtypes, one seeded draw."""
    model, guide = with_precision((vae.model, vae.guide), precision, torch.device("cpu"))
    pyro.set_rng_seed(seed)
    loss = make_elbo("trace", 1, 1).differentiable_loss(model, guide, x)
    pyro.set_rng_seed(seed)
    model_trace, guide_trace = traces(model, guide, x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    dtypes = {s["log_prob"].dtype for tr in (model_trace, guide_trace) for s in sample_sites(tr).values()}
    return loss, dtypes


def test_bf16_runs_the_networks_in_bf16_and_the_elbo_in_float32():
    """On MNIST-shaped data with the demo's networks (784-400-50): the bf16 ELBO is float32, its
    log-densities too, and it is within 2e-4 (relative) of the float32 ELBO of the same draw: measured
    1.0e-5 to 2.2e-5 over three draws, about 0.01 nats per image of about 576."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = pyrovae.VAE((28, 28), 50, hidden=(400,))
    x = (torch.rand(64, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.2).float()
    full, full_dtypes = _loss(vae, x, "float32")
    half, half_dtypes = _loss(vae, x, "bf16")
    assert full_dtypes == half_dtypes == {torch.float32} and half.dtype == torch.float32
    assert half.item() != full.item()  # the networks did run in bf16
    assert abs(half.item() - full.item()) < 2e-4 * abs(full.item())
    half.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in vae.parameters()
               if p.grad is not None)


def test_bf16_training_tracks_float32_training():
    """Two epochs on 512 binary 8×8 images: the bf16 run's test ELBO is within 0.05 nats of the float32
    run's (measured: −41.7244 vs −41.7241, 0.0003 nats)."""
    x = (torch.rand(640, 8, 8, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    elbos = {}
    for precision in ("float32", "bf16"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pyrovae.VAE((8, 8), 4, hidden=(32,))
        history = pyrovae.train(vae.model, vae.guide, x[:512], test_data=x[512:], epochs=2, batch_size=64,
                                seed=0, device="cpu", progress=False, step=StepSettings(precision=precision))
        elbos[precision] = history[-1]["test_elbo"]
    assert elbos["bf16"] != elbos["float32"] and abs(elbos["bf16"] - elbos["float32"]) < 0.05


def test_precision_is_checked():
    with pytest.raises(pyrovae.errors.InputError, match="precision must be one of 'float32', 'bf16'"):
        check_precision("fp16")


# -- on a GPU ----------------------------------------------------------------------------------------------
PPCA = {"data": {"dataset": "ppca"}, "model": {"latent_dim": 2, "hidden": [16], "likelihood": "gaussian-learned"},
        "train": {"epochs": 2, "batch_size": 500, "device": "cuda"}}


def _ppca_config(**train):
    from pyrovae.app import config

    base = {k: dict(v) for k, v in PPCA.items()}
    base["train"].update(train)
    return config.validate(base)


@pytest.mark.parametrize("precision", ["float32", "bf16"])
@needs_cuda
def test_a_run_trains_and_evaluates_on_cuda(tmp_path, precision):
    from pyrovae.app import run

    out = run.prepare_run_dir(tmp_path / "run")
    summary = run.train_run(_ppca_config(precision=precision), out, progress=False)
    assert summary["device"].startswith("cuda") and math.isfinite(summary["final"]["test_elbo"])
    result = run.evaluate_run(out, iw_samples=50, test_size=200, batch_size=50, device="cuda", progress=False)
    iwae = result["estimators"]["iwae_bound(k=50)"]["mean"]
    assert iwae >= result["estimators"]["mc_elbo"]["mean"] - 0.05  # the bound is the tighter one


@needs_cuda
def test_a_resumed_cuda_run_continues(tmp_path):
    """2 epochs straight vs 1 + 1 resumed on the GPU: same parameters (to the float tolerance of
    CUDA's non-deterministic reductions), the CUDA random state restored from the checkpoint."""
    from pyrovae.app import run
    from pyrovae.inference import checkpoint as ckpt

    straight = run.prepare_run_dir(tmp_path / "straight")
    run.train_run(_ppca_config(), straight, progress=False)
    parts = run.prepare_run_dir(tmp_path / "parts")
    run.train_run(_ppca_config(epochs=1), parts, progress=False)
    run.train_run(_ppca_config(epochs=2), parts, resume=True, progress=False, write_config=False)
    a, b = (ckpt.load_training(d / "checkpoint.pt") for d in (straight, parts))
    assert a["rng"]["cuda"] and b["rng"]["cuda"]
    for name, value in a["params"].items():
        torch.testing.assert_close(b["params"][name], value, rtol=1e-4, atol=1e-5)


@needs_cuda
def test_every_tensor_of_a_vae_lives_on_the_gpu():
    pyro.clear_param_store()
    vae = pyrovae.VAE((4, 4), 3, prior="vamp", prior_options={"components": 5}, guide="iaf", hidden=(8,)).cuda()
    x = _data("bernoulli", (4, 4), dtype=torch.float32).cuda()
    with torch.no_grad():
        model_trace, guide_trace = traces(vae.model, vae.guide, x)
        bound = est.iwae_bound(vae.model, vae.guide, x, num_samples=4)
    assert bound.is_cuda
    for tr in (model_trace, guide_trace):
        tr.compute_log_prob()
        for name, site in sample_sites(tr).items():
            assert site["log_prob"].is_cuda and site["value"].is_cuda, name
