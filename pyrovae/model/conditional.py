"""The conditional VAE (Sohn et al. 2015): a VAE given a label y, as a Pyro model/guide pair.

Generative model (``model(x, y)``), for each datapoint i of the plate ``data``::

    z_i ~ p(z)                            prior, event_shape [L]
    x_i ~ p(x | f_θ(z_i, y_i))            likelihood, event_shape input_shape

Guide (``guide(x, y)``), amortised by an encoder that reads the image and the label::

    z_i ~ q_φ(z | x_i, y_i) = family(e_φ(x_i, y_i))     reparameterized

y is not modelled: both programs condition on it. ELBO(x | y) = E_q[log p(x|z,y)] − KL(q(z|x,y) ‖ p(z))
≤ log p(x|y). Networks: e_φ = MLP(concat(flatten(x), onehot(y))) ``[..., D + K] -> [..., H]``,
f_θ = MLP(concat(z, onehot(y))) ``[..., L + K] -> [..., P, *input_shape]`` (the hidden sizes reversed).

Shapes: x is ``[batch, *input_shape]``; y is an index ``[batch]`` (int64, values 0..K−1) or one-hot
``[batch, K]``; z is ``[batch, L]`` (``[particles, batch, L]`` under vectorized particles, and a
label broadcasts against any such leading dimensions, e.g. an enumerated ``[K, 1]``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..components.guides import GUIDES
from ..components.nets import MLPDecoder, MLPEncoder
from ..errors import DataError, InputTypeError
from .base import LatentVariableModel


def concat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dimension after broadcasting all the others:
    ``[..., a]``, ``[..., b]`` → ``[..., a + b]`` (e.g. z ``[K, B, L]`` with a label ``[K, 1, K]``)."""
    lead = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(lead + t.shape[-1:]) for t in tensors], -1)


