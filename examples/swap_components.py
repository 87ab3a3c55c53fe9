"""Swap the prior, the likelihood and the guide by name or by object; nothing else changes.

    python examples/swap_components.py [--epochs 3] [--subset 10000]
"""
import argparse

import pyro
import pyro.distributions as dist
import torch

import pyrovae
from pyrovae.components.priors import Prior


class StudentTPrior(Prior):
    """A prior of our own: p(z) = Π_l StudentT(z_l; ν, 0, 1). One class, passed as an object."""

    def __init__(self, latent_dim, df=3.0):
        super().__init__(latent_dim)
        self.df = df

    def forward(self):
        return dist.StudentT(self.df, self.zero.expand(self.latent_dim), 1.0).to_event(1)  # on the model's device

    def describe(self):
        return f"StudentT(ν={self.df})^{self.latent_dim}"


VARIANTS = {
    "notes' VAE": dict(),
    "mixture prior, K=10": dict(prior="mixture", prior_options={"components": 10}),
    "VampPrior, K=50": dict(prior="vamp", prior_options={"components": 50}),
    "Student-t prior (object)": dict(prior=StudentTPrior(10)),
    "continuous Bernoulli": dict(likelihood="continuous-bernoulli"),
    "IAF guide, 2 flows": dict(guide="iaf", guide_options={"flows": 2}),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--subset", type=int, default=10000)
    args = p.parse_args()
    train, test = pyrovae.data.load_splits("mnist", binarize="dynamic", subset=args.subset)
    x = test.x[:500]
    print(f"MNIST, dynamic binarization; test ELBO on 500 test images after {args.epochs} epochs "
          f"on {len(train)} (nats per datapoint)")
    for name, components in VARIANTS.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = pyrovae.VAE((28, 28), 10, hidden=(200,), **components)
        pyrovae.train(vae.model, vae.guide, train, epochs=args.epochs, batch_size=100, progress=False)
        with torch.no_grad():
            elbo = pyrovae.mc_elbo(vae.model, vae.guide, x, num_particles=10).mean()
        print(f"  {name:<26} {elbo:9.2f}   p(z) = {vae.prior.describe()}; p(x|z) = {vae.likelihood.describe()}; "
              f"q(z|x) = {vae.family.describe()}")
    print("(the continuous Bernoulli is a density on [0, 1]: its values are not comparable with the others)")


if __name__ == "__main__":
    main()
