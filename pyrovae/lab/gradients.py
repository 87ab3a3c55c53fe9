"""Gradient variance of the encoder: reparameterization against the score function.

The lecture notes say the reparameterized gradient estimator "has much lower variance" than the
score-function (REINFORCE) one. :func:`gradient_variance` measures it. For one fixed batch x it
draws the ELBO's gradient with respect to the encoder's parameters φ (``vae.encoder`` and
``vae.family``) many times, one particle z ~ q_φ(z|x) per draw, with

==================  ===========================================================================
``reparam``         ``Trace_ELBO``: z = μ + σ ⊙ ε is differentiated through (pathwise gradient);
                    ``TraceEnum_ELBO`` where the guide enumerates a discrete site (M2's label),
                    summed exactly
``score``           ``TraceGraph_ELBO`` with z not reparameterized (its distribution's
                    ``has_rsample`` off; an enumerated site drawn) and no baseline:
                    ∇φ log q_φ(z|x) · [log p(x, z) − log q_φ(z|x)]
``score-baseline``  the same minus a decaying average of the cost (``baseline_beta``), warmed up
                    for ``warmup`` draws before measuring
==================  ===========================================================================

All three are unbiased estimates of the same vector ∇φ ELBO(x); they differ in their spread. Per
estimator it reports the total variance (the sum over the parameters' coordinates of each
coordinate's variance across draws), the mean norm of a draw and the norm of the mean; per pair of
estimators, the cosine similarity of their mean gradients and the distance between them against
the distance their noise alone explains (they agree in expectation when it is about 1).

The decaying-average baseline is Pyro's: one running average of the downstream cost per datapoint
of the batch, so x must stay the same batch for the whole measurement (as it does here). Limits:
a guide must build its distribution afresh at each call (it is switched to non-reparameterized in
place); an IAF guide works in float32 but not in float64, where Pyro's iterative inverse of the
autoregressive flow mixes in float32 tensors (the inverse runs because TraceGraph_ELBO scores a
provenance-tracking copy of z, which misses the flow's cache).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..errors import InputError, InputTypeError
from ..inference.state import preserved_rng
from .. import checks
from .report import text_table

ESTIMATORS = ("reparam", "score", "score-baseline")
PARAMS = ("encoder", "decoder", "all")


class NonReparam(Messenger):
    """Sample every latent site without reparameterization (``has_rsample`` off).

    Wrapped around a guide, it turns Pyro's gradient of ``TraceGraph_ELBO`` into the score-function
    estimator. With ``baseline_beta`` it also asks for a decaying-average baseline at those sites.
    The distribution objects are changed in place: the guide must build them afresh at each call
    (as :class:`pyrovae.VAE` does).
    """

    def __init__(self, baseline_beta=None):
        super().__init__()
        self.baseline_beta = baseline_beta

    def _pyro_sample(self, msg):
        if msg["is_observed"] or site_is_subsample(msg):
            return
        _disable_rsample(msg["fn"])
        if self.baseline_beta is not None:
            msg["infer"] = dict(msg["infer"] or {}, baseline={"use_decaying_avg_baseline": True,
                                                              "baseline_beta": self.baseline_beta})


def _disable_rsample(d):
    """``d.has_rsample_(False)``, through wrappers (Independent, TransformedDistribution) whose
    ``has_rsample`` is read from their base distribution."""
    try:
        d.has_rsample_(False)
    except AttributeError:
        if not hasattr(d, "base_dist"):
            raise InputTypeError(f"cannot turn off reparameterized sampling of {type(d).__name__}") from None
        _disable_rsample(d.base_dist)
    if d.has_rsample:
        raise InputTypeError(f"{type(d).__name__} still samples with rsample after has_rsample_(False)")
    return d


def _parameters(vae, params) -> List[torch.Tensor]:
    """The trainable parameters asked for: the family's ``encoder_parameters()`` (φ),
    ``decoder_parameters()`` (θ) or all of them."""
    if params not in PARAMS:
        raise InputError(f"params must be one of {', '.join(map(repr, PARAMS))}, got {params!r}")
    chosen = {"encoder": vae.encoder_parameters, "decoder": vae.decoder_parameters, "all": vae.parameters}[params]()
    out = [p for p in chosen if p.requires_grad]
    if not out:
        raise InputError(f"the VAE has no trainable {params} parameters")
    return out


def _setup(vae, name, baseline_beta, enumerated: bool = False):
    """(elbo, guide) for one estimator. ``enumerated``: the guide marks a discrete site for
    enumeration (M2's label without its value): ``reparam`` sums it exactly (``TraceEnum_ELBO``),
    so its draws vary by z alone; the score-function estimators sample it like every other site."""
    if name == "reparam":
        return (TraceEnum_ELBO() if enumerated else Trace_ELBO()), vae.guide
    beta = baseline_beta if name == "score-baseline" else None

    def guide(*args):
        with NonReparam(beta), poutine.infer_config(config_fn=_sampled):
            return vae.guide(*args)

    return TraceGraph_ELBO(), guide


def _sampled(site) -> dict:
    """A site's ``infer`` without an enumeration mark: drawn, its gradient the score function's."""
    return {"enumerate": None} if site["infer"].get("enumerate") else {}


def _enumerates(guide, args: tuple) -> bool:
    """Whether the guide marks a sample site for enumeration on these arguments."""
    with torch.no_grad(), pyro.get_param_store().scope(), preserved_rng():
        trace = poutine.trace(guide).get_trace(*args)
    return any(site["type"] == "sample" and site["infer"].get("enumerate") for site in trace.nodes.values())


def _draw(elbo, model, guide, args: tuple, params: List[torch.Tensor]) -> torch.Tensor:
    """One draw of ∇ ELBO (the negative of the loss's gradient), flattened."""
    for p in params:
        p.grad = None
    elbo.loss_and_grads(model, guide, *args)
    return torch.cat([(-p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else float("nan")


def gradient_variance(vae, x, *labels, num_draws: int = 100, estimators: Sequence[str] = ESTIMATORS,
                      params: str = "encoder", warmup: int = 50, baseline_beta: float = 0.9,
                      seed=None, keep_means: bool = False) -> dict:
    """Spread of the ELBO's gradient estimators on a fixed batch ``x`` (one particle a draw).

    Args:
        vae: a model family (its ``model``, ``guide``, ``encoder_parameters()``, ``decoder_parameters()``).
        x: a small batch ``[batch, *input_shape]``; the gradient is that of Σ_i ELBO(x_i).
        labels: the labels ``[batch]`` of a conditional VAE's batch (its model is ``model(x, y)``).
        num_draws: gradient draws per estimator.
        estimators: any of ``"reparam"``, ``"score"``, ``"score-baseline"``.
        params: ``"encoder"`` (φ: the encoders and the variational families' heads), ``"decoder"`` (θ) or ``"all"``.
        warmup: draws run before measuring ``score-baseline``, so that its average has settled.
        baseline_beta: the decaying average's weight on its old value.
        seed: if given, ``pyro.set_rng_seed(seed)`` before each estimator.
        keep_means: also return each estimator's mean gradient (``mean``, a flat list).

    Returns a JSON-serialisable dict: ``estimators`` maps each name to ``total_variance`` (Σ over
    coordinates of the variance across draws), ``mean_norm`` (mean ‖g‖ of a draw),
    ``norm_of_mean`` (‖mean g‖) and ``se_of_mean`` (√(total_variance / num_draws), the typical
    distance of the mean from the true gradient); ``variance_ratio`` holds var(score)/var(reparam)
    and the other ratios present; ``pairs`` compares the mean gradients of each two estimators:
    their ``cosine``, the ``distance`` ‖mean_a − mean_b‖ and the ``noise`` √(se_a² + se_b²), the
    distance expected from the noise alone when both estimate the same gradient without bias
    (distance / noise ≈ 1; far above 1 means a bias).

    Pyro's param store is swapped for an empty one while it runs (and restored after), and the
    parameters' ``.grad`` are restored, so a training run can call it between steps.
    """
    checks.positive_int("num_draws", num_draws)
    if num_draws < 2:
        raise InputError(f"num_draws must be at least 2 to measure a variance, got {num_draws}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"warmup must be a non-negative integer, got {warmup!r}")
    if not 0 <= baseline_beta < 1:
        raise InputError(f"baseline_beta must be in [0, 1), got {baseline_beta!r}")
    estimators = tuple(estimators)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise InputError(f"estimators must be some of {', '.join(map(repr, ESTIMATORS))}, got {estimators!r}")
    chosen = _parameters(vae, params)

    saved = {p: p.grad for p in vae.parameters()}
    draws: Dict[str, torch.Tensor] = {}
    try:
        with pyro.get_param_store().scope():
            enumerated = _enumerates(vae.guide, (x, *labels))
            for name in estimators:
                if seed is not None:
                    pyro.set_rng_seed(seed)
                elbo, guide = _setup(vae, name, baseline_beta, enumerated)
                for _ in range(warmup if name == "score-baseline" else 0):
                    _draw(elbo, vae.model, guide, (x, *labels), chosen)
                draws[name] = torch.stack([_draw(elbo, vae.model, guide, (x, *labels), chosen).detach()
                                           for _ in range(num_draws)]).double()
    finally:
        for p, g in saved.items():
            p.grad = g

    means = {name: d.mean(0) for name, d in draws.items()}
    out = {}
    for name, d in draws.items():
        total = float(d.var(0).sum())
        out[name] = {
            "total_variance": total,
            "mean_norm": float(d.norm(dim=1).mean()),
            "norm_of_mean": float(means[name].norm()),
            "se_of_mean": math.sqrt(total / num_draws),
        }
        if keep_means:
            out[name]["mean"] = means[name].tolist()
    names = list(draws)
    pairs = [{"a": a, "b": b, "cosine": _cosine(means[a], means[b]),
              "distance": float((means[a] - means[b]).norm()),
              "noise": math.hypot(out[a]["se_of_mean"], out[b]["se_of_mean"])}
             for i, a in enumerate(names) for b in names[i + 1:]]
    ratios = {}
    for a, b in (("score", "reparam"), ("score-baseline", "reparam"), ("score-baseline", "score")):
        if a in out and b in out:
            ratios[f"{a}/{b}"] = out[a]["total_variance"] / out[b]["total_variance"] \
                if out[b]["total_variance"] > 0 else float("inf")
    return {
        "batch": int(x.shape[0]),
        "num_draws": num_draws,
        "params": params,
        "num_parameters": sum(p.numel() for p in chosen),
        "warmup": warmup,
        "baseline_beta": baseline_beta,
        "estimators": out,
        "variance_ratio": ratios,
        "pairs": pairs,
    }


def format_gradient_variance(result: dict) -> str:
    """An aligned text table of :func:`gradient_variance`'s result."""
    head = ("estimator", "total variance", "mean ‖g‖", "‖mean g‖", "SE of mean")
    rows = [(name, f"{r['total_variance']:.4g}", f"{r['mean_norm']:.4g}", f"{r['norm_of_mean']:.4g}",
             f"{r['se_of_mean']:.4g}") for name, r in result["estimators"].items()]
    lines = [f"gradient of the ELBO w.r.t. the {result['params']} parameters ({result['num_parameters']}), "
             f"batch of {result['batch']}, {result['num_draws']} draws of one particle",
             *text_table(head, rows)]
    lines += [f"variance ratio {k}: {v:.3g}" for k, v in result["variance_ratio"].items()]
    lines += [f"mean {p['a']} vs mean {p['b']}: cosine {p['cosine']:.3f}, distance {p['distance']:.4g} "
              f"(noise alone: {p['noise']:.4g})" for p in result["pairs"]]
    return "\n".join(lines)
