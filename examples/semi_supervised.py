"""MNIST from a few labels: the M2 model of Kingma et al. (2014), written as a user's own Pyro
model/guide pair in the style of Pyro's examples/vae/ss_vae_M2.py, trained by pyrovae.train.

One run trains on the labeled pairs (x, y) and the unlabeled x together; each step maximises,
for a minibatch of the N_u unlabeled x and one of the N_l labeled pairs,

    N_u · [ mean U(x)                  the main pair on x alone, y summed out in the guide (elbo="enum")
          + (N_l / N_u) mean L(x, y)   Term(model, guide, (x_l, y_l))
          + α mean log q(y|x) ]        Term(model_classify, guide_classify, (x_l, y_l), weight=α·w)

each Term's minibatch scaled to its own data set's size and then by its weight, w = N_u / N_l: the
classifier's mean over the labeled minibatch counts α times the unlabeled minibatch's mean ELBO;
α = 0.1·N_u / N_l.

    python examples/semi_supervised.py [--labels 100] [--epochs 5] [--subset 10000]
"""
import argparse
import time

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import config_enumerate
from torch import nn

import pyrovae


def cat(*tensors):
    """Concatenate on the last dimension, broadcasting the others (an enumerated y is [10, 1, 10])."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], -1)


class SSVAE(nn.Module):
    """p(y) = Cat(1/10), p(z) = N(0, I), p(x|y,z) = Bernoulli(decoder(z, y));
    q(y|x) = Cat(encoder_y(x)), q(z|x,y) = N(encoder_z(x, y))."""

    def __init__(self, output_size=10, input_size=784, z_dim=50, hidden=500):
        super().__init__()
        self.output_size, self.z_dim = output_size, z_dim
        self.encoder_y = nn.Sequential(nn.Linear(input_size, hidden), nn.Softplus(), nn.Linear(hidden, output_size))
        self.encoder_z = nn.Sequential(nn.Linear(input_size + output_size, hidden), nn.Softplus(),
                                       nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim + output_size, hidden), nn.Softplus(),
                                     nn.Linear(hidden, input_size))

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        with pyro.plate("data"):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(batch_size, self.z_dim), 1.0).to_event(1))
            alpha_prior = xs.new_ones(batch_size, self.output_size) / self.output_size
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(cat(zs, ys))).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:   # unlabeled: q(y|x), enumerated under config_enumerate
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, scale = self.encoder_z(cat(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(scale) + 1e-5).to_event(1))

    def model_classify(self, xs, ys=None):
        """The auxiliary term log q(y|x) on labeled data (Pyro's example scales it inside by its
        aux_loss_multiplier; here the Term's weight does)."""
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            if ys is not None:
                pyro.sample("y_aux", dist.OneHotCategorical(logits=self.encoder_y(xs)), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass


def balanced(labels, n):
    """Indices of the first n/10 images of each digit."""
    return torch.cat([torch.nonzero(labels == k).squeeze(1)[: n // 10] for k in range(10)])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--labels", type=int, default=100, help="labeled images, the same number of each digit")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--subset", type=int, default=10000, help="training images used (labeled + unlabeled)")
    args = p.parse_args()
    train = pyrovae.data.load_dataset("mnist", "train", binarize="static", subset=args.subset)
    test = pyrovae.data.load_dataset("mnist", "test", binarize="static")
    x, y = train.x.flatten(1), F.one_hot(train.labels, 10).float()
    labeled = balanced(train.labels, args.labels)
    unlabeled = torch.ones(len(x), dtype=torch.bool).index_fill_(0, labeled, False)
    x_l, y_l = x[labeled], y[labeled]

    pyro.set_rng_seed(0)
    ss_vae = SSVAE()
    w = int(unlabeled.sum()) / len(labeled)
    alpha = 0.1 * w
    start = time.perf_counter()

    def report(history):
        with torch.no_grad():
            accuracy = (ss_vae.encoder_y(test.x.flatten(1)).argmax(-1) == test.labels).float().mean().item()
        print(f"epoch {history[-1]['epoch']}  ELBO {history[-1]['train_elbo']:8.2f}  "
              f"test accuracy {accuracy:.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)

    print(f"{len(labeled)} labeled, {int(unlabeled.sum())} unlabeled MNIST images; α = {alpha:g}, w = {w:g}")
    pyrovae.train(ss_vae.model, config_enumerate(ss_vae.guide, "parallel"), x[unlabeled], elbo="enum",
                  epochs=args.epochs, batch_size=100, lr=1e-3, progress=False, callback=report,
                  extra=[pyrovae.Term(ss_vae.model, ss_vae.guide, (x_l, y_l), elbo="trace"),
                         pyrovae.Term(ss_vae.model_classify, ss_vae.guide_classify, (x_l, y_l), elbo="trace",
                                      weight=alpha * w)])


if __name__ == "__main__":
    main()
