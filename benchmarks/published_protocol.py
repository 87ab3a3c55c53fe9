"""The published protocol on dynamically binarized MNIST (Burda et al. 2015, one stochastic layer).

Network 784-200-200-50 with tanh, Bernoulli likelihood, Adam; the test log-likelihood is the
importance-weighted bound with k = 5000 over all 10,000 test images (binarized once, seed 1).
Three models: (i) Trace_ELBO, (ii) the IWAE objective with k = 5 (RenyiELBO, alpha = 0),
(iii) the VampPrior (K = 500 pseudo-inputs, softplus instead of tanh: see MODELS) trained with
Trace_ELBO after a 10-epoch KL warm-up.

Each writes a run dir under ``--out`` (config, checkpoint, metrics, plots, evaluation.json) and
a line of ``results.json``. Budgets are far below the papers' 3280 epochs: say so when quoting.

    python benchmarks/published_protocol.py --out runs/protocol [--epochs 100 --iwae-epochs 30 --vamp-epochs 60]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from pyrovae.app import config, run

BURDA = {"model": {"latent_dim": 50, "hidden": [200, 200], "activation": "tanh"},
         "data": {"dataset": "mnist", "binarize": "dynamic"},
         "train": {"batch_size": 100, "lr": 1e-3, "seed": 0}}
MODELS = {
    "vae": {"train": {"elbo": "trace"}},
    "iwae-k5": {"train": {"elbo": "iwae", "num_particles": 5}},
    # With tanh the VampPrior collapses from the first epoch (KL ≈ 0: the encoder maps every x and
    # every pseudo-input to the same q(z|·)), with or without a KL warm-up; with softplus, and a
    # 10-epoch warm-up as in Tomczak & Welling, it trains. The one departure from Burda's network.
    # the VampPrior's control: the same network and budget with the standard normal prior
    "vae-softplus": {"model": {"activation": "softplus"}, "train": {"elbo": "trace"}},
    "vamp": {"model": {"prior": "vamp", "prior_options": {"components": 500}, "activation": "softplus"},
             "train": {"elbo": "trace", "kl_warmup": 10}},
}


def merged(*dicts):
    out = {}
    for d in dicts:
        for section, values in d.items():
            out.setdefault(section, {}).update(values)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("runs/protocol"))
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--iwae-epochs", type=int, default=30)
    p.add_argument("--vamp-epochs", type=int, default=60)
    p.add_argument("--iw-samples", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=0, help="0 = all 10,000")
    p.add_argument("--only", nargs="*", default=list(MODELS))
    args = p.parse_args()
    epochs = {"vae": args.epochs, "iwae-k5": args.iwae_epochs, "vae-softplus": args.vamp_epochs,
              "vamp": args.vamp_epochs}
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.only:
        cfg = config.validate(merged(BURDA, MODELS[name], {"train": {"epochs": epochs[name]}}))
        start = time.perf_counter()
        summary = run.train_run(cfg, args.out / name, progress=False)
        train_s = time.perf_counter() - start
        ev = run.evaluate_run(args.out / name, iw_samples=args.iw_samples, test_size=args.test_size, progress=False)
        results[name] = {"epochs": epochs[name], "train_seconds": train_s, "eval_seconds": ev["seconds"],
                         "machine": machine, "data": ev["data"], "n_test": ev["n"],
                         "test_elbo": ev["estimators"]["analytic_elbo"],
                         "test_log_likelihood": ev["estimators"][f"iwae_bound(k={args.iw_samples})"],
                         "final_train_elbo": summary["final"]["train_elbo"]}
        args.out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
        print(name, json.dumps(results[name]), flush=True)


if __name__ == "__main__":
    main()
