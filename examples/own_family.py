"""A model family of your own, registered by name and trained, evaluated and plotted by the command line.

A family is a :class:`pyrovae.model.LatentVariableModel` with a Pyro ``model`` and ``guide``; the
command line also asks it for ``sample``, ``reconstruct``, ``encode`` (``loc``), ``decode_mean`` and
``latent_dim``. Everything else it asks (how a batch is passed, closed forms, which parameters are
the encoder's) has a default in the base class. This one is probabilistic PCA with an amortised
guide, in the notes' notation, per datapoint::

    z ~ N(0, I_L),   x ~ p(x | W z + b)          (the likelihood: Bernoulli logits by default)
    q(z|x) = N(μ_φ(x), diag σ²_φ(x)),  [μ, log σ] = A flatten(x) + c   (linear "encoder")

    python examples/own_family.py [--subset 2000] [--epochs 2]
"""
import argparse
import math
import sys

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.model import FAMILIES, LatentVariableModel


class LinearVAE(LatentVariableModel):
    """A linear decoder and a linear encoder: ``model(x)``, ``guide(x)``; x ``[batch, *input_shape]``."""

    def __init__(self, input_shape, latent_dim: int, *, likelihood="bernoulli", num_data=None):
        super().__init__(input_shape, likelihood, num_data=num_data)
        D, P = math.prod(self.input_shape), self.likelihood.num_params
        self.latent_dim = latent_dim
        self.encoder = nn.Linear(D, 2 * latent_dim)   # "encoder…" modules are φ for the gradient lab
        self.decoder = nn.Linear(latent_dim, P * D)
        self._check_decoder(self.decoder, latent_dim)

    def prior(self):
        """p(z) = N(0, I): batch [], event [L]."""
        zero = self.decoder.bias.new_zeros(self.latent_dim)
        return dist.Normal(zero, 1.0).to_event(1)

    def posterior(self, x):
        loc, log_scale = self.encoder(x.flatten(-len(self.input_shape))).chunk(2, -1)
        return dist.Normal(loc, log_scale.exp()).to_event(1)

    def likelihood_of(self, z):
        return self.likelihood(self._decoder_out(self.decoder(z)))

    def model(self, x):
        self._validate(x)
        pyro.module("decoder", self.decoder)
        with self._plate(x):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood_of(z), obs=x)

    def guide(self, x):
        self._validate(x)
        pyro.module("encoder", self.encoder)
        with self._plate(x):
            pyro.sample("z", self.posterior(x))

    @torch.no_grad()
    def encode(self, x):
        q = self.posterior(x).base_dist
        return {"loc": q.loc, "scale": q.scale}

    @torch.no_grad()
    def decode_mean(self, z):
        return self.likelihood.mean(self._decoder_out(self.decoder(z)))

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode_mean(self.encode(x)["loc"])

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True):
        z = self.prior().sample((n,))
        return self.decode_mean(z) if mean else self.likelihood_of(z).sample()

    def describe(self) -> str:
        return "\n".join(["p(z)   = N(0, I)", f"p(x|z) = {self.likelihood.describe().replace('f_θ(z)', 'W z + b')}",
                          "q(z|x) = N(A x + c)"])


if "linear" not in FAMILIES:  # `model.family = "linear"` in a config, once this module is imported
    FAMILIES.register("linear", LinearVAE)


def main(argv=None) -> int:
    from pyrovae.app.cli import main as pyrovae

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="runs/linear")
    args = p.parse_args(argv)
    return pyrovae(["train", "--out", args.out, "--force", "--set", "model.family=linear",
                    "--set", "model.latent_dim=2", "--set", f"data.subset={args.subset}",
                    "--set", f"train.epochs={args.epochs}"]) or pyrovae(["evaluate", args.out, "--iw-samples", "100",
                                                                       "--test-size", "500"])


if __name__ == "__main__":
    sys.exit(main())
