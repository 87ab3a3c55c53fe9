"""The fast evaluation paths (issue 15 §1): the float32 mixture density against float64, the
fused Bernoulli log-density against Pyro's, and iwae_bound on the same draws as Pyro's own
importance sampler — the speed-ups change no number beyond float rounding."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.importance import vectorized_importance_weights

import pyrovae
from pyrovae.app.cli import main
from pyrovae.app.run import estimate_seconds, evaluate_run, format_seconds
from pyrovae.components.distributions import DiagonalNormalMixture, IndependentBernoulli
from pyrovae.inference import estimators as est


def _vamp_like(K=200, L=30, B=6, n=64, seed=0):
    """A mixture shaped like a trained VampPrior (component scales 0.02–0.5, means spread over
    ±3) and IWAE-shaped draws z [n, B, L]: datapoint b's posterior sits next to component b."""
    g = torch.Generator().manual_seed(seed)
    locs = 1.5 * torch.randn(K, L, generator=g)
    scales = 0.02 + 0.48 * torch.rand(K, L, generator=g)
    logits = torch.zeros(K)
    centre = locs[:B] + scales[:B] * torch.randn(B, L, generator=g)
    spread = scales[:B] * (0.5 + torch.rand(B, L, generator=g))
    z = centre + spread * torch.randn(n, B, L, generator=g)
    return logits, locs, scales, z


def _float64_reference(logits, locs, scales, z):
    return dist.MixtureSameFamily(dist.Categorical(logits=logits.double()),
                                  dist.Normal(locs.double(), scales.double()).to_event(1)).log_prob(z.double())


def test_float32_mixture_density_matches_float64_to_1e4_nats_on_iwae_draws():
    logits, locs, scales, z = _vamp_like()
    fast = DiagonalNormalMixture(logits, locs, scales).log_prob(z)
    ref = _float64_reference(logits, locs, scales, z)
    assert fast.dtype == torch.float32 and fast.shape == (64, 6)
    assert (fast.double() - ref).abs().max() < 1e-4
    # the same quadratic form expanded about the origin in float32 misses by far more: the test can fail
    prec = scales.pow(-2)
    quad = (z * z) @ prec.T - 2 * z @ (locs * prec).T + (locs.pow(2) * prec).sum(-1)
    naive = torch.logsumexp(-scales.log().sum(-1) - 0.5 * locs.shape[1] * math.log(2 * math.pi) - 0.5 * quad
                            - math.log(len(logits)), -1)
    assert (naive.double() - ref).abs().max() > 1e-3


@pytest.mark.parametrize("particles", [None, 8])
def test_float32_mixture_density_and_gradient_while_training(particles):
    """z [batch, L] (Trace_ELBO's shape while training) and [particles, batch, L] (vectorized
    particles): the value within 1e-4 nats of float64, and the gradient with respect to z."""
    logits, locs, scales, z = _vamp_like(n=particles or 1)
    z = (z if particles else z[0]).clone().requires_grad_()
    fast = DiagonalNormalMixture(logits, locs, scales).log_prob(z)
    z64 = z.detach().double().requires_grad_()
    ref = _float64_reference(logits, locs, scales, z64)
    assert (fast.double() - ref).abs().max() < 1e-4
    fast.sum().backward(), ref.sum().backward()
    assert torch.allclose(z.grad.double(), z64.grad, rtol=1e-3, atol=1e-3)


