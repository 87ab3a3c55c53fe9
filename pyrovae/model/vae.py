"""The VAE as a Pyro model/guide pair.

Generative model (``model``), for each datapoint i of the plate ``data``::

    z_i ~ p(z)                      prior, event_shape [L]
    x_i ~ p(x | f_θ(z_i))           likelihood, event_shape input_shape

Guide (``guide``), the variational family, amortised by the encoder::

    z_i ~ q_φ(z | x_i) = family(e_φ(x_i))     reparameterized

Shapes: x is ``[batch, *input_shape]``; z is ``[batch, L]`` (``[particles, batch, L]`` when an
ELBO vectorizes particles). Training maximises the ELBO
E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)) ≤ log p(x) with any Pyro ELBO.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import pyro
import torch
from torch import nn

from .. import checks
from ..components.guides import GUIDES, DiagonalNormal
from ..components.likelihoods import Likelihood
from ..components.nets import NETS, ConvDecoder
from ..components.priors import StandardNormal
from ..errors import InputError, InputTypeError
from .base import LatentVariableModel, component_name


class VAE(LatentVariableModel):
    """A variational autoencoder: ``vae.model(x)`` and ``vae.guide(x)`` for ``pyro.infer.SVI``.

    Args:
        input_shape: an int D (flat data) or a tuple such as ``(28, 28)`` or ``(C, H, W)`` (e.g.
            ``(3, 32, 32)`` for RGB); x is ``[batch, *input_shape]``. ``pyrovae train`` reads it
            from the data.
        latent_dim: L, the size of z.
        prior, likelihood, guide: a registered name (see ``PRIORS``, ``LIKELIHOODS``, ``GUIDES``)
            or a component object; ``*_options`` are the named component's constructor options.
        hidden, activation, net: the built-in networks (``net`` is ``"mlp"``, or ``"conv"`` for
            images whose sides halve to about 4×4: see ``pyrovae.components.nets.conv_plan``).
        encoder, decoder: any ``nn.Module`` of shapes ``[..., *input_shape] -> [..., H]`` and
            ``[..., L] -> [..., P, *input_shape]`` instead of the built-in ones.
        num_data: if given, the data plate has this size and a minibatch's log-densities are
            scaled by ``num_data / batch`` so the ELBO is that of the whole data set.
    """

    def __init__(self, input_shape: Union[int, Sequence[int]], latent_dim: int, *,
                 prior="normal", likelihood="bernoulli", guide="diagonal",
                 hidden=(400,), activation: Optional[str] = None, net: str = "mlp",
                 encoder: Optional[nn.Module] = None, decoder: Optional[nn.Module] = None,
                 prior_options=None, likelihood_options=None, guide_options=None,
                 num_data: Optional[int] = None):
        latent_dim = checks.positive_int("latent_dim", latent_dim)
        super().__init__(input_shape, likelihood, likelihood_options, num_data)
        self.latent_dim = latent_dim
        self.encoder, self.decoder = self._networks(net, hidden, activation, encoder, decoder)
        self.family = GUIDES.build(guide, guide_options, latent_dim=self.latent_dim,
                                   feature_dim=self._feature_dim())
        self.prior = self._build_prior(prior, prior_options, self.latent_dim)
        self._check_decoder(self.decoder, self.latent_dim)

    # -- construction ---------------------------------------------------------------------
    def _networks(self, net, hidden, activation, encoder, decoder):
        for name, module in (("encoder", encoder), ("decoder", decoder)):
            if module is not None and not isinstance(module, nn.Module):
                raise InputTypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
        if encoder is not None and decoder is not None:
            return encoder, decoder
        default_enc, default_dec = NETS.build(net, input_shape=self.input_shape, latent_dim=self.latent_dim,
                                              num_params=self.likelihood.num_params, hidden=hidden,
                                              activation=activation)
        return encoder or default_enc, decoder or default_dec

    starts_output_bias = True

    @torch.no_grad()
    def init_output_bias(self, x: torch.Tensor) -> None:
        """Start p(x|z) at the data's mean: set the decoder's last bias b so that, were the last
        layer's weights zero, E[x | z] = x̄ for every z (its weights are left as they are).

        ``x``: training data [N, *input_shape], or their mean x̄ [*input_shape]. b is the
        likelihood's :meth:`~pyrovae.components.likelihoods.Likelihood.output_for_mean` of x̄:
        logit(clamp(x̄, 10⁻³, 1 − 10⁻³)) for the Bernoulli (the marginal log-odds, Burda et al.'s
        start), loc = x̄ for the Gaussians and the Laplace, a numerical inverse of the mean for the
        continuous Bernoulli and the discretized logistic; a decoded scale's or mixture weights'
        biases are kept. An MLP decoder (last layer an ``nn.Linear`` with P·D outputs) gets one
        bias per pixel; the conv decoder's last layer has one bias per output channel, so it gets
        that of the per-channel mean of x̄ (over H and W). Why: the decoder otherwise has to reach
        the mean image's logits (−5 to −7 at MNIST's border) through its weights, which with tanh
        networks and the VampPrior collapses the posterior (docs/design.md).
        InputError for another decoder or a likelihood with no ``output_for_mean``; DataError for x
        of the wrong shape or outside the likelihood's support.
        """
        layer, per_pixel = self._output_layer()
        mean, P = self._data_mean(x), self.likelihood.num_params
        if per_pixel:  # bias [P·D]: the output [P, *input_shape] itself
            out = self.likelihood.output_for_mean(mean, layer.bias.reshape((P,) + self.input_shape))
            layer.bias.copy_(out.flatten())
            return
        C = layer.bias.numel() // P  # bias [P·C]: one number per channel, the same at every pixel
        pixels = mean.numel() // C

        def spread(t):  # [..., C] → [..., *input_shape], constant over each channel's pixels
            return t.unsqueeze(-1).expand(*t.shape, pixels).reshape(*t.shape[:-1], *self.input_shape)
        out = self.likelihood.output_for_mean(spread(mean.reshape(C, pixels).mean(-1)), spread(layer.bias.reshape(P, C)))
        layer.bias.copy_(out.reshape(P, C, pixels)[..., 0].flatten())

    def _output_layer(self) -> tuple:
        """(the decoder's last layer, whether its bias is per pixel) for :meth:`init_output_bias`."""
        P, D = self.likelihood.num_params, math.prod(self.input_shape)
        net = getattr(self.decoder, "net", self.decoder)
        last = net[-1] if isinstance(net, nn.Sequential) and len(net) else None
        if isinstance(last, nn.Linear) and last.bias is not None and last.out_features == P * D:
            return last, True
        if isinstance(self.decoder, ConvDecoder):
            return last, False
        raise InputError(f"init_output_bias needs a decoder whose last layer is an nn.Linear with bias and "
                         f"P·D = {P * D} outputs (the built-in 'mlp'), or the built-in 'conv' decoder; "
                         f"got {type(self.decoder).__name__} ending in {type(last).__name__}")

    def _data_mean(self, x) -> torch.Tensor:
        """x̄ [*input_shape] of data x [N, *input_shape] (or x̄ itself), checked against the likelihood."""
        batch = x.unsqueeze(0) if isinstance(x, torch.Tensor) and tuple(x.shape) == self.input_shape else x
        self.likelihood.check_range(*checks.data_tensor(batch, self.input_shape))
        param = next(self.decoder.parameters())
        return batch.to(param).mean(0)

    def _feature_dim(self) -> int:
        h = self._probe(self.encoder, self.input_shape)
        if h.dim() != 2 or h.shape[0] != 2:
            raise InputError(f"encoder must map [batch, {', '.join(map(str, self.input_shape))}] to "
                             f"[batch, features], got output shape {list(h.shape)} for a batch of 2")
        return h.shape[-1]

    # -- the pieces -------------------------------------------------------------------------
    def posterior(self, x: torch.Tensor):
        """q_φ(z|x): a distribution with batch_shape ``x.shape[:-len(input_shape)]``, event [L]."""
        return self.family(self.encoder(x))

    def likelihood_of(self, z: torch.Tensor):
        """p(x|z): a distribution with batch_shape ``z.shape[:-1]``, event ``input_shape``."""
        return self.likelihood(self._decoder_out(self.decoder(z)))

    # -- Pyro model and guide ----------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x|z): registers decoder, likelihood and prior; observes x [batch, *input_shape]."""
        self._validate(x)
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        pyro.module("prior", self.prior)
        if self.prior.uses_encoder:
            self._register_encoder()
        with self._plate(x):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood_of(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q_φ(z|x): registers the encoder and family, samples z by reparameterization."""
        self._validate(x)
        self._register_encoder()
        with self._plate(x):
            pyro.sample("z", self.posterior(x))

    def _register_encoder(self):
        pyro.module("encoder", self.encoder)
        pyro.module("family", self.family)

    # -- what one does with a trained VAE ----------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> dict:
        """The parameters of q(z|x) — the latent factors of x: ``loc`` [batch, L] and the family's spread."""
        self.check_data(x)
        return self.family.params(self.encoder(x))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> dict:
        """The parameters of p(x|z) for z [..., L], e.g. ``logits`` or ``loc``/``scale`` [..., *input_shape]."""
        return self.likelihood.params(self._decoder_out(self.decoder(z)))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z], shape [..., *input_shape]."""
        return self.likelihood.mean(self._decoder_out(self.decoder(z)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = μ_φ(x)]: the decoder mean at the posterior mean, shape of x."""
        return self.decode_mean(self.encode(x)["loc"])

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True) -> torch.Tensor:
        """n new x: z ~ p(z), then E[x|z] (``mean=True``) or x ~ p(x|z). Shape [n, *input_shape]."""
        z = self.prior().sample((checks.positive_int("n", n),))
        return self.decode_mean(z) if mean else self.likelihood_of(z).sample()

    # -- the closed form of the lecture notes (see estimators.closed_form_elbo) -----------------
    def check_closed_form(self) -> None:
        """Raise ValueError unless p(z) = N(0, I), q is diagonal Gaussian and p(x|z) has a hand-written density."""
        problems = []
        if type(self.prior) is not StandardNormal:
            problems.append(f"prior {component_name(self.prior)!r} (needs 'normal')")
        if type(self.family) is not DiagonalNormal:
            problems.append(f"guide {component_name(self.family)!r} (needs 'diagonal')")
        if type(self.likelihood).log_density is Likelihood.log_density:
            problems.append(f"likelihood {component_name(self.likelihood)!r} (no hand-written density)")
        if problems:
            raise InputError("closed_form_elbo has no closed form for " + "; ".join(problems))

    def posterior_params(self, x: torch.Tensor):
        """(μ_φ(x), σ_φ(x)), each [batch, L], of the diagonal Gaussian guide (with gradients)."""
        self.check_data(x)
        q = self.family.params(self.encoder(x))
        return q["loc"], q["scale"]

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) by the likelihood's hand-written formula: z [..., batch, L] → [..., batch]."""
        return self.likelihood.log_density(self._decoder_out(self.decoder(z)), x)

    def describe(self) -> str:
        """The model in the lecture notes' notation."""
        return "\n".join([
            f"p(z)   = {self.prior.describe()}",
            f"p(x|z) = {self.likelihood.describe()}",
            f"q(z|x) = {self.family.describe()}",
            f"x ∈ R^{'×'.join(map(str, self.input_shape))}, z ∈ R^{self.latent_dim}",
        ])
