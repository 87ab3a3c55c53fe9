"""The model families: Pyro model/guide pairs whose parameters are neural networks.

==================  ========================================  ==========================================
module              class                                     model / guide
==================  ========================================  ==========================================
``vae``             :class:`VAE`                              p(z) p(x|z) / q(z|x)
``conditional``     :class:`ConditionalVAE`                   p(z) p(x|z,y) / q(z|x,y), y given
``semisupervised``  :class:`SemiSupervisedVAE` (M2)           p(y) p(z) p(x|z,y) / q(y|x) q(z|x,y), y
                                                              observed or enumerated; classifier q(y|x)
``hierarchical``    :class:`TwoLayerVAE`                      p(z2) p(z1|z2) p(x|z1) / q(z1|x) q(z2|x)
``base``            :class:`LatentVariableModel`              what they share: likelihood, decoder
                                                              output shapes, data checks, the plate
==================  ========================================  ==========================================

Each takes its priors, likelihoods and variational families by registered name or as objects
(``PRIORS``, ``LIKELIHOODS``, ``GUIDES``), and builds its networks from :mod:`pyrovae.components.nets`.
"""
from ..registry import Registry
from .base import LatentVariableModel
from .conditional import ConditionalVAE
from .hierarchical import TwoLayerVAE
from .semisupervised import SemiSupervisedVAE
from .vae import VAE

#: name → model family (``model.family`` in a config): ``vae``, ``cvae``, ``m2``, ``2layer``
FAMILIES = Registry("model family", LatentVariableModel)
FAMILIES.register("vae", VAE)
FAMILIES.register("cvae", ConditionalVAE)
FAMILIES.register("m2", SemiSupervisedVAE)
FAMILIES.register("2layer", TwoLayerVAE)

__all__ = ["VAE", "ConditionalVAE", "SemiSupervisedVAE", "TwoLayerVAE", "LatentVariableModel", "FAMILIES"]
