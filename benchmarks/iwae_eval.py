"""Evaluation speed: the importance-weighted log-likelihood (IWAE bound, k = 5000) of MNIST test images.

In one process, on the same trained VAE (784-200-200-50, tanh, Bernoulli, diagonal Gaussian guide:
Burda et al.'s network, the published protocol's) and the same test images (binarized once, seed 1):

* ``pyrovae.iwae_bound, batches of 100`` — what ``pyrovae evaluate --no-compile`` runs (its three
  r = 1 ELBOs cost about 1/k of this more);
* ``... compiled`` (``--compile``) — the same inside ``pyrovae.model.compiled``: the decoder and the
  densities compiled by ``torch.compile`` (compiled before the timing), what ``pyrovae evaluate``
  runs by default from 10^7 importance samples on a CPU;
* ``pyrovae.iwae_bound, per image`` — like for like with Pyro's utility;
* ``pyrovae before issue 15`` — the same function with the previous code put back for the timing
  (chunks of 32768 particle × batch rows, the Bernoulli density by BCE-with-logits on x expanded
  to the logits' shape, the mixture's quadratic form in float64);
* ``Pyro vectorized_importance_weights, per image`` — Pyro's own importance sampler;
* ``hand-written chunked PyTorch loop`` — the same bound with no Pyro: encoder once per batch of
  100, then chunks of 32768 rows: z = μ + σ ε, the decoder, −BCE, log N(z; 0, I) − log q(z|x),
  a running log-sum-exp;
* ``FLOP limit`` — the matrix products' floating-point operations (decoder per particle, encoder
  per image) at the machine's sgemm rate, measured first with a large torch.mm.

It prints seconds per 1,000 images at the run's k and scaled to k = 5000 (the cost is linear in
k), the process's CPU seconds likewise (less disturbed by other work than the wall time), the
speed relative to the hand-written loop (> 1: faster; by wall and by CPU time), the fraction of
the FLOP limit (by wall time), and each method's mean bound (they agree to Monte Carlo error). Then the same for the VampPrior
(K = 500 pseudo-inputs, the same network), with its time relative to the plain VAE, and its
float32 mixture density against float64 on draws from the trained guide.

The VAEs are trained here for ``--epochs`` epochs (default 1) on 10,000 training images with a
fixed seed: the speed does not depend on how well they are trained. The machine is shared with
other work, so absolute times are under load: read the ratios, measured side by side.

    python benchmarks/iwae_eval.py [--images 1000] [--k 5000] [--epochs 1] [--threads 2] [--repeats 1]
        [--no-vamp] [--no-pyro] [--no-before] [--compile]

Short form (a minute or two on 2 idle cores): ``--images 200``.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.infer.importance import vectorized_importance_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyrovae  # noqa: E402
from pyrovae.components import distributions as D  # noqa: E402
from pyrovae.inference import estimators as est  # noqa: E402
from pyrovae.model.compiled import compiled  # noqa: E402

BATCH = 100


def sgemm_rate(n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of torch.mm on [n, n] float32 matrices: the best of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def linear_flops(module) -> int:
    """2 · in · out summed over the nn.Linear layers of a module: FLOPs per row."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))


# -- the previous code, put back for the "before" timing -----------------------------------------
def _old_bernoulli_log_prob(self, x):
    logits = self.logits
    if logits.shape != x.shape:
        logits, x = torch.broadcast_tensors(logits, x)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -bce.flatten(-len(self.event_shape)).sum(-1)


def _old_mixture_log_prob(self, z):
    z64, locs, prec = z.double(), self.locs.double(), self.scales.double().pow(-2)
    quad = (z64 * z64) @ prec.T - 2 * z64 @ (locs * prec).T + (locs.pow(2) * prec).sum(-1)
    log_norm = -self.scales.log().sum(-1) - 0.5 * self.locs.shape[-1] * D.LOG_2PI
    return torch.logsumexp(self.logits.log_softmax(-1) + log_norm - 0.5 * quad.to(z.dtype), -1)


@contextlib.contextmanager
def previous_code():
    saved = D.IndependentBernoulli.log_prob, D.DiagonalNormalMixture.log_prob
    D.IndependentBernoulli.log_prob, D.DiagonalNormalMixture.log_prob = _old_bernoulli_log_prob, _old_mixture_log_prob
    try:
        yield
    finally:
        D.IndependentBernoulli.log_prob, D.DiagonalNormalMixture.log_prob = saved


