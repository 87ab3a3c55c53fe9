"""pyrovae: variational autoencoders written as Pyro probabilistic programs.

The generative model p(z) p(x|z) and the guide q(z|x) are Pyro programs whose parameters are
neural networks; priors, likelihoods and variational families are swapped by name or by object.

Layers, each importing only those above it in this list: ``registry``/``checks``/``errors``/
``files``; ``components`` and ``data``; ``model``; ``inference``; ``lab``; ``app`` (the CLI).
"""
from . import data
from .components import GUIDES, LIKELIHOODS, NETS, PRIORS, Likelihood, Prior, VariationalFamily
from .data import DATASETS
from .errors import PyrovaeError
from .inference import ELBOS, MeanField_ELBO, OptimizerSettings, StepSettings, Term, estimators, train
from .inference.estimators import (analytic_elbo, analytic_sites, closed_form_elbo, elbo_parts, iwae_bound,
                                   log_weights, mc_elbo)
from .model import FAMILIES, VAE, ConditionalVAE, SemiSupervisedVAE, TwoLayerVAE
from .registry import Registry

__version__ = "0.1.0"

__all__ = [
    "VAE", "ConditionalVAE", "SemiSupervisedVAE", "TwoLayerVAE", "FAMILIES", "PRIORS", "LIKELIHOODS", "GUIDES", "NETS",
    "ELBOS", "DATASETS", "Registry", "Prior", "Likelihood",
    "VariationalFamily", "estimators", "mc_elbo", "analytic_elbo", "analytic_sites", "closed_form_elbo",
    "iwae_bound", "elbo_parts", "log_weights", "train", "Term", "OptimizerSettings", "StepSettings", "MeanField_ELBO",
    "data", "PyrovaeError",
]
