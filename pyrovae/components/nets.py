"""Neural networks: encoders e_φ(x) → features h, decoders f_θ(z) → likelihood parameters.

Shapes (``...`` is any number of leading batch dimensions, e.g. [particles, batch]):

* encoder: ``[..., *input_shape] -> [..., H]`` (features; the variational family adds the heads)
* decoder: ``[..., L] -> [..., P, *input_shape]`` (P numbers per pixel for the likelihood)

Any ``nn.Module`` with these shapes can be passed to :class:`pyrovae.VAE` instead. A decoder may
also return ``[..., *input_shape]`` when P = 1, or the flat ``[..., P·D]``.
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from ..errors import InputError
from .. import checks
from ..registry import Registry

#: name → activation module class (``model.activation`` in a config)
ACTIVATIONS = Registry("activation")
for _name, _cls in {"relu": nn.ReLU, "softplus": nn.Softplus, "tanh": nn.Tanh, "elu": nn.ELU,
                    "leaky-relu": nn.LeakyReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}.items():
    ACTIVATIONS.register(_name, _cls)


def make_activation(name: str) -> nn.Module:
    return ACTIVATIONS.get(name)()


def mlp(sizes: Sequence[int], act: str, final_activation: bool) -> nn.Sequential:
    """Linear layers through ``sizes`` with ``act`` between them (and after the last if asked)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(make_activation(act))
    return nn.Sequential(*layers)


def _hidden(hidden) -> tuple:
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    return tuple(checks.positive_int("hidden", h) for h in hidden)


class MLPEncoder(nn.Module):
    """h = MLP(flatten(x)): ``[..., *input_shape] -> [..., hidden[-1]]`` (or D with no hidden layer)."""

    def __init__(self, input_shape, hidden=(400,), activation: str = "softplus"):
        super().__init__()
        self.input_shape = checks.shape("input_shape", input_shape)
        self.hidden = _hidden(hidden)
        self.net = mlp((math.prod(self.input_shape),) + self.hidden, activation, final_activation=True)
        self.out_features = (self.hidden or (math.prod(self.input_shape),))[-1]

    def forward(self, x):
        return self.net(x.flatten(-len(self.input_shape)))


class MLPDecoder(nn.Module):
    """out = MLP(z): ``[..., L] -> [..., P, *input_shape]``; with no hidden layer it is linear."""

    def __init__(self, latent_dim, input_shape, num_params: int = 1, hidden=(400,), activation="softplus"):
        super().__init__()
        self.out_shape = (num_params,) + checks.shape("input_shape", input_shape)
        sizes = (checks.positive_int("latent_dim", latent_dim),) + tuple(reversed(_hidden(hidden)))
        self.net = mlp(sizes + (math.prod(self.out_shape),), activation, final_activation=False)

    def forward(self, z):
        return self.net(z).unflatten(-1, self.out_shape)


def _image_shape(input_shape) -> tuple:
    shape = checks.shape("input_shape", input_shape)
    if shape not in ((28, 28), (1, 28, 28)):
        raise InputError(f"the conv networks expect input_shape (28, 28) or (1, 28, 28), got {shape}")
    return shape


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (28→14→7) and a dense layer: ``[..., 28, 28] -> [..., features]``."""

    def __init__(self, input_shape=(28, 28), channels=(32, 64), features: int = 256, activation="relu"):
        super().__init__()
        self.input_shape = _image_shape(input_shape)
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 4, 2, 1), make_activation(activation),
            nn.Conv2d(c1, c2, 4, 2, 1), make_activation(activation),
            nn.Flatten(), nn.Linear(c2 * 49, features), make_activation(activation),
        )
        self.out_features = features

    def forward(self, x):
        lead = x.shape[:x.dim() - len(self.input_shape)]
        return self.net(x.reshape(-1, 1, 28, 28)).reshape(*lead, self.out_features)


class ConvDecoder(nn.Module):
    """Dense layers then two stride-2 transposed convolutions: ``[..., L] -> [..., P, 28, 28]``."""

    def __init__(self, latent_dim, input_shape=(28, 28), num_params: int = 1, channels=(64, 32),
                 features: int = 256, activation="relu"):
        super().__init__()
        self.input_shape = _image_shape(input_shape)
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Linear(latent_dim, features), make_activation(activation), nn.Linear(features, c1 * 49), make_activation(activation),
            nn.Unflatten(1, (c1, 7, 7)),
            nn.ConvTranspose2d(c1, c2, 4, 2, 1), make_activation(activation),
            nn.ConvTranspose2d(c2, num_params, 4, 2, 1),
        )
        self.out_shape = (num_params,) + self.input_shape

    def forward(self, z):
        lead = z.shape[:-1]
        return self.net(z.reshape(-1, z.shape[-1])).reshape(*lead, *self.out_shape)


#: name → builder of an (encoder, decoder) pair; the VAE's ``net`` argument picks one.
NETS = Registry("net")


@NETS.register("mlp")
def mlp_pair(input_shape, latent_dim, num_params, hidden=(400,), activation=None):
    """An MLP encoder and its mirror-image decoder (hidden sizes reversed)."""
    act = activation or "softplus"
    return (MLPEncoder(input_shape, hidden, act),
            MLPDecoder(latent_dim, input_shape, num_params, hidden, act))


@NETS.register("conv")
def conv_pair(input_shape, latent_dim, num_params, hidden=None, activation=None):
    """The small convolutional encoder/decoder for 28×28 images (``hidden`` is not used)."""
    act = activation or "relu"
    return (ConvEncoder(input_shape, activation=act),
            ConvDecoder(latent_dim, input_shape, num_params, activation=act))