# -- the methods ---------------------------------------------------------------------------------
def pyrovae_batches(vae, x, k, chunk_size=None):
    return torch.cat([est.iwae_bound(vae.model, vae.guide, x[i:i + BATCH], num_samples=k, chunk_size=chunk_size)
                      for i in range(0, len(x), BATCH)])


def pyrovae_compiled(vae, x, k):
    with compiled(vae):
        return pyrovae_batches(vae, x, k)


def pyrovae_before(vae, x, k):
    with previous_code():
        return pyrovae_batches(vae, x, k, chunk_size=max(1, est.MAX_ROWS // BATCH))


def pyrovae_per_image(vae, x, k):
    return torch.cat([est.iwae_bound(vae.model, vae.guide, x[i:i + 1], num_samples=k) for i in range(len(x))])


def pyro_per_image(vae, x, k):
    out = []
    for i in range(len(x)):
        log_w = vectorized_importance_weights(vae.model, vae.guide, x[i:i + 1], num_samples=k, max_plate_nesting=1)[0]
        out.append(torch.logsumexp(log_w, 0) - math.log(k))
    return torch.stack(out)


def hand_loop(vae, x, k, rows=32768):
    """The bound with no Pyro, as one writes it by hand."""
    out = []
    for i in range(0, len(x), BATCH):
        xb = x[i:i + BATCH].flatten(1)
        q = vae.family.params(vae.encoder(x[i:i + BATCH]))
        mu, sigma = q["loc"], q["scale"]
        chunk, total = max(1, rows // len(xb)), None
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            z = mu + sigma * torch.randn(n, *mu.shape)
            logits = vae.decoder(z).flatten(2)
            log_px = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
            log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            log_qz = torch.distributions.Normal(mu, sigma).log_prob(z).sum(-1)
            lse = torch.logsumexp(log_px + log_pz - log_qz, 0)
            total = lse if total is None else torch.logaddexp(total, lse)
        out.append(total - math.log(k))
    return torch.cat(out)


def timed(fn, *args):
    """(wall seconds, CPU seconds of the process, value) of one call, seed 0, without gradients."""
    pyro.set_rng_seed(0)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        value = fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu, value


def race(named, vae, x, k, repeats):
    """Each (name, fn) timed ``repeats`` times in alternating rounds, each round starting one method
    later, after an untimed warm-up round on one batch (without it the first method timed ran
    ~25 % slower than the same function later — probably the first large allocations, not pinned down):
    the best wall and CPU times."""
    for _, fn in named:
        timed(fn, vae, x[:BATCH], min(k, 500))
    best = {name: (math.inf, math.inf, None) for name, _ in named}
    for r in range(repeats):
        for name, fn in named[r % len(named):] + named[:r % len(named)]:
            wall, cpu, value = timed(fn, vae, x, k)
            best[name] = (min(wall, best[name][0]), min(cpu, best[name][1]), value)
    return [(name, *best[name], len(x)) for name, _ in named]


# -- setup -----------------------------------------------------------------------------------------
def trained_vae(train, epochs, **options):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = pyrovae.VAE((28, 28), 50, hidden=(200, 200), activation="tanh", **options)
    pyrovae.train(vae.model, vae.guide, train, epochs=epochs, batch_size=100, elbo="trace", seed=0, progress=False)
    return vae.eval()


def report(rows, k, limit, reference):
    """One line per method: wall s per 1000 images (at k, and scaled to k = 5000), CPU s per 1000
    images at k = 5000, speed relative to the hand-written loop (wall; CPU), fraction of the FLOP
    limit (wall), mean bound. ``reference`` = the hand loop's (wall, cpu) on the same images."""
    print(f"{'method':<50} {'s/1000':>7} {'@k=5000':>8} {'cpu@5000':>9} {'vs hand':>8} {'(cpu)':>6} "
          f"{'of limit':>8} {'bound':>8}")
    for name, wall, cpu, value, n in rows:
        per, scale = 1000 / n, 5000 / k
        print(f"{name:<50} {wall * per:7.1f} {wall * per * scale:8.1f} {cpu * per * scale:9.1f} "
              f"{reference[0] / wall:8.2f} {reference[1] / cpu:6.2f} {limit / wall:8.0%} {value.mean().item():8.2f}")
    n = rows[0][4]
    print(f"{'FLOP limit (matrix products at the sgemm rate)':<50} {limit * 1000 / n:7.1f} "
          f"{limit * 1000 / n * 5000 / k:8.1f}")


def methods_for(vae, x, k, args):
    rows = [("pyrovae.iwae_bound, batches of 100 (eager)", pyrovae_batches)]
    if args.compile:
        pyrovae_compiled(vae, x[:BATCH], k)  # compiles for the chunks' shapes before the timing
        rows.append(("... compiled (evaluate's default, large runs)", pyrovae_compiled))
    if not args.no_before:
        rows.append(("pyrovae before issue 15 (same function, old code)", pyrovae_before))
    rows.append(("pyrovae.iwae_bound, per image", pyrovae_per_image))
    if not args.no_pyro:
        rows.append(("Pyro vectorized_importance_weights, per image", pyro_per_image))
    rows.append(("hand-written chunked PyTorch loop", hand_loop))
    return race(rows, vae, x, k, args.repeats)


def mixture_check(vae, x, k):
    """max |log p(z) float32 − float64| over draws z ~ q(z|x) of the trained guide, [k, B, L]
    (the float64 reference is torch's MixtureSameFamily, an [k, B, K, L] tensor: keep k·B small)."""
    with torch.no_grad():
        z = vae.posterior(x).sample((k,))
        prior = vae.prior()
        fast = prior.log_prob(z).double()
        locs, scales = prior.locs.double(), prior.scales.double()
        ref = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=prior.logits.double()),
            torch.distributions.Independent(torch.distributions.Normal(locs, scales), 1)).log_prob(z.double())
    return (fast - ref).abs().max().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds; the best time of each method")
    p.add_argument("--no-vamp", action="store_true")
    p.add_argument("--no-pyro", action="store_true")
    p.add_argument("--no-before", action="store_true")
    p.add_argument("--compile", action="store_true", help="also time the compiled path (pyrovae.model.compiled)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rate = sgemm_rate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, sgemm {rate / 1e9:.1f} GFLOP/s, "
          f"cache {est.cache_bytes() >> 20} MiB → "
          f"{min(est.MAX_ROWS, max(est.MIN_ROWS, est.cache_bytes() // (4 * 784)))} rows/chunk for 784-wide data; "
          f"{args.images} images, k = {args.k}")
    train = pyrovae.data.load_dataset("mnist", "train", binarize="dynamic", subset=10000)
    x = pyrovae.data.load_dataset("mnist", "test", binarize="dynamic").x[:args.images]
    vae = trained_vae(train, args.epochs)
    flops = args.images * (args.k * linear_flops(vae.decoder) + linear_flops(vae.encoder) + linear_flops(vae.family))
    limit = flops / rate
    rows = methods_for(vae, x, args.k, args)
    reference = next((wall, cpu) for name, wall, cpu, _, _ in rows if name.startswith("hand"))
    print("\nVAE 784-200-200-50 (tanh), standard normal prior")
    report(rows, args.k, limit, reference)
    if args.no_vamp:
        return
    vamp = trained_vae(train, args.epochs, prior="vamp", prior_options={"components": 500})
    if args.compile:
        pyrovae_compiled(vamp, x[:BATCH], args.k)
    vamp_rows = race([("VampPrior: pyrovae.iwae_bound, batches of 100", pyrovae_batches)]
                     + ([("VampPrior: ... compiled", pyrovae_compiled)] if args.compile else [])
                     + ([] if args.no_before else [("VampPrior: pyrovae before (float64 mixture)", pyrovae_before)]),
                     vamp, x, args.k, args.repeats)
    print("\nVampPrior K = 500, the same network (its FLOP limit: the plain VAE's; vs hand: the plain VAE's loop)")
    report(vamp_rows, args.k, limit, reference)
    print(f"VampPrior / plain VAE time, pyrovae.iwae_bound: {vamp_rows[0][1] / rows[0][1]:.2f} wall, "
          f"{vamp_rows[0][2] / rows[0][2]:.2f} CPU")
    images = x[:20]
    print(f"float32 mixture density vs float64 on 50 draws of q(z|x) for each of {len(images)} images: "
          f"max |difference| = {mixture_check(vamp, images, 50):.2e} nats")


if __name__ == "__main__":
    main()
