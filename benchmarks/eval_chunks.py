"""The IWAE bound's time against its chunk size (particles per pass), beside Pyro's utility.

The VAE, images and timing of ``benchmarks/iwae_eval.py`` (one epoch on 10,000 images, 50 test
images, k = 5000, best of 2 alternating rounds), batches of 100 with 96 (the default on a 32 MiB
cache), 64, 48 and 32 particles per chunk, and Pyro's ``vectorized_importance_weights`` per image.

    python benchmarks/eval_chunks.py [--threads 1]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import iwae_eval as bench  # noqa: E402

import pyrovae  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    train = pyrovae.data.load_dataset("mnist", "train", binarize="dynamic", subset=10000)
    x = pyrovae.data.load_dataset("mnist", "test", binarize="dynamic").x[:50]
    vae = bench.trained_vae(train, 1)
    rows = [(f"batches of 100, {c} particles ({c * 100} rows) per chunk",
             (lambda c: lambda v, xx, k: bench.pyrovae_batches(v, xx, k, chunk_size=c))(c)) for c in (96, 64, 48, 32)]
    rows.append(("Pyro vectorized_importance_weights, per image", bench.pyro_per_image))
    for name, wall, cpu, value, n in bench.race(rows, vae, x, 5000, 2):
        print(f"{name:<52} {wall * 1000 / n:6.1f} s/1000 images (CPU {cpu * 1000 / n:6.1f})  bound {value.mean():.3f}")


if __name__ == "__main__":
    main()
