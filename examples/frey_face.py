"""Frey Face with the notes' Gaussian decoder p(x|z) = N(μ_x(z), diag σ_x²(z)).

Trains on the fixed split (1765 train / 200 test faces, torch.randperm with seed 0), then
writes reconstructions, samples and, for a 2-D latent, the manifold of faces.

    python examples/frey_face.py [--epochs 200] [--latent-dim 2] [--out runs/frey]
"""
import argparse
from pathlib import Path

import pyro

import pyrovae
from pyrovae.app import plots


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--latent-dim", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/frey"))
    args = p.parse_args()
    train, test = pyrovae.data.load_splits("frey")
    pyro.set_rng_seed(0)
    vae = pyrovae.VAE((28, 20), args.latent_dim, hidden=(200,), activation="tanh",
                      likelihood="gaussian-decoder", likelihood_options={"min_scale": 0.02})
    print(vae)
    history = pyrovae.train(vae.model, vae.guide, train, epochs=args.epochs, batch_size=100,
                            elbo="mean-field", test_data=test, progress=False)
    print(f"Frey Face (intensities in [0, 1], 200 test faces): test ELBO {history[-1]['test_elbo']:.1f} "
          f"nats per face after {args.epochs} epochs (a density: positive values are expected)")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in plots.plot_all(vae, args.out, test.x, None, history):
        print(path)


if __name__ == "__main__":
    main()
