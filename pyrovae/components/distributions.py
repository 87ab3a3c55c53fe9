"""Distributions written for the VAE's hot path, with the same values as Pyro's generic ones.

A VAE's SVI step evaluates log p(z) (or KL(q‖p)) and log p(x|z) once per minibatch, and an
IWAE evaluation thousands of times. Pyro's generic ``Normal(0, 1).expand([L]).to_event(1)``,
``MixtureSameFamily`` and ``Bernoulli(logits).to_event(2)`` compute them with more tensor
operations (and memory, and Python) than the formulas need; these compute the formulas
directly and return the same numbers (tests/test_distributions.py, tests/test_priors.py).

==============================  =========================================================
``StdNormal(L)``                p(z) = N(0, I_L):  log p(z) = −½‖z‖² − (L/2) log 2π
``DiagonalNormalMixture``       p(z) = Σ_k w_k N(z; m_k, diag s_k²), by matrix products
``IndependentBernoulli``        p(x|λ) = Π_d Bernoulli(x_d; σ(l_d)):
                                log p(x) = −Σ_d BCE(l_d, x_d) = Σ_d x_d l_d − softplus(l_d)
``DiscretizedLogistic``         P(x = k/255) = F((x + h − μ)/s) − F((x − h − μ)/s), h = 1/510,
                                F the logistic CDF, the edge bins taking the tails (PixelCNN++)
``DiscretizedLogisticMixture``  Σ_j w_j DiscretizedLogistic(μ_j, s_j), per pixel and channel
==============================  =========================================================

KL(N(μ, diag σ²) ‖ N(0, I)) is registered in closed form, ½ Σ_l (μ_l² + σ_l² − log σ_l² − 1)
(the lecture notes' formula), so ``TraceMeanField_ELBO`` uses it for a diagonal Gaussian guide
and falls back to Monte Carlo for any other guide.
"""
from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints, kl_divergence, register_kl

from ..errors import DataError

LOG_2PI = math.log(2 * math.pi)


class StdNormal(dist.TorchDistribution):
    """N(0, I_L) as one distribution with ``event_shape [L]`` and any ``batch_shape``.

    ``zero`` is a scalar tensor giving the dtype and device. ``log_prob(z [..., L]) -> [...]``.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, latent_dim: int, zero: torch.Tensor, batch_shape=torch.Size(), validate_args=None):
        self.zero = zero
        super().__init__(torch.Size(batch_shape), torch.Size([latent_dim]), validate_args=False)

    @property
    def latent_dim(self) -> int:
        return self.event_shape[0]

    def expand(self, batch_shape, _instance=None):
        return StdNormal(self.latent_dim, self.zero, batch_shape)

    @property
    def mean(self):
        return self.zero.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self):
        return torch.ones_like(self.mean)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        return torch.randn(shape, dtype=self.zero.dtype, device=self.zero.device)

    def log_prob(self, z):
        return -0.5 * z.pow(2).sum(-1) - 0.5 * self.latent_dim * LOG_2PI

    def entropy(self):
        return self.zero.new_full(self.batch_shape, 0.5 * self.latent_dim * (1 + LOG_2PI))


@register_kl(torch.distributions.Independent, StdNormal)
def _kl_diagonal_normal_std_normal(q, p):
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_l (μ_l² + σ_l² − log σ_l² − 1), shape q.batch_shape."""
    base = q.base_dist
    if not isinstance(base, torch.distributions.Normal) or q.reinterpreted_batch_ndims != 1:
        return kl_divergence(q, dist.Normal(p.zero, 1.0).expand(p.batch_shape + p.event_shape).to_event(1))
    mu, sigma = base.loc, base.scale
    return 0.5 * (mu.pow(2) + sigma.pow(2) - 1).sum(-1) - sigma.log().sum(-1)


