"""What the trainer's settings cost: pyrovae.train as it was (Pyro validation on every step,
a particle plate of size 1) and as it is (validation on the first step only, no plate for
r = 1), against the hand-written loop of train_throughput.py, in one process, in alternation.

    python benchmarks/train_settings.py --objective mean-field --subset 10240 [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch

import pyrovae
from pyrovae.data import load_dataset
from pyrovae.train import ELBOS, Trainer
from train_throughput import BATCH, HIDDEN, LATENT, HandWrittenVAE, hand_written_epoch


def trainer(data, objective, old: bool) -> Trainer:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = pyrovae.VAE((28, 28), LATENT, hidden=(HIDDEN,))
    tr = Trainer(vae.model, vae.guide, data, batch_size=BATCH, lr=1e-3, elbo=objective, num_particles=1,
                 test_data=None, device="cpu", validate=old)
    if old:
        cls, options = ELBOS[objective]
        tr.elbo = cls(num_particles=1, vectorize_particles=True, max_plate_nesting=1, **options)
    return tr


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=["mean-field", "trace"], default="mean-field")
    p.add_argument("--subset", type=int, default=10240)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    data = load_dataset("mnist", "train", binarize="dynamic", subset=args.subset)
    before, now = trainer(data, args.objective, True), trainer(data, args.objective, False)
    hand = HandWrittenVAE()
    opt = torch.optim.Adam(hand.parameters(), lr=1e-3)
    runs = {"before": before.run_epoch, "now": now.run_epoch,
            "hand-written": lambda e: hand_written_epoch(hand, opt, data, e, args.objective)}
    rates = {k: [] for k in runs}
    for r in range(args.repeats + 1):  # round 0 warms up
        for name, run in runs.items():
            start = time.perf_counter()
            run(r + 1)
            if r:
                rates[name].append(len(data) / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.objective}, {args.subset} images, {torch.get_num_threads()} threads: " +
          ", ".join(f"{k} {v:.0f} x/s (ratio {v / med['hand-written']:.3f})" for k, v in med.items()))


if __name__ == "__main__":
    main()