def test_mixture_density_in_slices_of_groups_is_the_same():
    logits, locs, scales, z = _vamp_like(B=9)
    whole = DiagonalNormalMixture(logits, locs, scales)
    sliced = DiagonalNormalMixture(logits, locs, scales)
    (K, L), n = locs.shape, z.shape[0]
    sliced.block = 2 * K * max(L, n)  # both temporaries of two groups: five slices of the nine groups
    assert torch.allclose(whole.log_prob(z), sliced.log_prob(z), rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_fused_bernoulli_density_broadcasts_x_and_equals_pyros(scale):
    """logits [n, B, 4, 5] against binary x [B, 4, 5] (never expanded), large logits included."""
    g = torch.Generator().manual_seed(2)
    logits = scale * torch.randn(7, 3, 4, 5, generator=g)
    x = (torch.rand(3, 4, 5, generator=g) < 0.4).float()
    fused = IndependentBernoulli(logits, 2).log_prob(x)
    ref = dist.Bernoulli(logits=logits.double()).to_event(2).log_prob(x.double())
    assert fused.shape == (7, 3)
    assert torch.allclose(fused.double(), ref, rtol=1e-6, atol=1e-4)
    relaxed = x * 0.5 + 0.25  # intensities: the BCE path
    assert torch.allclose(IndependentBernoulli(logits, 2).log_prob(relaxed).double(),
                          dist.Bernoulli(logits=logits.double(), validate_args=False).to_event(2)
                          .log_prob(relaxed.double()), rtol=1e-6, atol=1e-4)


def _small_vae():
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = pyrovae.VAE(12, 3, hidden=(8,), activation="tanh")
    x = (torch.rand(4, 12, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    return vae, x


def test_iwae_bound_on_pyros_own_draws_equals_the_bound_by_hand():
    """Same seed: iwae_bound's chunks draw what Pyro's vectorized_importance_weights draws in one
    plate; the bound by hand in float64 on Pyro's z (generic Bernoulli and Normal densities)."""
    vae, x = _small_vae()
    k = 64
    with torch.no_grad():
        pyro.set_rng_seed(5)
        ours = est.iwae_bound(vae.model, vae.guide, x, num_samples=k, chunk_size=16)
        pyro.set_rng_seed(5)
        _, model_trace, _ = vectorized_importance_weights(vae.model, vae.guide, x, num_samples=k, max_plate_nesting=1)
        z = model_trace.nodes["z"]["value"]                                  # [k, 4, 3]
        q = vae.posterior(x)
        logits = vae.decode(z)["logits"].double()
        log_w = (dist.Normal(0.0, 1.0).log_prob(z.double()).sum(-1)
                 + dist.Bernoulli(logits=logits).log_prob(x.double()).sum(-1)
                 - dist.Normal(q.base_dist.loc.double(), q.base_dist.scale.double()).log_prob(z.double()).sum(-1))
        by_hand = torch.logsumexp(log_w, 0) - math.log(k)
    assert torch.allclose(ours.double(), by_hand, rtol=0, atol=1e-4)


def test_iwae_bound_does_not_depend_on_the_chunking():
    vae, x = _small_vae()
    bounds = []
    for chunk in (16, 32, None):   # None: the cache-sized default (here all 64 particles in one chunk)
        pyro.set_rng_seed(7)
        bounds.append(est.iwae_bound(vae.model, vae.guide, x, num_samples=64, chunk_size=chunk))
    assert torch.allclose(bounds[0], bounds[1], rtol=0, atol=1e-5)
    assert torch.allclose(bounds[0], bounds[2], rtol=0, atol=1e-5)


def test_default_chunks_draw_what_one_pass_draws():
    """100 images of 12 pixels: the default chunk (32768 rows / 100 = 327, rounded down to 320
    particles) splits k = 700 in three, and gives the bound of all 700 in one pass."""
    vae, _ = _small_vae()
    x = (torch.rand(100, 12, generator=torch.Generator().manual_seed(4)) < 0.5).float()
    bounds = []
    for chunk in (None, 700):
        pyro.set_rng_seed(8)
        bounds.append(est.iwae_bound(vae.model, vae.guide, x, num_samples=700, chunk_size=chunk))
    assert torch.allclose(bounds[0], bounds[1], rtol=0, atol=1e-5)


def test_cpu_chunks_are_sized_from_the_cache_and_gpu_chunks_are_the_maximum():
    vae, x = _small_vae()
    traces = pyrovae.inference.traces.dry_run(vae.model, vae.guide, x)
    width = 12  # x's 12 numbers per datapoint: the widest site
    expected = min(est.MAX_ROWS, max(est.MIN_ROWS, est.cache_bytes() // (4 * width)))
    assert est.rows_per_chunk(traces, 4, torch.device("cpu")) == expected
    assert est.rows_per_chunk(traces, 4, torch.device("cuda")) == est.MAX_ROWS
    assert est.cache_bytes() >= 1 << 16


def test_evaluation_time_estimate_scales_the_probe_and_keeps_the_draws():
    calls = []

    def score(k):
        calls.append(k)
        torch.randn(3)
    torch.manual_seed(0)
    before = torch.randn(2)
    torch.manual_seed(0)
    seconds = estimate_seconds(score, 5000, 10)
    assert calls == [250] and seconds >= 0
    assert torch.equal(torch.randn(2), before)          # the probe's draws were undone
    torch.manual_seed(0)
    estimate_seconds(score, 100, 10, warm_up=True)      # compiled networks: once untimed, then timed
    assert calls == [250, 100, 100] and torch.equal(torch.randn(2), before)
    assert [format_seconds(s) for s in (42, 300, 7200)] == ["42 s", "5.0 min", "2.0 h"]


@pytest.mark.slow
def test_evaluate_shows_its_estimate_and_running_bound_and_keeps_its_numbers(tmp_path, capsys):
    """A small PPCA run: with the progress display (the time estimate's probe, the running bound in
    the bar) the numbers are those of the run without it, the same seed."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "data.dataset=ppca", "--set", "model.latent_dim=2",
                 "--set", "model.hidden=[16]", "--set", "model.likelihood=gaussian-learned",
                 "--set", "train.epochs=1", "--set", "train.device=cpu"]) == 0
    capsys.readouterr()
    shown = evaluate_run(out, iw_samples=20, test_size=300, progress=True, device="cpu")
    err = capsys.readouterr().err
    quiet = evaluate_run(out, iw_samples=20, test_size=300, progress=False, device="cpu")
    assert shown["estimators"] == quiet["estimators"]
    assert "evaluate: 300 datapoints, k = 20: about " in err
    iw = quiet["estimators"]["iwae_bound(k=20)"]
    assert f"log p(x) ≥ {iw['mean']:.2f} ± {iw['se']:.2f}" in err       # the bar's last running bound: all 300
    # each estimator's own wall time is recorded (the bound's is the protocol's cost)
    assert set(quiet["seconds"]) == set(quiet["estimators"]) and all(t > 0 for t in quiet["seconds"].values())