class DiagonalNormalMixture(dist.TorchDistribution):
    """p(z) = Σ_k w_k N(z; m_k, diag s_k²) with log p(z) computed by matrix products.

    log N(z; m_k, s_k²) = −½ [z² · s_k⁻² − 2 z · m_k s_k⁻² + m_k² · s_k⁻²] − Σ log s_k − L/2 log 2π,
    so for n points and K components the quadratic form costs [n, L] × [L, K] products instead
    of an [n, K, L] tensor: what makes a VampPrior's IWAE with k = 5000 affordable on a CPU.
    Expanded about the origin the three terms cancel where it matters (z near m_k, s_k small: a
    relative error of eps·(z² + m²)/(z − m)², hundreds of nats in float32 for s ~ 1e-3). So the
    form is expanded about a centre c_g per group of rows instead — the rows sharing the
    second-to-last dimension of z, i.e. the particles of one datapoint ([particles, batch, L]);
    each row of a 2-D z is its own group — with d = z − c_g and D_gk = c_g − m_k:

        Σ_l s_kl⁻² (z_l − m_kl)² = d² · s_k⁻² + 2 d · (s_k⁻² D_gk) + Σ_l s_kl⁻² D_gkl²,

    a matrix product for the first term, a batched one (over groups) for the second, and the last
    computed directly per (group, component). The cancellation is now only of size eps·|d|²/s², |d| the
    spread of a group (a datapoint's posterior draws), so float32 holds to about 1e-5 nats where
    float64 was needed before (tests/test_eval_speed_paths.py: within 1e-4 nats of float64 on
    IWAE-shaped draws); a 2-D z (one particle) is evaluated term by term, (z − m_k)² itself.
    The log-sum-exp over k is the usual stable one (max subtracted). Any centre gives the same
    value in exact arithmetic; only the rounding depends on it.
    ``logits`` [K], ``locs`` and ``scales`` [K, L]; batch shape [], event shape [L].
    """

    #: at most this many numbers in each of log_prob's temporaries, [groups, K, L] and [groups, n, K]
    #: (groups go in slices): 2 MiB, so that the passes over them run in the cache
    block = 1 << 19

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, logits, locs, scales, validate_args=None):
        self.logits, self.locs, self.scales = logits, locs, scales
        super().__init__(torch.Size(), locs.shape[-1:], validate_args=False)

    def log_prob(self, z):
        K, L = self.locs.shape
        groups = z.shape[-2] if z.dim() >= 3 else 1
        rows = z.reshape(-1, groups, L).transpose(0, 1) if z.dim() >= 3 else z.reshape(-1, 1, L)  # [G, n, L]
        prec = self.scales.pow(-2)                                                             # [K, L]
        log_const = self.logits.log_softmax(-1) - self.scales.log().sum(-1) - 0.5 * L * LOG_2PI  # [K]
        step = max(1, self.block // (K * max(L, rows.shape[1])))
        out = torch.cat([self._grouped(rows[g:g + step], prec, log_const) for g in range(0, rows.shape[0], step)])
        return out.transpose(0, 1).reshape(z.shape[:-1]) if z.dim() >= 3 else out.reshape(z.shape[:-1])

    def _grouped(self, rows, prec, log_const):
        """log p(z) for rows [G, n, L] grouped as in the class docstring: [G, n]."""
        centre = rows.mean(1, keepdim=True)                      # [G, 1, L]
        far = centre - self.locs                                 # D_gk: [G, K, L]
        weighted = prec * far                                    # s_k⁻² D_gk
        bias = log_const - 0.5 * (weighted * far).sum(-1)        # [G, K]
        if rows.shape[1] == 1:                                   # d = 0: each row is its own centre
            return torch.logsumexp(bias, -1).unsqueeze(1)
        d = rows - centre                                        # [G, n, L]
        # −½ [d²·s⁻² + 2 d·(s⁻² D)] + bias: two products and one in-place add, [G, n, K]
        t = torch.baddbmm((d * d) @ (-0.5 * prec).T, d, weighted.transpose(1, 2), alpha=-1).add_(bias.unsqueeze(1))
        top = t.detach().amax(-1, keepdim=True)                  # log Σ_k e^{t_k} = top + log Σ_k e^{t_k − top}
        top = top.masked_fill(top.isinf(), 0)
        return t.sub_(top).exp_().sum(-1).log() + top.squeeze(-1)

    def sample(self, sample_shape=torch.Size()):
        k = dist.Categorical(logits=self.logits).sample(sample_shape)
        return dist.Normal(self.locs[k], self.scales[k]).sample()


def binary_log_density(logits: torch.Tensor, x: torch.Tensor, event: int) -> torch.Tensor:
    """Σ_d log Bernoulli(x_d; sigmoid(l_d)) = −Σ_d softplus((1 − 2x_d) l_d) for binary x, summed over
    the last ``event`` dimensions; x broadcasts against the logits (never expanded)."""
    return -F.softplus(logits * (1 - 2 * x)).flatten(-event).sum(-1)


class IndependentBernoulli(dist.TorchDistribution):
    """Π_d Bernoulli(x_d; sigmoid(l_d)) over the last ``event_dim`` dimensions of ``logits``.

    ``log_prob(x)`` = −Σ_d BCE_with_logits(l_d, x_d) = −Σ_d softplus((1 − 2x_d) l_d) for binary x;
    x may be intensities in [0, 1] (relaxed targets: no support check). Batch shape ``logits.shape[:-event_dim]``.
    """

    #: the binary density, :func:`binary_log_density` (a compiled one inside ``pyrovae.model.compiled``)
    binary_density = staticmethod(binary_log_density)
    arg_constraints = {"logits": constraints.real}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, event_dim: int, validate_args=None):
        self.logits = logits
        n = logits.dim() - event_dim
        super().__init__(logits.shape[:n], logits.shape[n:], validate_args=False)

    @property
    def support(self):
        return constraints.independent(constraints.boolean, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return IndependentBernoulli(self.logits.expand(shape), len(self.event_shape))

    @property
    def mean(self):
        return torch.sigmoid(self.logits)

    @property
    def variance(self):
        p = self.mean
        return p * (1 - p)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return torch.bernoulli(self.mean.expand(self._extended_shape(sample_shape)))

    def log_prob(self, x):
        """Σ_d x_d l_d − softplus(l_d) over the event dimensions.

        For binary x (every x_d ∈ {0, 1}) each term is −softplus((1 − 2x_d) l_d): one product that
        broadcasts x against the logits (x [batch, D] against logits [particles, batch, D] is never
        expanded), one softplus, one sum — no per-pixel probabilities, no BCE temporaries, and
        every term ≤ 0, so nothing cancels. Relaxed targets (x ∈ [0, 1]) and an x that needs a
        gradient use BCE with logits.
        """
        logits, event = self.logits, len(self.event_shape)
        if x.requires_grad or not bool(((x == 0) | (x == 1)).all()):
            if logits.shape != x.shape:
                logits, x = torch.broadcast_tensors(logits, x)
            bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
            return -bce.flatten(-event).sum(-1)
        return self.binary_density(logits, x, event)


# -- 8-bit images: the discretized logistic (Salimans et al. 2017, PixelCNN++) -------------------------
#: intensity levels of 8-bit data: x = k / 255, k ∈ {0, …, 255}
LEVELS = 256
_HALF_BIN = 0.5 / (LEVELS - 1)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 − e^{−d}) for d > 0, accurate for small and large d (Mächler 2012). Each branch sees
    only the d it is used for, so neither sends an infinite gradient through ``torch.where``."""
    cut = math.log(2)
    return torch.where(d < cut, torch.log(-torch.expm1(-d.clamp(max=cut))), torch.log1p(-torch.exp(-d.clamp(min=cut))))


def discretized_logistic_log_prob(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of the logistic(loc, scale) discretized to the 256 bins of x = k/255, elementwise.

    The bin of x = k/255 is [x − h, x + h], h = 1/510; the edge bins take the tails
    (k = 0: (−∞, h], k = 255: [1 − h, ∞)), so the 256 probabilities sum to 1. With
    a = (x + h − μ)/s and b = (x − h − μ)/s, F = sigmoid the logistic CDF:

        P(0)   = F(a)                          → log F(a) = logsigmoid(a)
        P(255) = 1 − F(b)                      → logsigmoid(−b)
        P(k)   = F(a) − F(b) = F(a) F(−b) (1 − e^{−(a−b)}),   a − b = 2h/s,

    an exact factorization, so log P(k) = logsigmoid(a) + logsigmoid(−b) + log(1 − e^{−2h/s}) is
    a sum of terms that are each accurate in float32 for any μ and s > 0 — no subtraction of
    nearly equal CDFs, and no need for PixelCNN++'s mid-bin density fallback. The bin edges are
    computed from k = round(255 x) as (k ± ½)/255, not as x ± h, so an edge such as ½ is exact
    (x = 127/255 is not in float32). Shapes broadcast; x in [0, 1] (not checked here).
    """
    k = torch.round(x * (LEVELS - 1))
    upper = F.logsigmoid(((k + 0.5) / (LEVELS - 1) - loc) / scale)          # log F(a)
    lower_tail = F.logsigmoid(-((k - 0.5) / (LEVELS - 1) - loc) / scale)    # log(1 − F(b))
    inner = upper + lower_tail + _log1mexp(2 * _HALF_BIN / scale)
    return torch.where(k == 0, upper, torch.where(k == LEVELS - 1, lower_tail, inner))


