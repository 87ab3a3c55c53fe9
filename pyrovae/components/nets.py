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


#: the conv stack halves H and W (stride-2 4×4 convolutions, padding 1) while both are even and
#: at least MIN_HALVED, so it ends near 4×4 (32 → 4, 64 → 4, 28 → 7); it must end at most MAX_END
MIN_HALVED, MAX_END = 8, 8


def conv_plan(input_shape) -> tuple:
    """((C, H, W), number of stride-2 layers n, (h, w) at the end) for image ``input_shape``.

    ``input_shape`` is (H, W) (one channel, x ``[..., H, W]``) or (C, H, W). A 4×4 convolution of
    stride 2 and padding 1 maps an even size m to m/2 exactly, and the transposed one m/2 back to
    m, so the decoder mirrors the encoder with no output padding. H and W are halved while both
    are even and ≥ 8 (the DCGAN recipe: down to about 4×4). InputError, naming the shape, for a
    flat shape, or one that cannot be halved at least once to at most 8×8 (e.g. (3, 7, 9), (100, 100)).
    """
    shape = checks.shape("input_shape", input_shape)
    if len(shape) not in (2, 3):
        raise InputError(f"the conv networks need an image input_shape (H, W) or (C, H, W), got {shape}; "
                         f"use net = 'mlp' for flat data")
    chw = (1,) + shape if len(shape) == 2 else shape
    h, w, n = chw[1], chw[2], 0
    while h % 2 == 0 and w % 2 == 0 and min(h, w) >= MIN_HALVED:
        h, w, n = h // 2, w // 2, n + 1
    if n == 0 or max(h, w) > MAX_END:
        raise InputError(
            f"the conv networks cannot fit input_shape {shape}: their stride-2 layers halve H and W while both "
            f"are even and >= {MIN_HALVED}, and must reach at most {MAX_END}x{MAX_END} (e.g. 28x28 -> 7x7, "
            f"32x32 -> 4x4, 64x64 -> 4x4), but {chw[1]}x{chw[2]} ends at {h}x{w} after {n} halving(s); "
            f"use net = 'mlp' or crop/pad the images")
    return chw, n, (h, w)


def _channels(channels, n: int, decoder: bool = False) -> tuple:
    """Channels after each of the n stride-2 layers unless given: 32, 64, 128, ... in the encoder
    (DCGAN doubles them), the same reversed in the decoder (..., 64, 32)."""
    if channels is None:
        default = tuple(32 * 2 ** i for i in range(n))
        return default[::-1] if decoder else default
    channels = _hidden(channels)
    if len(channels) != n:
        raise InputError(f"channels must list {n} sizes, one per stride-2 layer for this input_shape, got {channels}")
    return channels


class ConvEncoder(nn.Module):
    """DCGAN-like: n stride-2 4×4 convolutions (channels 32, 64, ...; H, W halved each time down
    to h×w ≈ 4×4, see :func:`conv_plan`), then a dense layer: ``[..., *input_shape] -> [..., features]``.
    For 28×28: 28 → 14 → 7. No batch normalisation: a datapoint's log-densities must not depend on
    the rest of its batch."""

    def __init__(self, input_shape=(28, 28), channels=None, features: int = 256, activation="relu"):
        super().__init__()
        self.input_shape = checks.shape("input_shape", input_shape)
        self.image_shape, n, (h, w) = conv_plan(self.input_shape)
        sizes = self.image_shape[:1] + _channels(channels, n)
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1), make_activation(activation)]
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(sizes[-1] * h * w, features),
                                 make_activation(activation))
        self.out_features = features

    def forward(self, x):
        lead = x.shape[:x.dim() - len(self.input_shape)]
        return self.net(x.reshape(-1, *self.image_shape)).reshape(*lead, self.out_features)


class ConvDecoder(nn.Module):
    """The encoder's mirror: dense layers to [c_n, h, w], then n stride-2 4×4 transposed
    convolutions (channels halving) back to H×W with P·C channels: ``[..., L] -> [..., P, *input_shape]``."""

    def __init__(self, latent_dim, input_shape=(28, 28), num_params: int = 1, channels=None,
                 features: int = 256, activation="relu"):
        super().__init__()
        self.input_shape = checks.shape("input_shape", input_shape)
        (C, _, _), n, (h, w) = conv_plan(self.input_shape)
        sizes = _channels(channels, n, decoder=True)
        layers = [nn.Linear(latent_dim, features), make_activation(activation),
                  nn.Linear(features, sizes[0] * h * w), make_activation(activation), nn.Unflatten(1, (sizes[0], h, w))]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), make_activation(activation)]
        layers.append(nn.ConvTranspose2d(sizes[-1], num_params * C, 4, 2, 1))
        self.net = nn.Sequential(*layers)
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
    """The DCGAN-like convolutional encoder/decoder for (H, W) or (C, H, W) images whose sides
    halve to about 4×4 (:func:`conv_plan`; ``hidden`` is not used)."""
    act = activation or "relu"
    return (ConvEncoder(input_shape, activation=act),
            ConvDecoder(latent_dim, input_shape, num_params, activation=act))

