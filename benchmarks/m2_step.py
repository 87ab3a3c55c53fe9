"""M2's unlabeled step — the decoder summed over the ten labels — timed against Pyro's example.

One process, one minibatch of 100 dynamically binarized MNIST images, M2 of
examples/configs/mnist-m2.toml's shape (784-500-50, softplus, Bernoulli; q(y|x) enumerated),
``loss_and_grads`` of each variant in turn (alternating, after a warm-up), median milliseconds
of ``--repeats`` rounds of ``--steps`` steps each:

* Pyro's ``examples/vae/ss_vae_M2.py`` SSVAE under ``TraceEnum_ELBO`` as that example builds it
  (``--pyro-example DIR``: the folder holding ss_vae_M2.py and its utils/; left out without it),
* pyrovae's M2 with its encoder on the concatenation [x, onehot(y)] (pyrovae before the
  blockwise first layer), under ``TraceEnum_ELBO``,
* pyrovae's M2 (the first layer block by block: x through the 784×500 block once, not ten times),
  under ``TraceEnum_ELBO``,
* the same under pyrovae's fast step (the sum over labels without Pyro's traces, checked equal to
  ``TraceEnum_ELBO`` at its first call).

    python benchmarks/m2_step.py --pyro-example /path/to/pyro/examples/vae --threads 2
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import types

import pyro
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

import pyrovae
from pyrovae.data import load_dataset
from pyrovae.inference.faststep import FastStep
from pyrovae.model.conditional import concat


class ConcatenatedM2(pyrovae.SemiSupervisedVAE):
    """pyrovae's M2 with q(z|x,y)'s encoder applied to the concatenation, as it was defined."""

    def features(self, x, y):
        flat = x.flatten(-len(self.input_shape))
        return self.encoder(concat(flat, self.one_hot(y, flat)))


def ours(cls, fast: bool):
    torch.manual_seed(0)
    m2 = cls((28, 28), 50, 10, hidden=(500,))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    step = FastStep.for_elbo(elbo) if fast else elbo
    return lambda x: step.loss_and_grads(m2.model, m2.guide, x), m2


def pyros(folder: str):
    """Pyro's example's SSVAE, its guide enumerated in parallel, its TraceEnum_ELBO."""
    sys.path.insert(0, folder)
    sys.modules.setdefault("visdom", types.SimpleNamespace(Visdom=None))  # imported by the example, unused here
    from ss_vae_M2 import SSVAE
    torch.manual_seed(0)
    vae = SSVAE(z_dim=50, hidden_layers=[500], config_enum="parallel", aux_loss_multiplier=46)
    guide = config_enumerate(vae.guide, "parallel", expand=True)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    return lambda x: elbo.loss_and_grads(vae.model, guide, x.flatten(1)), vae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pyro-example", help="the folder of Pyro's examples/vae (ss_vae_M2.py and utils/)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x = load_dataset("mnist", "train").x[:100]
    x = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    variants = {}
    if args.pyro_example:
        variants["Pyro ss_vae_M2.py, TraceEnum_ELBO"] = pyros(args.pyro_example)
    variants["pyrovae, concatenated encoder, TraceEnum_ELBO"] = ours(ConcatenatedM2, False)
    variants["pyrovae, blockwise encoder, TraceEnum_ELBO"] = ours(pyrovae.SemiSupervisedVAE, False)
    variants["pyrovae, blockwise encoder, fast step"] = ours(pyrovae.SemiSupervisedVAE, True)

    def run(name, n):
        step, module = variants[name]
        for _ in range(n):
            step(x)
            for q in module.parameters():
                q.grad = None

    for name in variants:
        run(name, 3)
    ms = {name: [] for name in variants}
    for r in range(args.repeats):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            start = time.perf_counter()
            run(name, args.steps)
            ms[name].append((time.perf_counter() - start) / args.steps * 1e3)
    print(f"# {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}, pyro {pyro.__version__}; "
          f"M2's unlabeled step (loss_and_grads), batch 100, K = 10; median of {args.repeats} rounds of {args.steps} steps")
    base = statistics.median(ms[next(iter(variants))])
    for name, v in ms.items():
        print(f"{name:<50}{statistics.median(v):>9.2f} ms{base / statistics.median(v):>8.2f}x")


if __name__ == "__main__":
    main()