def discretized_logistic_mixture_log_prob(x: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor,
                                          scale: torch.Tensor) -> torch.Tensor:
    """log Σ_j w_j P_j(x), w = softmax(logits), P_j the discretized logistic(loc_j, scale_j):
    logits, loc, scale ``[..., K]`` (components last), x ``[...]`` → ``[...]``, by logsumexp."""
    each = discretized_logistic_log_prob(x.unsqueeze(-1), loc, scale)
    return torch.logsumexp(logits.log_softmax(-1) + each, -1)


def check_eight_bit(x: torch.Tensor, what: str = "the discretized-logistic likelihood") -> None:
    """DataError unless every x lies in [0, 1] with x·255 a whole number (to 1e-3): 8-bit data."""
    k = x * (LEVELS - 1)
    off = (k - k.round()).abs()
    bad = (off > 1e-3) | (x < 0) | (x > 1)
    if bad.any():
        value = x[bad].flatten()[0].item()
        raise DataError(f"{what} needs 8-bit data, x = k/255 with k in 0..255 (grey levels, data.binarize = "
                        f"'none'), got {int(bad.sum())} value(s) that are not, e.g. x = {value:.6g} "
                        f"(x·255 = {value * (LEVELS - 1):.6g})")


class EightBitDistribution(dist.TorchDistribution):
    """A distribution over the 256 levels x = k/255 of 8-bit data, one per element (event shape
    ``[]``; wrap in ``.to_event`` for an image). With validation on, ``log_prob`` refuses values
    that are not k/255 with a :class:`~pyrovae.errors.DataError`; subclasses write ``_log_prob``."""

    support = constraints.unit_interval  # and x·255 whole, checked in log_prob
    has_rsample = False

    def log_prob(self, x):
        if self._validate_args:
            check_eight_bit(x)
        return self._log_prob(x)

    def _log_prob(self, x):
        raise NotImplementedError


