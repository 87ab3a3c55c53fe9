"""Likelihoods p(x|z): the observation model on top of the decoder f_θ(z).

The decoder returns ``out`` of shape ``[..., P, *input_shape]`` where ``P = num_params`` is the
number of numbers per pixel the likelihood needs (1 for the mean alone, 2 for a mean and a
scale). A likelihood turns it into a distribution whose ``event_shape`` is ``input_shape``:

=====================  ===========================================================
``bernoulli``          Bernoulli(sigmoid(f_θ(z))), through logits
``continuous-bernoulli``  ContinuousBernoulli(sigmoid(f_θ(z))) (Loaiza-Ganem & Cunningham 2019)
``gaussian``           N(μ_x(z), σ² I) with a fixed σ
``gaussian-learned``   N(μ_x(z), diag σ²) with one learned σ per pixel
``gaussian-decoder``   N(μ_x(z), diag σ_x²(z)), σ_x(z) = σ_min + softplus(g_θ(z))
``laplace``            Laplace(μ_x(z), b) with a fixed (or learned per-pixel) b
``discretized-logistic``  8-bit x = k/255: a logistic (or a mixture of K) discretized to the
                       256 levels (PixelCNN++), per pixel and channel
=====================  ===========================================================

Each also writes its log-density by hand (``log_density``), with no ``torch.distributions``:
the reconstruction term of the lecture notes' closed-form loss.

Bernoulli and continuous Bernoulli accept intensities in [0, 1] as *relaxed* targets (the usual
practice with MNIST intensities: log p = Σ x log λ + (1 − x) log(1 − λ), the negative binary
cross-entropy); they are proper likelihoods only for binarized x.
"""
from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, InputError
from .. import checks
from .distributions import (LOG_2PI, DiscretizedLogistic, DiscretizedLogisticMixture, IndependentBernoulli,
                            check_eight_bit, discretized_logistic_log_prob,
                            discretized_logistic_mixture_log_prob)
from ..registry import Registry


class Likelihood(nn.Module):
    """Base class. ``forward(out)`` → distribution with ``event_shape == input_shape``."""

    num_params = 1
    #: True for a likelihood of 8-bit data (a probability over the 256 levels k/255 of each
    #: pixel): ``pyrovae evaluate`` then also reports its log p(x) in bits per dimension
    eight_bit = False

    def __init__(self, input_shape: tuple):
        super().__init__()
        self.input_shape = checks.shape("input_shape", input_shape)

    def params(self, out: torch.Tensor) -> dict:
        """Named parameters of p(x|z) from the decoder output ``out`` [..., P, *input_shape]."""
        raise NotImplementedError

    def distribution(self, **params):
        raise NotImplementedError

    def forward(self, out: torch.Tensor):
        return self.distribution(**self.params(out)).to_event(len(self.input_shape))

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x|z], shape [..., *input_shape]."""
        return self.distribution(**self.params(out)).mean

    def log_density(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) written by hand, summed over pixels: shape [...]."""
        raise NotImplementedError(f"the {self.registry_name} likelihood has no hand-written density")

    def check_range(self, lo: float, hi: float) -> None:
        """Raise ValueError if data with values in [lo, hi] lie outside the likelihood's support."""

    def check_values(self, x: torch.Tensor) -> None:
        """Raise DataError if values of x inside the range lie outside the support (8-bit levels)."""

    def describe(self) -> str:
        return type(self).__name__

    # -- the decoder output whose mean is given (VAE.init_output_bias) ------------------------------
    #: the clamp applied to a mean on [0, 1] before inverting it (a mean of exactly 0 or 1 has no logit)
    MEAN_CLAMP = 1e-3

    def output_for_mean(self, mean: torch.Tensor, out=None) -> torch.Tensor:
        """The decoder output ``out'`` [P, *input_shape] with E[x | out'] = ``mean`` [*input_shape].

        Only the location channel(s) are set; the others (a decoded scale, mixture weights) are
        taken from ``out`` (zeros if None), the output they keep. ``VAE.init_output_bias`` sets the
        decoder's last bias to it, so that p(x|z) starts at the data's mean, whatever z is.
        This base class has no such inverse: InputError naming the likelihood.
        """
        name = getattr(self, "registry_name", type(self).__name__)
        raise InputError(f"init_output_bias is not defined for likelihood {name!r} ({type(self).__name__} "
                         f"defines no output_for_mean: the decoder output whose mean is the data's)")

    def _start(self, mean, out, clamp: bool = False) -> tuple:
        """(mean, out) as tensors of shapes [*input_shape] and [P, *input_shape] (out zeros if None);
        with ``clamp`` the mean of data on [0, 1] is clamped to [MEAN_CLAMP, 1 − MEAN_CLAMP]."""
        mean = torch.as_tensor(mean)
        if tuple(mean.shape) != self.input_shape:
            raise InputError(f"mean must have the input shape {list(self.input_shape)}, got {list(mean.shape)}")
        out = mean.new_zeros((self.num_params,) + self.input_shape) if out is None else out
        return (mean.clamp(self.MEAN_CLAMP, 1 - self.MEAN_CLAMP) if clamp else mean), out

    def _set_location(self, out, channels, value) -> torch.Tensor:
        """``out`` [P, *input_shape] with each of ``channels`` replaced by ``value`` [*input_shape]."""
        out = out.clone()
        for c in channels:
            out.select(0, c).copy_(value)
        return out

    def _invert_mean(self, mean, out, channels, bound: float = 1e3, steps: int = 80) -> torch.Tensor:
        """Bisection for the location v in [−bound, bound] with E[x | out, channels = v] = mean, per
        pixel, for a mean increasing in the location (as for every likelihood here)."""
        lo, hi = torch.full_like(mean, -bound), torch.full_like(mean, bound)
        for _ in range(steps):
            mid = (lo + hi) / 2
            below = self.mean(self._set_location(out, channels, mid)) < mean
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return self._set_location(out, channels, (lo + hi) / 2)

    def _channel(self, out: torch.Tensor, i: int) -> torch.Tensor:
        """The i-th of the P numbers per pixel: [..., P, *input_shape] → [..., *input_shape]."""
        dim = -len(self.input_shape) - 1
        if self.num_params == 1:  # a view, whose gradient is one too (select's would be a new tensor)
            return out.squeeze(dim)
        return out.select(dim, i)

    def _sum_pixels(self, t: torch.Tensor) -> torch.Tensor:
        return t.flatten(-len(self.input_shape)).sum(-1)


