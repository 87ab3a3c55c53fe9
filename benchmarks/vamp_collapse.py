"""Why the VampPrior collapsed with tanh networks (issue 15): short runs that show the cause.

One run = one VAE of examples/configs/mnist_vamp.toml's shape (784-300-300-40, Bernoulli,
dynamically binarized MNIST) trained by ``pyrovae.train`` on a subset, with one thread; after
every epoch it prints the test ELBO, its reconstruction and KL parts, and what the encoder does:

* ``sd_x``   mean over the L coordinates of the spread (std over test images) of μ_φ(x),
* ``sd_u``   the same over the K pseudo-inputs, μ_φ(u_k),
* ``σ_x``    the mean posterior scale σ_φ(x),
* ``|m_x|``  the mean over coordinates of |mean over test images of μ_φ(x)|: a common offset,
* ``sat``    the fraction of the decoder's first hidden units (at z ~ q(z|x)) that pass < 2 % of
             a gradient (tanh: |tanh a| > 0.99),
* ``u``      the range and mean of the pseudo-inputs' values.

``--output-bias data`` starts the decoder's last bias at logit(mean training image).

``sd_x → 0`` is posterior collapse (q(z|x) the same for every x): the KL to *any* prior of the
form 1/K Σ q(z|u_k) is then exactly 0, whatever that shared q is.

    python benchmarks/vamp_collapse.py --activation tanh --prior vamp            # collapses
    python benchmarks/vamp_collapse.py --activation tanh --prior normal          # does not
    python benchmarks/vamp_collapse.py --activation softplus --prior vamp        # does not
    python benchmarks/vamp_collapse.py --activation tanh --prior vamp --warmup 1000   # β = 0.001: still
    python benchmarks/vamp_collapse.py --activation tanh --prior vamp --output-bias data  # does not

Options: --subset (training images), --test (test images), --epochs, --lr, --warmup (KL warm-up
epochs), --components, --pseudo-mean (initial value of the pseudo-inputs), --seed.
"""
from __future__ import annotations

import argparse
import time

import torch

import pyrovae
from pyrovae.data import load_dataset


def build(args) -> pyrovae.VAE:
    """The VAE of mnist_vamp.toml with the run's activation, prior and pseudo-input start."""
    torch.manual_seed(args.seed)
    options = {"components": args.components} if args.prior == "vamp" else None
    vae = pyrovae.VAE((28, 28), 40, hidden=[300, 300], activation=args.activation, prior=args.prior,
                      prior_options=options)
    if args.prior == "vamp" and args.pseudo_mean is not None:
        with torch.no_grad():
            vae.prior.pseudo_inputs.normal_(args.pseudo_mean, 0.01)
    return vae


@torch.no_grad()
def encoder_spread(vae, x) -> dict:
    """How much μ_φ(·) varies over the test images and over the pseudo-inputs, and σ_φ(x)."""
    qx = vae.encode(x)
    z = qx["loc"] + qx["scale"] * torch.randn_like(qx["scale"])
    row = {"sd_x": qx["loc"].std(0).mean().item(), "σ_x": qx["scale"].mean().item(),
           "|m_x|": qx["loc"].mean(0).abs().mean().item(), "sat": saturated(vae, z)}
    if args_prior_is_vamp(vae):
        u = vae.prior.pseudo_inputs
        row.update({"sd_u": vae.encode(u)["loc"].std(0).mean().item(),
                    "u_min": u.min().item(), "u_max": u.max().item(), "u_mean": u.mean().item()})
    return row


def saturated(vae, z) -> float:
    """The fraction of the decoder's first hidden units, at z, whose activation passes less than
    2 % of a gradient: act'(a) < 0.02 at the pre-activation a = W z + b (tanh: |tanh a| > 0.99)."""
    with torch.enable_grad():
        a = vae.decoder.net[0](z).detach().requires_grad_()
        (slope,) = torch.autograd.grad(vae.decoder.net[1](a).sum(), a)
    return (slope < 0.02).float().mean().item()


def data_mean_output_bias(vae, train) -> None:
    """Set the decoder's last bias to logit(mean training image), the usual start for a Bernoulli
    decoder (clamped to [1e-3, 1 - 1e-3]): the decoder then starts at the marginal fit."""
    p = train.x.float().mean(0).flatten().clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        vae.decoder.net[-1].bias.copy_(torch.logit(p))


def args_prior_is_vamp(vae) -> bool:
    return hasattr(vae.prior, "pseudo_inputs")


def run(args) -> list:
    torch.set_num_threads(1)
    train = load_dataset("mnist", "train", binarize="dynamic", subset=args.subset)
    test = load_dataset("mnist", "test", binarize="static", subset=args.test)
    vae = build(args)
    if args.output_bias == "data":
        data_mean_output_bias(vae, train)
    rows = []
    print(f"{args.activation} {args.prior} lr={args.lr} warmup={args.warmup} K={args.components} "
          f"pseudo_mean={args.pseudo_mean} output_bias={args.output_bias} subset={args.subset} seed={args.seed}")
    print(" epoch   test ELBO    recon       KL     sd_x   σ_x    |m_x|   sat    sd_u    u_min  u_max  u_mean   s")
    show = {"epoch": 0, **encoder_spread(vae, test.x)}
    _print(show, float("nan"), float("nan"), float("nan"), 0.0)

    def report(history):
        r = history[-1]
        spread = encoder_spread(vae, test.x)
        rows.append({**r, **spread})
        _print({"epoch": r["epoch"], **spread}, r["test_elbo"], r["reconstruction"], r["kl"], r["seconds"])

    start = time.perf_counter()
    pyrovae.train(vae.model, vae.guide, train, epochs=args.epochs, batch_size=100, lr=args.lr,
                  test_data=test, seed=args.seed, progress=False, callback=report, kl_warmup=args.warmup)
    print(f"total {time.perf_counter() - start:.0f} s")
    return rows


def _print(s, elbo, recon, kl, seconds):
    nan = float("nan")
    print(f"{s['epoch']:6d} {elbo:10.2f} {recon:9.2f} {kl:9.3f} {s['sd_x']:8.4f} {s['σ_x']:6.3f} {s['|m_x|']:7.3f} {s['sat']:5.3f} "
          f"{s.get('sd_u', nan):7.4f} {s.get('u_min', nan):7.3f} {s.get('u_max', nan):6.3f} "
          f"{s.get('u_mean', nan):6.3f} {seconds:5.1f}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activation", default="tanh")
    p.add_argument("--prior", default="vamp")
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--components", type=int, default=500)
    p.add_argument("--pseudo-mean", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-bias", choices=["default", "data"], default="default")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
