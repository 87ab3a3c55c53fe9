"""Training throughput: pyrovae.train against a hand-written PyTorch loop of the same VAE.

Both run in this one process on the same MNIST tensor (dynamically binarized, re-drawn each
epoch), with the network of Pyro's VAE tutorial: 784-400-50, softplus, Bernoulli likelihood,
diagonal Gaussian guide, Adam, batch 256. The hand-written loop computes the same objective:

* ``mean-field``: −ELBO = BCE(x, f(z)) + ½ Σ(μ² + σ² − log σ² − 1)   (TraceMeanField_ELBO)
* ``trace``:      −ELBO = BCE(x, f(z)) + log q(z|x) − log p(z), z sampled  (Trace_ELBO)

The hand-written loop runs twice, with ``torch.optim.Adam`` as a user writes it (the issue's
baseline) and with the fused Adam that pyrovae.train uses (the same optimizer: the ratio
then measures the Pyro model/guide and SVI against plain PyTorch alone). All three are timed in
alternation (``--repeats`` rounds of one epoch each) and the median samples per second of each
is reported with the ratios — the machine is shared and noisy, so only ratios measured side by
side mean anything. Each round starts one loop later, so that no loop always follows the same one.

    python benchmarks/train_throughput.py [--subset 20000] [--repeats 9] [--threads 2]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import pyro
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

import pyrovae
from pyrovae.data import load_dataset
from pyrovae.inference.train import Trainer

LATENT, HIDDEN, BATCH = 50, 400, 256


class HandWrittenVAE(nn.Module):
    """The same network and parameterisation as pyrovae.VAE((28, 28), 50, hidden=(400,))."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(784, HIDDEN), nn.Softplus())
        self.loc, self.scale = nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)
        self.dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 784))

    def loss(self, x, objective: str):
        x = x.flatten(1)
        h = self.enc(x)
        mu, sigma = self.loc(h), F.softplus(self.scale(h)) + 1e-5
        z = mu + sigma * torch.randn_like(mu)
        bce = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="sum")
        if objective == "mean-field":
            kl = 0.5 * (mu ** 2 + sigma ** 2 - torch.log(sigma ** 2) - 1).sum()
        else:  # log q(z|x) − log p(z) at the sampled z, as a PyTorch user writes it
            kl = (Normal(mu, sigma).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum()
        return bce + kl


def hand_written_epoch(vae, opt, data, epoch, objective):
    for xb in data.batches(BATCH, epoch=epoch):
        loss = vae.loss(xb, objective) * (len(data) / xb.shape[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def hand_written(data, objective, fused: bool):
    """An epoch function of the hand-written loop with its own network and Adam."""
    vae = HandWrittenVAE()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=fused or None)
    return lambda epoch: hand_written_epoch(vae, opt, data, epoch, objective)


def pyrovae_trainer(data, objective) -> Trainer:
    """pyrovae's trainer of the same VAE, with its own parameters (a fresh param store)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = pyrovae.VAE((28, 28), LATENT, hidden=(HIDDEN,))
    return Trainer(vae.model, vae.guide, data, batch_size=BATCH, lr=1e-3, elbo=objective, num_particles=1,
                   test_data=None, device="cpu")


def alternate(runs: dict, n_images: int, repeats: int) -> dict:
    """Time ``runs`` (name → epoch function) in alternation, each round starting one run later
    (round 0 warms up); name → median images per second of (wall-clock, CPU time)."""
    rates = {name: ([], []) for name in runs}
    names = list(runs)
    for r in range(repeats + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name](r + 1)
            if r:
                rates[name][0].append(n_images / (time.perf_counter() - wall))
                rates[name][1].append(n_images / (time.process_time() - cpu))
    return {name: tuple(statistics.median(v) for v in pair) for name, pair in rates.items()}


def measure(objective, data, repeats):
    runs = {"pyrovae.train": pyrovae_trainer(data, objective).run_epoch,
            "hand-written": hand_written(data, objective, fused=False),
            "hand, fused Adam": hand_written(data, objective, fused=True)}
    return alternate(runs, len(data), repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", type=int, default=20000, help="training images per epoch")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", "train", binarize="dynamic", subset=args.subset)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}, "
          f"pyro {pyro.__version__}; {args.subset} MNIST images (dynamic binarization), batch {BATCH}, "
          f"median of {args.repeats} alternating epochs")
    names = ("pyrovae.train", "hand-written", "hand, fused Adam")
    print(f"{'objective':<12}" + "".join(f"{n:>18}" for n in names) + f"{'ratio':>8}{'ratio (fused)':>15}"
          f"{'CPU-time ratios':>18}")
    for objective in ("mean-field", "trace"):
        r = measure(objective, data, args.repeats)
        ratios = [r[names[0]][k] / r[n][k] for k in (0, 1) for n in names[1:]]
        print(f"{objective:<12}" + "".join(f"{r[n][0]:>14.0f} x/s" for n in names) +
              f"{ratios[0]:>8.3f}{ratios[1]:>15.3f}{ratios[2]:>10.3f}, {ratios[3]:.3f}")


if __name__ == "__main__":
    main()
