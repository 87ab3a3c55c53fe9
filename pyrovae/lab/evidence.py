"""Experiments on models whose evidence log p(x) is known exactly (``pyrovae exact``).

* Probabilistic PCA trained by pyrovae as a VAE with a linear decoder and an isotropic learned σ
  (``hidden=()``, ``likelihood="gaussian-learned"`` with ``per_pixel=False``, ``guide="fullrank"``):
  its ELBO and IWAE(k) against the closed-form maximum-likelihood log-likelihood of Tipping &
  Bishop (1999) on the same data, and against the exact log p(x) of the VAE's own parameters.
* The lecture notes' toy model z ~ Uniform(a, b), x ~ N(μ, z²): a learned guide's ELBO and
  IWAE(k) against log p(x) by quadrature, as k grows; the gap is plotted against k.

Everything in nats per test datapoint.
"""
from __future__ import annotations

import pyro
import torch

from ..data import load_splits
from ..inference.estimators import analytic_elbo, iwae_bound, mc_elbo
from ..inference.train import train
from ..model import VAE
from .exact import make_toy_guide, make_toy_model, ppca_log_evidence, ppca_mle, toy_log_evidence
from .report import mean_se

KS = (1, 10, 100, 1000, 5000)


def _double(params: dict) -> dict:
    return {k: v.double() if torch.is_tensor(v) else v for k, v in params.items()}


def ppca_experiment(*, epochs: int = 100, iw_samples: int = 5000, test_size: int = 1000, seed: int = 0) -> dict:
    """Train a linear-Gaussian VAE on the ``ppca`` data set; compare with the exact likelihoods."""
    train_split, test_split = load_splits("ppca", seed=seed)
    x_test = test_split.x[:test_size]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    latent_dim = test_split.params["W"].shape[1]
    vae = VAE(test_split.shape[0], latent_dim, hidden=(), likelihood="gaussian-learned",
              likelihood_options={"scale": 1.0, "per_pixel": False}, guide="fullrank")
    history = train(vae.model, vae.guide, train_split, epochs=epochs, batch_size=250, lr=0.01, progress=False)
    W, b = vae.decoder.net[0].weight.detach().double(), vae.decoder.net[0].bias.detach().double()
    sigma = vae.likelihood.isotropic_scale()
    x64 = x_test.double()
    with torch.no_grad():
        ml = ppca_log_evidence(x64, **ppca_mle(train_split.x.double(), latent_dim))
        own = ppca_log_evidence(x64, W, b, sigma)
        elbo = analytic_elbo(vae.model, vae.guide, x_test, num_particles=100).double()
        iwae = iwae_bound(vae.model, vae.guide, x_test, num_samples=iw_samples).double()
    return {
        "data": f"ppca: {len(train_split)} train / {len(x_test)} test points, D = {test_split.shape[0]}, "
                f"L = {latent_dim}",
        "epochs": epochs, "iw_samples": iw_samples, "final_train_elbo": history[-1]["train_elbo"],
        "tipping_bishop_ml": mean_se(ml),
        "true_parameters": mean_se(ppca_log_evidence(x64, **_double(test_split.params))),
        "vae_exact_log_px": mean_se(own), "vae_elbo": mean_se(elbo), "vae_iwae": mean_se(iwae),
        # paired, datapoint by datapoint
        "gap_ml_minus_vae_log_px": mean_se(ml - own),
        "gap_vae_log_px_minus_elbo": mean_se(own - elbo),
        "gap_vae_log_px_minus_iwae": mean_se(own - iwae),
    }


def toy_experiment(*, epochs: int = 30, ks=KS, test_size: int = 1000, seed: int = 0) -> dict:
    """Fit the toy model's guide (the model is fixed at the generating a, b, μ); ELBO and IWAE(k) vs log p(x)."""
    train_split, test_split = load_splits("toy", seed=seed)
    p = test_split.params
    model, guide = make_toy_model(p["a"], p["b"], p["mu"]), make_toy_guide(p["a"], p["b"], p["mu"])
    pyro.clear_param_store()
    train(model, guide, train_split, epochs=epochs, batch_size=250, lr=0.05, seed=seed, progress=False)
    x = test_split.x[:test_size].double()
    with torch.no_grad():
        log_px = toy_log_evidence(x, p["a"], p["b"], p["mu"])
        gaps = {k: mean_se(log_px - iwae_bound(model, guide, x, num_samples=k)) for k in ks}
        return {
            "data": f"toy: z ~ Uniform({p['a']}, {p['b']}), x ~ N({p['mu']}, z²); {len(x)} test points",
            "log_px": mean_se(log_px),
            "elbo_gap": mean_se(log_px - mc_elbo(model, guide, x, num_particles=100)),
            "iwae_gap": {str(k): g for k, g in gaps.items()},
        }


def format_result(result: dict) -> str:
    """The two experiments as text, in nats per test datapoint (± standard error)."""
    p, t = result["ppca"], result["toy"]
    f = lambda v: f"{v['mean']:+.4f} ± {v['se']:.4f}"
    rows = [("Tipping & Bishop ML log-likelihood", p["tipping_bishop_ml"]),
            ("VAE: exact log p(x) of its parameters", p["vae_exact_log_px"]),
            ("VAE: ELBO", p["vae_elbo"]), (f"VAE: IWAE (k={p['iw_samples']})", p["vae_iwae"])]
    lines = [p["data"]] + [f"  {name:<40}{f(v)}" for name, v in rows]
    lines += [f"  paired gaps: ML − VAE log p(x) {f(p['gap_ml_minus_vae_log_px'])}, log p(x) − ELBO "
              f"{f(p['gap_vae_log_px_minus_elbo'])}, log p(x) − IWAE {f(p['gap_vae_log_px_minus_iwae'])}",
              t["data"], f"  log p(x) (quadrature) {f(t['log_px'])};  log p(x) − ELBO {f(t['elbo_gap'])}"]
    lines += [f"  log p(x) − IWAE, k = {k:<5} {f(g)}" for k, g in t["iwae_gap"].items()]
    return "\n".join(lines)
