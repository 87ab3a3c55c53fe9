"""The notes' baselines beside the VAE, fit on the same data and scored on the same test set.

* binarized MNIST (train: one static binarization, seed 0; test: binarized once, seed 1):
  independent Bernoullis by maximum likelihood (closed form) and mixtures of Bernoullis with
  K = 10 and 50 fit in Pyro with the assignment enumerated (TraceEnum_ELBO). A Gaussian density
  is not comparable with the probabilities of binary data, so it is not scored there.
* Frey Face (intensities in [0, 1], the fixed 1765/200 split): a Gaussian by maximum likelihood
  (diagonal and full covariance, closed form), a mixture of 10 diagonal Gaussians (TraceEnum_ELBO),
  and the VAE of examples/configs/frey_gaussian.toml (test ELBO and IWAE with k = 5000).

All in nats per test datapoint (log-probabilities for MNIST, log-densities for Frey Face).

    python benchmarks/baselines.py --out runs/baselines [--steps 3000]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pyrovae.app import config, run
from pyrovae.lab import baselines
from pyrovae.data import load_dataset


def mean_se(v: torch.Tensor) -> dict:
    v = v.double()
    return {"mean": v.mean().item(), "se": (v.std() / len(v) ** 0.5).item()}


def mixture(x_train, x_test, K, family, steps):
    start = time.perf_counter()
    params, history = baselines.fit_mixture(x_train, K, family, steps=steps, batch_size=512, lr=0.05, seed=0)
    ll = baselines.mixture_log_likelihood(params, x_test)
    return {**mean_se(ll), "seconds": time.perf_counter() - start, "train_loglik_first_last": [history[0], history[-1]]}


def mnist_baselines(steps):
    train = load_dataset("mnist", "train", binarize="static").x.flatten(1)
    test = load_dataset("mnist", "test", binarize="static").x.flatten(1)
    p = train.mean(0).clamp(1e-3, 1 - 1e-3)
    independent = (test * p.log() + (1 - test) * (1 - p).log()).sum(-1)
    out = {"independent Bernoulli (ML)": mean_se(independent)}
    for K in (10, 50):
        out[f"mixture of {K} Bernoullis"] = mixture(train, test, K, "bernoulli", steps)
    return out


def frey_baselines(steps, out_dir):
    train = load_dataset("frey", "train").x.flatten(1)
    test = load_dataset("frey", "test").x.flatten(1)
    out = {}
    for cov in ("diagonal", "full"):
        params = baselines.fit_gaussian(train.double(), covariance=cov)
        out[f"Gaussian, {cov} covariance (ML)"] = mean_se(baselines.gaussian_log_likelihood(params, test.double()))
    out["mixture of 10 diagonal Gaussians"] = mixture(train, test, 10, "gaussian", steps)
    cfg = config.load(Path("examples/configs/frey_gaussian.toml"))
    start = time.perf_counter()
    run.train_run(cfg, out_dir / "frey_vae", progress=False)
    ev = run.evaluate_run(out_dir / "frey_vae", iw_samples=5000, progress=False)
    out["VAE, gaussian-decoder (ELBO)"] = ev["estimators"]["analytic_elbo"]
    out["VAE, gaussian-decoder (IWAE k=5000)"] = {**ev["estimators"]["iwae_bound(k=5000)"],
                                                  "seconds": time.perf_counter() - start}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("runs/baselines"))
    p.add_argument("--steps", type=int, default=3000)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"mnist (static binarization; test binarized once)": mnist_baselines(args.steps),
               "frey (intensities in [0, 1]; 200 test faces)": frey_baselines(args.steps, args.out)}
    (args.out / "baselines.json").write_text(json.dumps(results, indent=2))
    for data, rows in results.items():
        print(data)
        for name, r in rows.items():
            print(f"  {name:<40} {r['mean']:10.2f} ± {r['se']:.2f}")


if __name__ == "__main__":
    main()
