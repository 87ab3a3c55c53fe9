"""pyrovae: variational autoencoders written as Pyro probabilistic programs.

The generative model p(z) p(x|z) and the guide q(z|x) are Pyro programs whose parameters are
neural networks; priors, likelihoods and variational families are swapped by name or by object.
"""
from .guides import GUIDES, VariationalFamily
from .likelihoods import LIKELIHOODS, Likelihood
from .model import VAE
from .priors import PRIORS, Prior
from . import estimators
from .estimators import analytic_elbo, analytic_sites, closed_form_elbo, elbo_parts, iwae_bound, log_weights, mc_elbo
from . import data
from .train import train
from .elbos import MeanField_ELBO

__version__ = "0.1.0"

__all__ = [
    "VAE", "PRIORS", "LIKELIHOODS", "GUIDES", "Prior", "Likelihood", "VariationalFamily",
    "estimators", "mc_elbo", "analytic_elbo", "analytic_sites", "closed_form_elbo", "iwae_bound",
    "elbo_parts", "log_weights", "train", "MeanField_ELBO", "data",
]
