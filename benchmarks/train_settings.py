"""What each of the trainer's speed settings buys: one pyrovae trainer, run with each setting
undone in turn (and restored after), against the hand-written loop of train_throughput.py, in
one process, in alternation: rounds of one block of ``--block`` SVI steps per variant, on the
same pre-drawn minibatches (so no data drawing is timed), median over ``--repeats`` rounds.

All variants run the *same* trainer (same parameters, optimizer state, memory), so a variant's
difference from ``now`` is the setting and the machine's noise, not one instance against
another; ``now, again`` is the same trainer with nothing undone, timed in its own slot: how far
it lands from ``now`` is the noise floor. Settings undone, one per variant:

* ``plain Adam``            torch.optim.Adam without ``fused=True`` (a second optimizer on the same parameters)
* ``generic distributions`` the prior as Normal(0, 1).expand([L]).to_event(1) and the likelihood as
                            Bernoulli(logits).to_event(2), instead of pyrovae.components.distributions
* ``data check per batch``  the VAE checks every batch (shape, finite, range), not the data set once

(The VAE builds its ``pyro.plate`` on every call since the layout redesign: reusing one plate per
batch size measured 0-2%, within this benchmark's noise floor, so it was removed.)
* ``validate every step``   Pyro's validation on at every step, not the first only
* ``Pyro's TraceMeanField`` (``mean-field`` only) pyro.infer.TraceMeanField_ELBO, which computes
                            log p(z) and log q(z|x) it does not use, instead of MeanField_ELBO

    python benchmarks/train_settings.py --objective mean-field [--block 10] [--repeats 60]
"""
from __future__ import annotations

import argparse
import itertools
import types
from contextlib import contextmanager

import torch
from pyro.infer import TraceMeanField_ELBO

from pyrovae.data import load_dataset
from pyrovae.components.likelihoods import Likelihood
from pyrovae.components.priors import FixedPrior
from train_throughput import BATCH, alternate, hand_written, pyrovae_trainer


class FixedBatches:
    """The first ``n`` minibatches of epoch 1 of ``data``, drawn once, standing in for the data:
    every "epoch" is these n batches; ``len`` is the data set's, so the N/B scale is unchanged."""

    def __init__(self, data, n: int):
        self.size, self.list = len(data), list(itertools.islice(data.batches(BATCH, epoch=1), n))

    def __len__(self):
        return self.size

    def batches(self, batch_size, epoch):
        return iter(self.list)


def undone_settings(tr, objective) -> dict:
    """variant → the (object, attribute, value) swaps that undo one setting of trainer ``tr``."""
    vae = tr.pair[0].__self__
    variants = {
        "now": [], "now, again": [],
        "plain Adam": [(tr, "optimizer", torch.optim.Adam(list(tr.params.values()), lr=tr.lr))],
        "generic distributions": [(vae.prior, "forward", types.MethodType(FixedPrior.forward, vae.prior)),
                                  (vae.likelihood, "forward", types.MethodType(Likelihood.forward, vae.likelihood))],
        "data check per batch": [(vae, "_validate", vae.check_data)],
        "validate every step": [(tr, "validate", True)],
    }
    if objective == "mean-field":
        variants["Pyro's TraceMeanField"] = [(tr, "elbo", TraceMeanField_ELBO(max_plate_nesting=tr.elbo.max_plate_nesting))]
    return variants


@contextmanager
def swapped(swaps):
    """Set each ``obj.name = value`` for the duration; restore what was there."""
    saved = [(obj, name, obj.__dict__.get(name, swapped)) for obj, name, _ in swaps]
    for obj, name, value in swaps:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, old in saved:
            if old is swapped:
                delattr(obj, name)  # it was the class's: uncover it again
            else:
                setattr(obj, name, old)


def epoch_with(tr, swaps):
    def run(epoch):
        with swapped(swaps):
            tr.run_epoch(epoch)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=["mean-field", "trace"], default="mean-field")
    p.add_argument("--block", type=int, default=10, help="SVI steps per timed block")
    p.add_argument("--repeats", type=int, default=60)
    args = p.parse_args()
    data = load_dataset("mnist", "train", binarize="dynamic", subset=60000)
    tr = pyrovae_trainer(data, args.objective)
    tr.data = blocks = FixedBatches(data, args.block)
    runs = {name: epoch_with(tr, swaps) for name, swaps in undone_settings(tr, args.objective).items()}
    runs["hand-written"] = hand_written(blocks, args.objective, fused=False)
    med = {k: wall for k, (wall, _) in alternate(runs, args.block * BATCH, args.repeats).items()}
    print(f"# {args.objective}, MNIST (dynamic binarization, N = 60000), batch {BATCH}, {torch.get_num_threads()} "
          f"threads, one trainer, median of {args.repeats} alternating blocks of {args.block} steps")
    print(f"{'variant':<24}{'images/s':>10}{'vs now':>8}{'vs hand-written':>17}")
    for k, v in med.items():
        print(f"{k:<24}{v:>10.0f}{v / med['now']:>8.3f}{v / med['hand-written']:>17.3f}")


if __name__ == "__main__":
    main()
