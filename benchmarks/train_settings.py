"""What each of the trainer's speed settings buys: pyrovae.train as it is, and with one setting
undone at a time, against the hand-written loop of train_throughput.py, in one process, in
alternation (median of ``--repeats`` epochs each).

Settings undone, one per variant (``now, again`` is a second trainer with nothing undone: how
far apart two identical trainers land is the noise floor of the comparison):

* ``plain Adam``            torch.optim.Adam without ``fused=True``
* ``generic distributions`` the prior as Normal(0, 1).expand([L]).to_event(1) and the likelihood as
                            Bernoulli(logits).to_event(2), instead of pyrovae.distributions
* ``data check per batch``  the VAE checks every batch (shape, finite, range), not the data set once
* ``validate every step``   Pyro's validation on at every step, not the first only
* ``a plate per step``      the VAE builds its ``pyro.plate`` on every call, not once per batch size
* ``Pyro's TraceMeanField`` (``mean-field`` only) pyro.infer.TraceMeanField_ELBO, which computes
                            log p(z) and log q(z|x) it does not use, instead of MeanField_ELBO

    python benchmarks/train_settings.py --objective mean-field --subset 10240 [--repeats 15]
"""
from __future__ import annotations

import argparse
import types

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

from pyrovae.data import load_dataset
from pyrovae.likelihoods import Likelihood
from pyrovae.priors import FixedPrior
from train_throughput import BATCH, alternate, hand_written, pyrovae_trainer


def plain_adam(tr):
    tr.optimizer = torch.optim.Adam(list(tr.params.values()), lr=tr.lr)


def generic_distributions(tr):
    vae = tr.pair[0].__self__
    vae.prior.forward = types.MethodType(FixedPrior.forward, vae.prior)
    vae.likelihood.forward = types.MethodType(Likelihood.forward, vae.likelihood)


def check_every_batch(tr):
    vae = tr.pair[0].__self__
    vae._validate = vae.check_data


def validate_every_step(tr):
    tr.validate = True


def plate_per_step(tr):
    vae = tr.pair[0].__self__
    vae._plate = lambda x: pyro.plate("data", x.shape[0])


def pyros_mean_field(tr):
    tr.elbo = TraceMeanField_ELBO(max_plate_nesting=tr.elbo.max_plate_nesting)


VARIANTS = {"now": None, "now, again": None, "plain Adam": plain_adam, "generic distributions": generic_distributions,
            "data check per batch": check_every_batch, "validate every step": validate_every_step,
            "a plate per step": plate_per_step, "Pyro's TraceMeanField": pyros_mean_field}


def trainer(data, objective, undo):
    tr = pyrovae_trainer(data, objective)
    if undo is not None:
        undo(tr)
    return tr


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=["mean-field", "trace"], default="mean-field")
    p.add_argument("--subset", type=int, default=10240)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    data = load_dataset("mnist", "train", binarize="dynamic", subset=args.subset)
    variants = {k: v for k, v in VARIANTS.items() if args.objective == "mean-field" or v is not pyros_mean_field}
    runs = {name: trainer(data, args.objective, undo).run_epoch for name, undo in variants.items()}
    runs["hand-written"] = hand_written(data, args.objective, fused=False)
    med = {k: wall for k, (wall, _) in alternate(runs, len(data), args.repeats).items()}
    print(f"# {args.objective}, {args.subset} MNIST images (dynamic binarization), batch {BATCH}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} alternating epochs")
    print(f"{'variant':<24}{'images/s':>10}{'vs now':>8}{'vs hand-written':>17}")
    for k, v in med.items():
        print(f"{k:<24}{v:>10.0f}{v / med['now']:>8.3f}{v / med['hand-written']:>17.3f}")


if __name__ == "__main__":
    main()