class ConditionalVAE(LatentVariableModel):
    """A conditional VAE: ``cvae.model(x, y)`` and ``cvae.guide(x, y)`` for ``pyro.infer.SVI``.

    Args:
        input_shape: an int (flat data) or a tuple such as ``(28, 28)``; x is ``[batch, *input_shape]``.
        latent_dim: L, the size of z.
        num_classes: K, the number of labels; y is an index ``[batch]`` or one-hot ``[batch, K]``.
        prior, likelihood, guide: a registered name (``PRIORS``, ``LIKELIHOODS``, ``GUIDES``) or a
            component object; ``*_options`` are the named component's options. A prior evaluated
            through q(z|x) at pseudo-inputs (``vamp``) does not apply: q needs a label too.
        hidden, activation: the MLPs' hidden sizes (the decoder's reversed) and activation
            (default softplus).
        num_data: if given, the data plate has this size and a minibatch's log-densities are
            scaled by ``num_data / batch``.
    """

    takes_labels = True
    labelled = True

    def __init__(self, input_shape: Union[int, Sequence[int]], latent_dim: int, num_classes: int, *,
                 prior="normal", likelihood="bernoulli", guide="diagonal", hidden=(400,),
                 activation: Optional[str] = None, prior_options=None, likelihood_options=None,
                 guide_options=None, num_data: Optional[int] = None):
        latent_dim = checks.positive_int("latent_dim", latent_dim)
        num_classes = checks.positive_int("num_classes", num_classes)
        super().__init__(input_shape, likelihood, likelihood_options, num_data)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        act = activation or "softplus"
        D, L, K = math.prod(self.input_shape), latent_dim, num_classes
        self.encoder = MLPEncoder((D + K,), hidden, act)
        self.decoder = MLPDecoder(L + K, self.input_shape, self.likelihood.num_params, hidden, act)
        self.family = GUIDES.build(guide, guide_options, latent_dim=L, feature_dim=self.encoder.out_features)
        self.prior = self._build_prior(prior, prior_options, L, needs_encoder_of_x=False)
        self._check_decoder(self.decoder, L + K)

    # -- labels -------------------------------------------------------------------------------------
    def one_hot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """y as one-hot ``[..., K]`` in ``like``'s dtype: an index ``[...]`` is encoded, a one-hot passes."""
        if y.is_floating_point():
            return y.to(like.dtype)
        return F.one_hot(y, self.num_classes).to(like.dtype)

    def label_index(self, y: torch.Tensor) -> torch.Tensor:
        """y as an index ``[...]`` (int64): a one-hot ``[..., K]`` is decoded by its argmax."""
        return y.argmax(-1) if y.is_floating_point() else y

    def _check_labels(self, y, batch: int) -> torch.Tensor:
        """DataError unless y is an index [batch] in 0..K−1 or a one-hot [batch, K]."""
        K = self.num_classes
        if not isinstance(y, torch.Tensor):
            raise InputTypeError(f"y must be a torch.Tensor of labels, an index [batch] or one-hot [batch, {K}], "
                                 f"got {type(y).__name__}")
        if y.is_floating_point():
            if tuple(y.shape) != (batch, K):
                raise DataError(f"a one-hot y must have shape [{batch}, {K}] (x's batch, num_classes), "
                                f"got {list(y.shape)}")
            if not (((y == 0) | (y == 1)).all() and (y.sum(-1) == 1).all()):
                raise DataError("a floating-point y must be one-hot: 0s and 1s, one 1 per row")
            return y
        if y.dtype in (torch.bool, torch.uint8) or y.is_complex():
            raise DataError(f"y must be int64 class indices or a one-hot float tensor, got dtype {y.dtype}")
        if tuple(y.shape) != (batch,):
            raise DataError(f"an index y must have shape [{batch}] (x's batch), got {list(y.shape)}")
        if y.numel() and (y.min() < 0 or y.max() >= K):
            raise DataError(f"y must hold class indices in 0..{K - 1}, got values in "
                            f"[{y.min().item()}, {y.max().item()}]")
        return y

    def check_data(self, x, y) -> torch.Tensor:
        """DataError for x of the wrong shape, dtype or support, or labels y that do not match it."""
        self._check_x(x)
        self._check_labels(y, x.shape[0])
        return x

    # -- the pieces -------------------------------------------------------------------------------
    def features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """e_φ(x, y) = MLP(concat(flatten(x), onehot(y))): ``[..., H]``, the leading dimensions broadcast.

        The first layer is applied block by block, W [x; e_y] + b = W_x x + W_y e_y + b (one weight,
        sliced; W_y e_y is column y of W_y): x's rows go through the D×H block once, however many
        labels y broadcasts them against — M2's guide enumerates K labels for each x, and the
        concatenated input would send every x through it K times. Equal to the MLP on the
        concatenation up to the order of float sums (tests/test_families.py)."""
        flat = x.flatten(-len(self.input_shape))
        net = getattr(self.encoder, "net", None)
        if not isinstance(net, nn.Sequential) or not len(net) or not isinstance(net[0], nn.Linear):
            return self.encoder(concat(flat, self.one_hot(y, flat)))  # an encoder of another kind: as defined
        weight, D = net[0].weight, flat.shape[-1]
        labels = y.to(flat.dtype) @ weight[:, D:].T if y.is_floating_point() else weight[:, D:].T[y]
        return net[1:](F.linear(flat, weight[:, :D], net[0].bias) + labels)

    def posterior(self, x: torch.Tensor, y: torch.Tensor):
        """q_φ(z|x,y): batch_shape the broadcast of x's and y's leading dimensions, event [L]."""
        return self.family(self.features(x, y))

    def likelihood_of(self, z: torch.Tensor, y: torch.Tensor):
        """p(x|z,y): batch_shape the broadcast of ``z.shape[:-1]`` and y's, event ``input_shape``."""
        return self.likelihood(self._decoder_out(self.decoder(concat(z, self.one_hot(y, z)))))

    # -- Pyro model and guide -----------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """p(z) p(x|z,y): registers decoder, likelihood and prior; observes x [batch, *input_shape]."""
        self._validate(x, y)
        self._register_decoder()
        with self._plate(x):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood_of(z, y), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """q_φ(z|x,y): registers the encoder and family, samples z by reparameterization."""
        self._validate(x, y)
        self._register_encoder()
        with self._plate(x):
            pyro.sample("z", self.posterior(x, y))

    def _register_decoder(self):
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        pyro.module("prior", self.prior)

    def _register_encoder(self):
        pyro.module("encoder", self.encoder)
        pyro.module("family", self.family)

    # -- what one does with a trained model -----------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """The parameters of q(z|x,y): ``loc`` [batch, L] and the family's spread."""
        self.check_data(x, y)
        return self.family.params(self.features(x, y))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor) -> dict:
        """The parameters of p(x|z,y) for z [..., L] and y [...] (or one-hot [..., K])."""
        return self.likelihood.params(self._decoder_out(self.decoder(concat(z, self.one_hot(y, z)))))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x|z,y], shape [..., *input_shape]."""
        return self.likelihood.mean(self._decoder_out(self.decoder(concat(z, self.one_hot(y, z)))))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | z = μ_φ(x, y), y]: the decoder mean at the posterior mean, shape of x."""
        return self.decode_mean(self.encode(x, y)["loc"], y)

    def _labels(self, n: int, label) -> torch.Tensor:
        """n labels [n] (int64 on the model's device): ``label`` an int (all alike), a tensor [n]
        of indices, or None (drawn uniformly)."""
        device = self.prior.zero.device
        if label is None:
            return torch.randint(self.num_classes, (n,), device=device)
        if isinstance(label, torch.Tensor):
            return self.label_index(self._check_labels(label.to(device), n))
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < self.num_classes:
            raise DataError(f"label must be a class index in 0..{self.num_classes - 1}, a tensor of {n} labels "
                            f"or None, got {label!r}")
        return torch.full((n,), label, dtype=torch.long, device=device)

    @torch.no_grad()
    def sample(self, n: int, *, label=None, mean: bool = True) -> torch.Tensor:
        """n new x of the chosen class(es): z ~ p(z), then E[x|z,y] (``mean=True``) or x ~ p(x|z,y).

        ``label``: an int (every draw of that class), a tensor of n labels, or None (classes drawn
        uniformly). Shape [n, *input_shape].
        """
        n = checks.positive_int("n", n)
        y = self._labels(n, label)
        z = self.prior().sample((n,))
        return self.decode_mean(z, y) if mean else self.likelihood_of(z, y).sample()

    def describe(self) -> str:
        """The model in the lecture notes' notation."""
        return "\n".join([
            f"p(z)     = {self.prior.describe()}",
            f"p(x|z,y) = {self.likelihood.describe().replace('(z)', '(z, y)')}",
            f"q(z|x,y) = {self.family.describe().replace('(x)', '(x, y)')}",
            f"x ∈ R^{'×'.join(map(str, self.input_shape))}, z ∈ R^{self.latent_dim}, y ∈ {{0..{self.num_classes - 1}}}",
        ])