class UnitIntervalLikelihood(Likelihood):
    """Likelihoods on [0, 1] parameterised by logits l = f_θ(z)."""

    def params(self, out):
        return {"logits": self._channel(out, 0)}

    def check_range(self, lo, hi):
        if lo < 0 or hi > 1:
            raise DataError(
                f"x must lie in [0, 1] for the {self.registry_name} likelihood (binary pixels, or "
                f"intensities as relaxed targets), got values in [{lo:.4g}, {hi:.4g}]"
            )

    def _bernoulli_part(self, logits, x):
        # x log σ(l) + (1 − x) log(1 − σ(l)) = x l − softplus(l): minus the binary cross-entropy
        return x * logits - F.softplus(logits)


LIKELIHOODS = Registry("likelihood", Likelihood)


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(UnitIntervalLikelihood):
    """p(x|z) = Π_d Bernoulli(x_d; sigmoid(f_θ(z)_d)), as ``IndependentBernoulli`` (one fused kernel)."""

    def forward(self, out):
        return IndependentBernoulli(self.params(out)["logits"], len(self.input_shape))

    def distribution(self, logits):
        return dist.Bernoulli(logits=logits, validate_args=False)  # relaxed targets allowed

    def log_density(self, out, x):
        return self._sum_pixels(self._bernoulli_part(self.params(out)["logits"], x))

    def output_for_mean(self, mean, out=None):
        """logits = logit(clamp(mean, 10⁻³, 1 − 10⁻³)): sigmoid(logits) is the (clamped) mean."""
        mean, out = self._start(mean, out, clamp=True)
        return self._set_location(out, (0,), torch.logit(mean))

    def describe(self):
        return "Bernoulli(sigmoid(f_θ(z)))"