class DiscretizedLogistic(EightBitDistribution):
    """A logistic(loc, scale) discretized to the 256 levels x = k/255 of 8-bit data (PixelCNN++).

    ``loc``, ``scale`` (> 0) broadcast to the batch shape. ``log_prob`` is
    :func:`discretized_logistic_log_prob`. ``mean`` is exact: E[x] = (1/255) Σ_{j=0}^{254} (1 − F(e_j))
    over the 255 bin edges e_j = (j + ½)/255. Samples are levels k/255.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return DiscretizedLogistic(self.loc.expand(shape), self.scale.expand(shape), validate_args=False)

    def _log_prob(self, x):
        return discretized_logistic_log_prob(x, self.loc, self.scale)

    @property
    def mean(self):
        return _discretized_mean(self.loc, self.scale)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return _levels(_logistic_draw(self.loc.expand(self._extended_shape(sample_shape)), self.scale))


def _discretized_mean(loc, scale):
    """E[x] = (1/255) Σ_j sigmoid((μ − e_j)/s) over the bin edges e_j = (j + ½)/255, j = 0..254."""
    total = torch.zeros_like(loc)
    for j in range(LEVELS - 1):
        total = total + torch.sigmoid((loc - (j + 0.5) / (LEVELS - 1)) / scale)
    return total / (LEVELS - 1)


def _logistic_draw(loc, scale):
    """μ + s · logit(u), u ~ U(0, 1): a logistic draw of loc's shape."""
    u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
    return loc + scale * (torch.log(u) - torch.log1p(-u))


def _levels(y):
    """The level k/255 nearest to y, clamped to [0, 1]."""
    return (y * (LEVELS - 1)).round().clamp(0, LEVELS - 1) / (LEVELS - 1)


class DiscretizedLogisticMixture(EightBitDistribution):
    """Σ_k w_k DiscretizedLogistic(loc_k, scale_k) per element: PixelCNN++'s mixture, one per pixel
    and channel (the channels are not coupled).

    ``logits``, ``loc``, ``scale``: ``[..., K]``, the components last; batch shape ``[...]``,
    event shape ``[]``. log P(x) = logsumexp_k(log_softmax(logits)_k + log P_k(x)).
    With K = 1 it is :class:`DiscretizedLogistic`.
    """

    arg_constraints = {"logits": constraints.real, "loc": constraints.real, "scale": constraints.positive}

    def __init__(self, logits, loc, scale, validate_args=None):
        self.logits, self.loc, self.scale = torch.broadcast_tensors(logits, loc, scale)
        super().__init__(self.loc.shape[:-1], torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.loc.shape[-1:]
        return DiscretizedLogisticMixture(self.logits.expand(shape), self.loc.expand(shape),
                                          self.scale.expand(shape), validate_args=False)

    def _log_prob(self, x):
        return discretized_logistic_mixture_log_prob(x, self.logits, self.loc, self.scale)

    @property
    def mean(self):
        return (self.logits.softmax(-1) * _discretized_mean(self.loc, self.scale)).sum(-1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = self._extended_shape(sample_shape) + self.loc.shape[-1:]
            k = dist.Categorical(logits=self.logits.expand(shape)).sample().unsqueeze(-1)
            loc, scale = (t.expand(shape).gather(-1, k).squeeze(-1) for t in (self.loc, self.scale))
            return _levels(_logistic_draw(loc, scale))
