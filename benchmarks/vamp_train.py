"""VampPrior training speed: the mixture density's slices bounded by its [groups, K, L] temporary
only (before issue 15's third session: 4M numbers) or by both temporaries at 2 MiB (now).

The built-in VAE 784-200-200-50 tanh with a VampPrior of K = 500 pseudo-inputs, mean-field ELBO
(log p(z) − log q(z) at the draw: no closed-form KL to a mixture), batch 100, 5,000 MNIST images
(dynamic binarization), 2 threads; two trainers with their own parameters timed in alternating
epochs (the first a warm-up), the median images per second of each.

    PYROVAE_DATA_DIR=../shared/data python benchmarks/vamp_train.py
"""
import statistics
import time

import pyro
import torch

import pyrovae
from pyrovae.components.distributions import DiagonalNormalMixture
from pyrovae.inference.train import Trainer
from pyrovae.data import load_dataset

torch.set_num_threads(2)
data = load_dataset("mnist", "train", binarize="dynamic", subset=5000)
now_lp = DiagonalNormalMixture.log_prob
def before_lp(self, z):
    K, L = self.locs.shape
    saved = self.block
    self.block = (1 << 22) * max(L, z.shape[-2] if z.dim() >= 3 else 1) // L  # the old rule's step: 4M // (K L)
    try:
        return now_lp(self, z)
    finally:
        self.block = saved


def trainer():
    pyro.clear_param_store(); pyro.set_rng_seed(0)
    vae = pyrovae.VAE((28, 28), 50, hidden=(200, 200), activation="tanh", prior="vamp", prior_options={"components": 500})
    t = Trainer(vae.model, vae.guide, data, batch_size=100, lr=1e-3, elbo="mean-field", num_particles=1, test_data=None, device="cpu")
    t.store = pyro.get_param_store().get_state()
    return t


runs = {"before": (trainer(), before_lp), "now": (trainer(), now_lp)}
times = {k: [] for k in runs}
for r in range(4):
    for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
        t, lp = runs[name]
        DiagonalNormalMixture.log_prob = lp
        pyro.clear_param_store(); pyro.get_param_store().set_state(t.store)
        start = time.perf_counter(); t.run_epoch(r + 1); el = time.perf_counter() - start
        if r: times[name].append(len(data) / el)
for k, v in times.items():
    print(f"{k:<7} {statistics.median(v):8.0f} images/s  (median of {len(v)} epochs, 2 threads, batch 100, K = 500, mean-field)")
print(f"now / before: {statistics.median(times['now']) / statistics.median(times['before']):.2f}")
