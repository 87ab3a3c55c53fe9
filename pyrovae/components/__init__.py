"""Components of a VAE: small objects that return torch/Pyro distributions or networks.

=================  =========================================  ==============================
module             what                                       registry (names in a config)
=================  =========================================  ==============================
``priors``         p(z): ``forward() -> Distribution``         :data:`PRIORS`
``likelihoods``    p(x|z) from the decoder's output            :data:`LIKELIHOODS`
``guides``         q(z|x) from the encoder's features          :data:`GUIDES`
``nets``           encoder/decoder pairs, activations          :data:`NETS`, :data:`ACTIVATIONS`
``distributions``  fast closed forms for the hot path          (none)
=================  =========================================  ==============================
"""
from .guides import GUIDES, VariationalFamily
from .likelihoods import LIKELIHOODS, Likelihood
from .nets import ACTIVATIONS, NETS
from .priors import PRIORS, Prior

__all__ = ["PRIORS", "LIKELIHOODS", "GUIDES", "NETS", "ACTIVATIONS", "Prior", "Likelihood", "VariationalFamily"]
