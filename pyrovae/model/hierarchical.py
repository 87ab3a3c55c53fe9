"""A VAE with two stochastic layers (Burda et al. 2015's architecture), as a Pyro model/guide pair.

Generative model (``model(x)``), for each datapoint i of the plate ``data``::

    z2_i ~ p(z2)                                   prior (``PRIORS``), event_shape [L2]
    z1_i ~ p(z1 | z2_i) = N(μ_θ(z2_i), diag σ²_θ(z2_i))                   event_shape [L1]
    x_i  ~ p(x | f_θ(z1_i))                        likelihood, event_shape input_shape

Guide (``guide(x)``), both layers read from one deterministic path x → h1 → μ1::

    z1_i ~ q_φ(z1 | x_i) = family1(h1(x_i))                 h1 = MLP(flatten(x)), hidden[0]
    z2_i ~ q_φ(z2 | x_i) = family2(h2(μ1(x_i)))             h2 = MLP(μ1), hidden[1]

or, with ``z2_reads="z1"``, Burda et al.'s z2_i ~ q_φ(z2 | z1_i) = family2(h2(z1_i)).

With the defaults the networks are Burda et al.'s: x → 200 → 200 → z1 (100) → 100 → 100 → z2 (50),
tanh units, and the generative path mirrored (z2 → 100 → 100 → z1, z1 → 200 → 200 → x).

The ELBO, per datapoint, with the closed-form KL at both layers:

    ELBO(x) = E_q[log p(x|z1)] − E_{q(z2|x)}[KL(q(z1|x) ‖ p(z1|z2))] − KL(q(z2|x) ‖ p(z2))

Both KLs are of diagonal Gaussians where the families are ``diagonal`` and p(z2) = N(0, I) (or any
prior with a registered KL), so ``analytic_elbo`` and ``MeanField_ELBO`` use them.

Why the second encoder reads μ1(x) and not a draw of z1 (Burda's q(z2|z1)): the middle layer's
closed form replaces E_q[log p(z1|z2) − log q(z1|x)] by −E[KL(q(z1|x) ‖ p(z1|z2))], which holds
only if z1 and z2 are independent under q given x (TraceMeanField_ELBO's precise condition: no
latent's parents in the model may be its descendants in the guide; z2, a parent of z1 in the
model, would be a descendant of z1 in the guide). With q(z2|z1) that KL estimate is biased, by
nats per datapoint. Here q(z1, z2 | x) = q(z1|x) q(z2|x): the same networks, a valid closed form at
both layers, and a guide that samples z2 before z1, in the model's order.

``z2_reads="z1"`` gives Burda's guide, q(z1|x) q(z2|z1) with z1 drawn first, for the bounds that
need no closed form (``trace``, ``iwae``): ``analytic_elbo`` then samples z1's term and keeps z2's
KL (:func:`~pyrovae.inference.traces.out_of_order`), and ``elbo="mean-field"`` refuses the pair.

Shapes: x ``[batch, *input_shape]``; z1 ``[batch, L1]``, z2 ``[batch, L2]`` (a particles dimension
in front under vectorized particles). ``latent_dim`` is L2: latent plots use the top layer.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import pyro
import torch

from .. import checks
from ..components.guides import GUIDES, DiagonalNormal, VariationalFamily
from ..components.nets import MLPDecoder, MLPEncoder, mlp
from ..errors import InputError
from .base import LatentVariableModel


#: what q(z2|·) reads: the mean μ1(x) of q(z1|x) (a closed form at both layers) or a draw of z1 (Burda's)
Z2_READS = ("mu1", "z1")


def _sizes(name: str, hidden) -> tuple:
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    return tuple(checks.positive_int(name, h) for h in hidden)


class TwoLayerVAE(LatentVariableModel):
    """A two-stochastic-layer VAE: ``model(x)`` p(z2) p(z1|z2) p(x|z1), ``guide(x)`` q(z1|x) q(z2|x)
    (or q(z1|x) q(z2|z1), ``z2_reads="z1"``).

    Args:
        input_shape: an int (flat data) or a tuple such as ``(28, 28)``; x is ``[batch, *input_shape]``.
        latent_dims: (L1, L2), the sizes of z1 (next to x) and z2 (the top).
        hidden: (hidden sizes x → z1, hidden sizes z1 → z2); each generative path mirrors its
            layer's (reversed).
        prior: p(z2), a registered name (``PRIORS``) or a prior object; ``prior_options`` its options.
            (``vamp`` evaluates q(z2|x) at its pseudo-inputs.)
        likelihood: p(x|z1), a name (``LIKELIHOODS``) or object; ``likelihood_options``.
        guide: the family of both layers, a name (``GUIDES``), or a pair (q(z1|x)'s, q(z2|x)'s) of
            names or family objects; ``guide_options`` apply to a name. The middle layer's KL has a
            closed form only with ``diagonal`` for q(z1|x).
        activation: of every hidden layer (Burda et al.: tanh).
        z2_reads: ``"mu1"`` (the default), q(z2|x) = family2(h2(μ1(x))), or ``"z1"``, Burda et al.'s
            q(z2|z1) = family2(h2(z1)) with z1 ~ q(z1|x) drawn first. With ``"z1"`` z1's KL has no
            closed form (module docstring): train it with ``trace`` or ``iwae``; ``analytic_elbo``
            then samples z1's term and keeps z2's closed form.
        num_data: if given, the data plate has this size and a minibatch's log-densities are
            scaled by ``num_data / batch``.
    """

    #: its sizes are per layer (``latent_dims``, ``hidden`` pairs), given in ``model.family_options``
    own_options = ("hidden", "latent_dim")

    def __init__(self, input_shape: Union[int, Sequence[int]], latent_dims: Sequence[int] = (100, 50), *,
                 hidden: Sequence[Sequence[int]] = ((200, 200), (100, 100)), prior="normal", likelihood="bernoulli",
                 guide="diagonal", activation: str = "tanh", prior_options=None, likelihood_options=None,
                 guide_options=None, z2_reads: str = "mu1", num_data: Optional[int] = None):
        if z2_reads not in Z2_READS:
            raise InputError(f"z2_reads must be one of {', '.join(map(repr, Z2_READS))} (what q(z2|·) reads), "
                             f"got {z2_reads!r}")
        self.z2_reads = z2_reads
        dims = tuple(latent_dims) if isinstance(latent_dims, (tuple, list)) else ()
        if len(dims) != 2:
            raise InputError(f"latent_dims must be a pair (L1, L2) of positive ints, got {latent_dims!r}")
        L1, L2 = (checks.positive_int("latent_dims", d) for d in dims)
        layers = tuple(hidden) if isinstance(hidden, (tuple, list)) else ()
        if len(layers) != 2:
            raise InputError(f"hidden must be a pair (sizes x → z1, sizes z1 → z2), got {hidden!r}")
        hidden1, hidden2 = (_sizes("hidden", h) for h in layers)
        super().__init__(input_shape, likelihood, likelihood_options, num_data)
        self.latent_dims, self.latent_dim = (L1, L2), L2
        # inference path: x → h1 → q(z1|x); μ1(x) → h2 → q(z2|x)
        self.encoder1 = MLPEncoder(self.input_shape, hidden1, activation)
        self.encoder2 = mlp((L1,) + hidden2, activation, final_activation=True)
        family1, family2 = self._guides(guide)
        self.family1 = GUIDES.build(family1, guide_options, latent_dim=L1, feature_dim=self.encoder1.out_features)
        self.family2 = GUIDES.build(family2, guide_options, latent_dim=L2, feature_dim=(hidden2 or (L1,))[-1])
        # generative path: z2 → g → p(z1|z2); z1 → f → p(x|z1)
        self.decoder2 = mlp((L2,) + tuple(reversed(hidden2)), activation, final_activation=True)
        self.conditional = DiagonalNormal(L1, (tuple(reversed(hidden2)) or (L2,))[-1])
        self.decoder1 = MLPDecoder(L1, self.input_shape, self.likelihood.num_params, hidden1, activation)
        self.prior = self._build_prior(prior, prior_options, L2)
        self._check_decoder(self.decoder1, L1)

    @staticmethod
    def _guides(guide) -> tuple:
        if isinstance(guide, (tuple, list)):
            if len(guide) != 2:
                raise InputError(f"guide must be one name or a pair (q(z1|x)'s, q(z2|x)'s), got {guide!r}")
            return tuple(guide)
        if isinstance(guide, VariationalFamily):
            raise InputError("a family object serves one layer: pass guide=(family for z1, family for z2)")
        return guide, guide

    # -- the pieces -------------------------------------------------------------------------------
    def _q1_params(self, x: torch.Tensor) -> dict:
        return self.family1.params(self.encoder1(x))

    def posterior(self, x: torch.Tensor, layer: int = 2):
        """q_φ(z2|x) (``layer=2``, the default) or q_φ(z1|x) (``layer=1``): batch_shape
        ``x.shape[:-len(input_shape)]``, event [L2] or [L1]. Under ``z2_reads="z1"`` the layer-2
        distribution is q(z2 | z1 = μ1(x)), at z1's mean (q(z2|x) is then a mixture without a density)."""
        q1 = self._q1_params(x)
        if layer == 1:
            return self.family1.distribution(**q1)
        if layer == 2:
            return self.family2(self.encoder2(q1["loc"]))
        raise InputError(f"layer must be 1 or 2, got {layer!r}")

    def conditional_prior(self, z2: torch.Tensor):
        """p_θ(z1|z2) = N(μ_θ(z2), diag σ²_θ(z2)): batch_shape ``z2.shape[:-1]``, event [L1]."""
        return self.conditional(self.decoder2(z2))

    def likelihood_of(self, z1: torch.Tensor):
        """p(x|z1): batch_shape ``z1.shape[:-1]``, event ``input_shape``."""
        return self.likelihood(self._decoder_out(self.decoder1(z1)))

    # -- Pyro model and guide -----------------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        """p(z2) p(z1|z2) p(x|z1): registers the generative networks and the prior; observes x."""
        self._validate(x)
        pyro.module("decoder1", self.decoder1)
        pyro.module("decoder2", self.decoder2)
        pyro.module("conditional", self.conditional)
        pyro.module("likelihood", self.likelihood)
        pyro.module("prior", self.prior)
        if self.prior.uses_encoder:
            self._register_encoders()
        with self._plate(x):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", self.conditional_prior(z2))
            pyro.sample("x", self.likelihood_of(z1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z2|x) q(z1|x), sampled in the model's order (``z2_reads="mu1"``), or q(z1|x) q(z2|z1)
        (``"z1"``), both by reparameterization."""
        self._validate(x)
        self._register_encoders()
        with self._plate(x):
            q1 = self._q1_params(x)
            if self.z2_reads == "z1":
                z1 = pyro.sample("z1", self.family1.distribution(**q1))
                pyro.sample("z2", self.family2(self.encoder2(z1)))
            else:
                pyro.sample("z2", self.family2(self.encoder2(q1["loc"])))
                pyro.sample("z1", self.family1.distribution(**q1))

    def _register_encoders(self):
        for name in ("encoder1", "family1", "encoder2", "family2"):
            pyro.module(name, getattr(self, name))

    # -- what one does with a trained model -----------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, layer: int = 2) -> dict:
        """The parameters of q(z2|x) (``layer=2``) or q(z1|x) (``layer=1``): ``loc`` [batch, L] and the spread."""
        self.check_data(x)
        q1 = self._q1_params(x)
        if layer == 1:
            return q1
        if layer == 2:
            return self.family2.params(self.encoder2(q1["loc"]))
        raise InputError(f"layer must be 1 or 2, got {layer!r}")

    @torch.no_grad()
    def decode(self, z2: torch.Tensor) -> dict:
        """The parameters of p(x|z1) at z1 = E[z1|z2], for top-layer latents z2 [..., L2]."""
        return self.likelihood.params(self._decoder_out(self.decoder1(self.conditional_prior(z2).mean)))

    @torch.no_grad()
    def decode_mean(self, z2: torch.Tensor) -> torch.Tensor:
        """E[x|z1] at z1 = E[z1|z2], shape [..., *input_shape]."""
        return self.likelihood.mean(self._decoder_out(self.decoder1(self.conditional_prior(z2).mean)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z1 = μ1(x)]: through the bottom layer, which keeps the detail; shape of x."""
        return self.likelihood.mean(self._decoder_out(self.decoder1(self.encode(x, layer=1)["loc"])))

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True) -> torch.Tensor:
        """n new x: z2 ~ p(z2), z1 ~ p(z1|z2), then E[x|z1] (``mean=True``) or x ~ p(x|z1). [n, *input_shape]."""
        z2 = self.prior().sample((checks.positive_int("n", n),))
        z1 = self.conditional_prior(z2).sample()
        return self.likelihood.mean(self._decoder_out(self.decoder1(z1))) if mean else self.likelihood_of(z1).sample()

    def describe(self) -> str:
        """The model in the lecture notes' notation."""
        L1, L2 = self.latent_dims
        given, reads = ("z1", "(z1)") if self.z2_reads == "z1" else ("x", "(μ1(x))")
        return "\n".join([
            f"p(z2)    = {self.prior.describe()}",
            "p(z1|z2) = N(μ_θ(z2), diag σ²_θ(z2))",
            f"p(x|z1)  = {self.likelihood.describe().replace('(z)', '(z1)')}",
            f"q(z1|x)  = {self.family1.describe()}",
            f"{f'q(z2|{given})':9}= {self.family2.describe().replace('(x)', reads)}",
            f"x ∈ R^{'×'.join(map(str, self.input_shape))}, z1 ∈ R^{L1}, z2 ∈ R^{L2}",
        ])