@LIKELIHOODS.register("continuous-bernoulli")
class ContinuousBernoulliLikelihood(UnitIntervalLikelihood):
    """p(x|z) = Π_d C(λ_d) λ_d^x (1 − λ_d)^(1−x), λ = sigmoid(f_θ(z)), C(λ) = l / tanh(l/2)."""

    def distribution(self, logits):
        return dist.ContinuousBernoulli(logits=logits, validate_args=False)

    def log_density(self, out, x):
        logits = self.params(out)["logits"]
        safe = torch.where(logits.abs() < 1e-3, torch.ones_like(logits), logits)
        log_c = torch.where(logits.abs() < 1e-3, math.log(2.0) + logits**2 / 12,
                            torch.log(safe / torch.tanh(safe / 2)))
        return self._sum_pixels(self._bernoulli_part(logits, x) + log_c)

    #: clamped more than the Bernoulli's: E[x] = 1/(1 − e^{−l}) − 1/l ≈ 1/|l| near 0, so a mean of
    #: 10⁻³ would need l ≈ −1000 (a density so peaked that one bright pixel costs ~1000 nats), and
    #: torch computes this mean through sigmoid(l), exact in float32 only for |l| ≲ 16; 0.1 ↔ l ≈ −10
    MEAN_CLAMP = 0.1

    def output_for_mean(self, mean, out=None):
        """The logits l with E[x] = 1/(1 − e^{−l}) − 1/l equal to clamp(mean, 0.1, 0.9) (not
        sigmoid(l): the continuous Bernoulli's mean is pulled toward ½), found by bisection."""
        mean, out = self._start(mean, out, clamp=True)
        return self._invert_mean(mean, out, (0,))

    def describe(self):
        return "ContinuousBernoulli(sigmoid(f_θ(z)))"


class LocScaleLikelihood(Likelihood):
    """Location-scale likelihoods: loc = f_θ(z); the scale is fixed, learned or decoded."""

    family = None  # a torch distribution class with (loc, scale)

    def __init__(self, input_shape, scale: float = 0.1, learn_scale: bool = False, per_pixel: bool = True):
        super().__init__(input_shape)
        shape = self.input_shape if per_pixel else ()
        log_scale = torch.full(shape, math.log(checks.positive_float("scale", scale)))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def scale(self, out):
        return self.log_scale.exp().expand(out.shape[:-len(self.input_shape) - 1] + self.input_shape)

    def params(self, out):
        return {"loc": self._channel(out, 0), "scale": self.scale(out)}

    def distribution(self, loc, scale):
        return self.family(loc, scale)

    def output_for_mean(self, mean, out=None):
        """loc = mean (the mean of the Gaussian and the Laplace); a decoded scale's channel is kept."""
        mean, out = self._start(mean, out)
        return self._set_location(out, (0,), mean)


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(LocScaleLikelihood):
    """p(x|z) = N(x; μ_x(z), σ² I), σ fixed (``scale``)."""

    family = dist.Normal

    def log_density(self, out, x):
        p = self.params(out)
        return self._sum_pixels(-0.5 * ((x - p["loc"]) / p["scale"]) ** 2 - p["scale"].log() - 0.5 * LOG_2PI)

    def describe(self):
        return f"N(μ_x(z), σ² I), σ = {self.log_scale.exp().flatten()[0].item():.3g}"

    def isotropic_scale(self) -> float:
        """σ of N(μ_x(z), σ² I) (ValueError when σ differs across pixels)."""
        values = self.log_scale.exp().flatten()
        if not torch.allclose(values, values[0]):
            raise InputError("the likelihood's σ differs across pixels: not N(μ, σ² I)")
        return values[0].item()


@LIKELIHOODS.register("gaussian-learned")
class LearnedGaussianLikelihood(GaussianLikelihood):
    """p(x|z) = N(x; μ_x(z), diag σ²) with one learned σ_d per pixel (initialised at ``scale``);
    ``per_pixel=False``: one learned σ for all, N(μ_x(z), σ² I) (with a linear decoder: PPCA)."""

    def __init__(self, input_shape, scale: float = 0.1, per_pixel: bool = True):
        super().__init__(input_shape, scale, learn_scale=True, per_pixel=per_pixel)

    def describe(self):
        return "N(μ_x(z), diag σ²), σ learned per pixel" if self.log_scale.dim() else "N(μ_x(z), σ² I), σ learned"


