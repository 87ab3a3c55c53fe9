"""VampPrior training speed: the mixture density's slices bounded by its [groups, K, L] temporary
only (before issue 15's third session: 4M numbers) or by both temporaries at 2 MiB (now).

The built-in VAE 784-200-200-50 tanh with a VampPrior of K = 500 pseudo-inputs, mean-field ELBO
(log p(z) − log q(z) at the draw: no closed-form KL to a mixture), batch 100, 5,000 MNIST images
(dynamic binarization), 2 threads; two trainers with their own parameters timed in alternating
epochs by ``train_throughput.alternate`` (the first round a warm-up), the median images per second.

    PYROVAE_DATA_DIR=../shared/data python benchmarks/vamp_train.py [--repeats 3] [--threads 2]
"""
import argparse
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import alternate  # noqa: E402

import pyrovae  # noqa: E402
from pyrovae.components.distributions import DiagonalNormalMixture  # noqa: E402
from pyrovae.data import load_dataset  # noqa: E402
from pyrovae.inference.train import Trainer  # noqa: E402

NOW = DiagonalNormalMixture.log_prob
OLD_BLOCK = 1 << 22  # the old rule: slices of OLD_BLOCK // (K L) groups


def old_slicing(self, z):
    """log_prob with the old rule's slices: ``block`` set so that its step is OLD_BLOCK // (K L)."""
    K, L = self.locs.shape
    groups = z.shape[-2] if z.dim() >= 3 else 1
    n = z.numel() // (groups * L) if z.dim() >= 3 else 1  # rows per group, as log_prob reshapes them
    self.block = OLD_BLOCK // (K * L) * K * max(L, n)
    try:
        return NOW(self, z)
    finally:
        del self.block  # the class's again


def epoch_fn(data, density):
    """An epoch function of a trainer with its own parameters, its mixture density ``density``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = pyrovae.VAE((28, 28), 50, hidden=(200, 200), activation="tanh", prior="vamp",
                      prior_options={"components": 500})
    trainer = Trainer(vae.model, vae.guide, data, batch_size=100, lr=1e-3, elbo="mean-field", num_particles=1,
                      test_data=None, device="cpu")
    store = pyro.get_param_store().get_state()

    def run(epoch):
        DiagonalNormalMixture.log_prob = density
        pyro.clear_param_store()  # two trainers: each with its own parameters under the pair's names
        pyro.get_param_store().set_state(store)
        trainer.run_epoch(epoch)
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = load_dataset("mnist", "train", binarize="dynamic", subset=5000)
    try:
        rates = alternate({"before": epoch_fn(data, old_slicing), "now": epoch_fn(data, NOW)}, len(data), a.repeats)
    finally:
        DiagonalNormalMixture.log_prob = NOW
    for name, (wall, _) in rates.items():
        print(f"{name:<7} {wall:8.0f} images/s  (median of {a.repeats} epochs, {a.threads} threads, batch 100, "
              f"K = 500, mean-field)")
    print(f"now / before: {rates['now'][0] / rates['before'][0]:.2f}")


if __name__ == "__main__":
    main()