@LIKELIHOODS.register("gaussian-decoder")
class DecodedGaussianLikelihood(GaussianLikelihood):
    """p(x|z) = N(x; μ_x(z), diag σ_x²(z)): the decoder predicts both, σ_x = σ_min + softplus(g).

    The floor ``min_scale`` keeps the density bounded: without it the likelihood of a constant
    pixel runs to infinity as σ → 0.
    """

    num_params = 2

    def __init__(self, input_shape, min_scale: float = 0.01):
        super().__init__(input_shape)
        self.min_scale = checks.positive_float("min_scale", min_scale)

    def scale(self, out):
        return self.min_scale + F.softplus(self._channel(out, 1))

    def describe(self):
        return f"N(μ_x(z), diag σ_x²(z)), σ_x ≥ {self.min_scale:g}"


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(LocScaleLikelihood):
    """p(x|z) = Π_d Laplace(x_d; μ_x(z)_d, b), b fixed at ``scale`` or learned per pixel."""

    family = dist.Laplace

    def log_density(self, out, x):
        p = self.params(out)
        return self._sum_pixels(-(x - p["loc"]).abs() / p["scale"] - torch.log(2 * p["scale"]))

    def describe(self):
        return "Laplace(μ_x(z), b)"


@LIKELIHOODS.register("discretized-logistic")
class DiscretizedLogisticLikelihood(Likelihood):
    """p(x|z) = Π_d P(x_d), P the logistic(μ_d(z), s_d(z)) discretized to the 256 levels k/255 of
    8-bit data (Salimans et al. 2017, PixelCNN++), or with ``components = K > 1`` the mixture
    Σ_j w_dj(z) DiscretizedLogistic(μ_dj(z), s_dj(z)) — one per pixel and channel.

    The decoder gives P = 2 numbers per pixel (μ, g), or 3K (logits of w, then μ, then g, K
    each); s = ``min_scale`` + softplus(g). x must be 8-bit: k/255 with k in 0..255 (checked on
    the data's range here and on its values while Pyro's validation is on). log p(x|z) is a
    log-probability, so −log p(x)/(D ln 2) is the bits per dimension of the literature with no
    correction (:func:`pyrovae.lab.report.bits_per_dim`).
    """

    eight_bit = True

    def __init__(self, input_shape, components: int = 1, min_scale: float = 1e-4):
        super().__init__(input_shape)
        self.components = checks.positive_int("components", components)
        self.min_scale = checks.positive_float("min_scale", min_scale)
        self.num_params = 2 if self.components == 1 else 3 * self.components

    def params(self, out):
        if self.components == 1:
            return {"loc": self._channel(out, 0), "scale": self.min_scale + F.softplus(self._channel(out, 1))}
        dim, K = -len(self.input_shape) - 1, self.components
        logits, loc, raw = (out.narrow(dim, i * K, K).movedim(dim, -1) for i in range(3))
        return {"logits": logits, "loc": loc, "scale": self.min_scale + F.softplus(raw)}

    def distribution(self, **params):
        return DiscretizedLogistic(**params) if self.components == 1 else DiscretizedLogisticMixture(**params)

    def log_density(self, out, x):
        p = self.params(out)
        if self.components == 1:
            return self._sum_pixels(discretized_logistic_log_prob(x, **p))
        return self._sum_pixels(discretized_logistic_mixture_log_prob(x, **p))

    def output_for_mean(self, mean, out=None):
        """The location(s) μ (all K at the same value) with E[x] = clamp(mean, 10⁻³, 1 − 10⁻³), by
        bisection: E[x] of the discretized logistic is not μ (its end bins absorb the tails), and
        it depends on the scales and weights, which are kept from ``out``."""
        mean, out = self._start(mean, out, clamp=True)
        K = self.components
        return self._invert_mean(mean, out, (0,) if K == 1 else tuple(range(K, 2 * K)))

    def check_range(self, lo, hi):
        if lo < 0 or hi > 1:
            raise DataError(f"x must lie in [0, 1] for the discretized-logistic likelihood (8-bit intensities "
                            f"k/255), got values in [{lo:.4g}, {hi:.4g}]")

    def check_values(self, x):
        check_eight_bit(x)

    def describe(self):
        one = "DiscretizedLogistic(μ_x(z), s_x(z)) on the 256 levels k/255"
        return one if self.components == 1 else f"Σ_{{j≤{self.components}}} w_j(z) {one}"
