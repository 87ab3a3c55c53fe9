"""Refuse a model/guide pair whose sample sites do not match, before any number is computed.

:func:`check_pair` compares the traces of one run of a pair (the guide's, and the model's replayed
on it, as :func:`pyrovae.inference.traces.traces` makes them); :func:`check_pair_on` runs the pair
once (:func:`~pyrovae.inference.traces.dry_run`: no gradients, random state untouched) and checks
it. Either raises one :class:`~pyrovae.errors.PairError`, a single line naming every site at fault:

=============================  ===================================================================
a latent without a guide site  an unobserved model site that the guide does not sample — replayed,
                               the model draws it from its prior, and every estimate is silently
                               wrong. Exempt: sites enumerated in the model
                               (``infer={"enumerate": ...}``) and a plate's subsample sites.
a guide site the model lacks   a guide sample site with no model site of that name (its log q
                               term has no log p term: a negative "KL"). Exempt: auxiliary guide
                               variables, marked ``infer={"is_auxiliary": True}`` (Pyro's rule).
an observed site sampled       a guide sample site whose model site is observed.
a shape mismatch               the guide's ``event_shape`` (and the trailing dimensions of its
                               value) differ from the model distribution's ``event_shape``, or the
                               rest of the value's shape does not broadcast with the model's
                               ``batch_shape``. Extra batch dimensions that broadcast (vectorized
                               particles) are accepted.
a support mismatch             the guide's support is provably not within the model's
                               (:func:`support_within`).
=============================  ===================================================================

The support rule (q must put no mass where p has none; a guide with a *smaller* support than the
model's, e.g. a Gamma or a Beta guide for a Normal latent, is valid):

1. ``independent`` and mixture constraints are unwrapped to their elementwise base constraint.
2. Each constraint known to torch/Pyro is read as an elementwise range [lo, hi] and whether it is
   discrete: ``real`` (−∞, ∞); ``greater_than(a)``/``positive``/``greater_than_eq(a)``/
   ``nonnegative`` [a, ∞); ``less_than(b)`` (−∞, b]; ``interval``/``half_open_interval``/
   ``unit_interval`` [a, b]; ``simplex`` [0, 1]; ``sphere``/``corr_cholesky``/``corr_matrix``
   [−1, 1]; ``ordered_vector`` (−∞, ∞); ``positive_ordered_vector`` [0, ∞); and, discrete,
   ``boolean``/``one_hot`` {0, 1}, ``integer_interval(a, b)``, ``nonnegative_integer``,
   ``positive_integer``, ``integer``, ``multinomial(n)`` [0, n]. Endpoints count as closed: a
   single point has no mass under a continuous distribution.
3. The guide's support is refused when one of the two is discrete and the other continuous, or
   when its range reaches below the model's lowest lower bound or above its highest upper bound
   (with tensor bounds, the smallest and largest entries: sound whatever entries pair up).
4. Anything else is *not* refused: a constraint without an elementwise range
   (``positive_definite``, ``lower_cholesky``, ``cat``, ``dependent``, a custom one), a simplex
   guide for a ``real_vector`` latent, and a ``Delta`` guide, whose declared support is ``real``
   whatever its value (``AutoDelta``, ``AutoDiagonalNormal`` place constrained values there).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.util import site_is_subsample

from ..errors import PairError
from .state import modules_of, preserved, preserved_rng
from .traces import dry_run, sample_sites

__all__ = ["check_pair", "check_pair_on", "check_reparameterized", "own_scale", "pair_problems", "support_within"]

_INF = math.inf

# (constraint class, discrete?, range) — a range is (lo, hi) or a function of the constraint giving one.
_RANGES = [
    (type(constraints.real), False, (-_INF, _INF)),
    (constraints.greater_than, False, lambda c: (c.lower_bound, _INF)),
    (constraints.greater_than_eq, False, lambda c: (c.lower_bound, _INF)),
    (constraints.less_than, False, lambda c: (-_INF, c.upper_bound)),
    (constraints.interval, False, lambda c: (c.lower_bound, c.upper_bound)),
    (constraints.half_open_interval, False, lambda c: (c.lower_bound, c.upper_bound)),
    (type(constraints.simplex), False, (0.0, 1.0)),
    (type(constraints.sphere), False, (-1.0, 1.0)),
    (type(constraints.corr_cholesky), False, (-1.0, 1.0)),
    (type(constraints.corr_matrix), False, (-1.0, 1.0)),
    (type(constraints.positive_ordered_vector), False, (0.0, _INF)),
    (type(constraints.ordered_vector), False, (-_INF, _INF)),
    (type(constraints.boolean), True, (0, 1)),
    (type(constraints.one_hot), True, (0, 1)),
    (constraints.integer_interval, True, lambda c: (c.lower_bound, c.upper_bound)),
    (type(constraints.nonnegative_integer), True, lambda c: (c.lower_bound, _INF)),
    (type(constraints.integer), True, (-_INF, _INF)),
    (constraints.multinomial, True, lambda c: (0, c.upper_bound)),
]
_INTEGER_LESS_THAN = getattr(torch.distributions.constraints, "_IntegerLessThan", None)
if _INTEGER_LESS_THAN is not None:
    _RANGES.append((_INTEGER_LESS_THAN, True, lambda c: (-_INF, c.upper_bound)))

# readable names: the public instances of Pyro's constraints module, and the parametrized classes
_NAMED = {}
for _name in sorted(dir(constraints), key=len, reverse=True):  # the shortest alias wins
    if isinstance(getattr(constraints, _name), constraints.Constraint):
        _NAMED[id(getattr(constraints, _name))] = _name
del _name
_CLASS_NAMES = [(constraints.greater_than, "greater_than"), (constraints.greater_than_eq, "greater_than_eq"),
                (constraints.less_than, "less_than"), (constraints.interval, "interval"),
                (constraints.half_open_interval, "half_open_interval"),
                (constraints.integer_interval, "integer_interval"), (constraints.multinomial, "multinomial"),
                (type(constraints.nonnegative_integer), "integer_greater_than_eq")]
# well-known parametrizations, by (class name, bounds)
_CANONICAL = {("greater_than", (0.0,)): "positive", ("greater_than_eq", (0.0,)): "nonnegative",
              ("interval", (0.0, 1.0)): "unit_interval", ("integer_greater_than_eq", (0.0,)): "nonnegative_integer",
              ("integer_greater_than_eq", (1.0,)): "positive_integer"}


# -- supports ---------------------------------------------------------------------------------------
def _unwrap(constraint):
    """The elementwise constraint under ``independent`` (and mixture) wrappers."""
    while isinstance(getattr(constraint, "base_constraint", None), constraints.Constraint):
        constraint = constraint.base_constraint
    return constraint


def _is_discrete(constraint) -> Optional[bool]:
    try:
        return bool(constraint.is_discrete)
    except Exception:  # a dependent constraint that does not say
        return None


def _range(constraint) -> Optional[Tuple[bool, object, object]]:
    """(discrete?, lo, hi) of an elementwise constraint, or None for one without a known range."""
    if isinstance(constraint, type(constraints.dependent)):
        return None
    for cls, discrete, rng in _RANGES:
        if isinstance(constraint, cls):
            lo, hi = rng(constraint) if callable(rng) else rng
            return discrete, lo, hi
    return None


def _extreme(bound, lowest: bool) -> Optional[float]:
    """The smallest (or largest) value of a bound (a number or a tensor); None if it has none."""
    if isinstance(bound, torch.Tensor):
        if bound.numel() == 0:
            return None
        bound = bound.detach()
        value = (bound.min() if lowest else bound.max()).item()
    else:
        try:
            value = float(bound)
        except (TypeError, ValueError):
            return None
    return None if math.isnan(value) else value


def _bound_text(bound) -> str:
    if isinstance(bound, torch.Tensor):
        if bound.numel() != 1:
            return f"tensor{list(bound.shape)}"
        bound = bound.item()
    return f"{bound:g}" if isinstance(bound, (int, float)) else str(bound)


def describe_support(constraint) -> str:
    """A short name for a constraint, as Pyro's ``constraints`` module spells it (``real``,
    ``positive``, ``interval(-1, 1)``), of its elementwise base where it is wrapped."""
    constraint = _unwrap(constraint)
    if id(constraint) in _NAMED:
        return _NAMED[id(constraint)]
    for cls, name in _CLASS_NAMES:
        if isinstance(constraint, cls):
            bounds = [getattr(constraint, b) for b in ("lower_bound", "upper_bound") if hasattr(constraint, b)]
            numbers = tuple(_extreme(b, True) if not isinstance(b, torch.Tensor) or b.numel() == 1 else None
                            for b in bounds)
            if (name, numbers) in _CANONICAL:
                return _CANONICAL[(name, numbers)]
            return f"{name}({', '.join(_bound_text(b) for b in bounds)})"
    return repr(constraint)


def support_within(guide_support, model_support) -> Optional[bool]:
    """Whether the guide's support lies within the model's: False only where it provably does not
    (the rule in this module's docstring), True where it provably does, None when unsure."""
    q, p = _unwrap(guide_support), _unwrap(model_support)
    q_range, p_range = _range(q), _range(p)
    q_discrete = q_range[0] if q_range else _is_discrete(q)
    p_discrete = p_range[0] if p_range else _is_discrete(p)
    if q_discrete is not None and p_discrete is not None and q_discrete != p_discrete:
        return False
    if q_range is None or p_range is None:
        return True if q is p else None
    q_lo, q_hi = _extreme(q_range[1], True), _extreme(q_range[2], False)
    p_lo, p_hi = _extreme(p_range[1], True), _extreme(p_range[2], False)
    if None in (q_lo, q_hi, p_lo, p_hi):
        return None
    if q_lo < p_lo or q_hi > p_hi:
        return False
    # every entry of q's range lies within p's only when p's bounds are single numbers
    single = all(not isinstance(b, torch.Tensor) or b.numel() == 1 for b in p_range[1:])
    return True if single else None


def _support(fn):
    try:
        return fn.support
    except Exception:  # a distribution that declares none
        return None


def _loose_support(fn) -> bool:
    """A distribution whose declared support may be wider than where its values fall: a Delta
    (support real, whatever its value) or a transformed distribution (an affine map of a Beta
    declares real, an autoguide's transform likewise). Its support is not compared."""
    while True:
        if isinstance(fn, (dist.Delta, torch.distributions.TransformedDistribution)):
            return True
        base = getattr(fn, "base_dist", None)
        if base is None or base is fn:
            return False
        fn = base


def _support_discreteness(constraint) -> str:
    discrete = _is_discrete(_unwrap(constraint))
    return "" if discrete is None else (" (discrete)" if discrete else " (continuous)")


# -- sites ------------------------------------------------------------------------------------------
def _names(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _shape(shape) -> str:
    return str(list(shape))


def _sample_sites(trace) -> dict:
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def _is_enumerated(site) -> bool:
    return bool((site.get("infer") or {}).get("enumerate"))


def _is_auxiliary(site) -> bool:
    return bool((site.get("infer") or {}).get("is_auxiliary"))


def _shape_problem(name, guide_site, model_site) -> Optional[str]:
    g_fn, m_fn = guide_site["fn"], model_site["fn"]
    value = guide_site["value"]
    g_event = getattr(g_fn, "event_shape", None)
    m_batch, m_event = getattr(m_fn, "batch_shape", None), getattr(m_fn, "event_shape", None)
    if m_batch is None or m_event is None:
        return None
    shape = value.shape if isinstance(value, torch.Tensor) else (
        None if g_event is None else g_fn.batch_shape + g_event)
    if shape is None:
        return None
    n = len(shape) - len(m_event)
    ok = n >= 0 and tuple(shape[n:]) == tuple(m_event) and (g_event is None or tuple(g_event) == tuple(m_event))
    if ok:
        try:
            torch.broadcast_shapes(tuple(shape[:n]), tuple(m_batch))
        except RuntimeError:
            ok = False
    if ok:
        return None
    event = "" if g_event is None or tuple(g_event) == tuple(m_event) else f" (event_shape {_shape(g_event)})"
    return (f"site '{name}': the guide's value has shape {_shape(shape)}{event} but the model's distribution "
            f"has batch_shape {_shape(m_batch)} and event_shape {_shape(m_event)}")


def _support_problem(name, guide_site, model_site) -> Optional[str]:
    if _loose_support(guide_site["fn"]):
        return None
    q, p = _support(guide_site["fn"]), _support(model_site["fn"])
    if q is None or p is None or support_within(q, p) is not False:
        return None
    q_kind, p_kind = _support_discreteness(q), _support_discreteness(p)
    if q_kind == p_kind:
        q_kind = p_kind = ""
    return (f"site '{name}': the guide's support {describe_support(q)}{q_kind} is not within the model's "
            f"support {describe_support(p)}{p_kind}")


def pair_problems(model_trace, guide_trace, *, complete: bool = True) -> List[str]:
    """Every mismatch between a model trace and the guide trace it was replayed on, one message each.

    ``complete=False`` is for a model trace cut short (the model failed part-way): guide sites the
    model never reached are then not reported as missing from the model.
    """
    model_sites, guide_sites = _sample_sites(model_trace), _sample_sites(guide_trace)
    sampled = {n: s for n, s in guide_sites.items() if not s["is_observed"]}
    problems = []
    observed = [n for n in sampled if n in model_sites and model_sites[n]["is_observed"]]
    problems += [f"site '{n}' is observed in the model but sampled by the guide" for n in observed]
    missing = [n for n, s in model_sites.items()
               if not s["is_observed"] and n not in guide_sites and not _is_enumerated(s)]
    if missing:
        guide_has = _names(n for n in sampled if not _is_auxiliary(sampled[n])) or "nothing"
        problems.append(
            f"the guide has no sample site for the model's latent{'s' if len(missing) > 1 else ''} {_names(missing)} "
            f"(the guide samples {guide_has}; every latent of the model needs a guide site of its name, unless "
            f"the model enumerates it with infer={{'enumerate': 'parallel'}})")
    extra = [n for n, s in sampled.items() if n not in model_sites and not _is_auxiliary(s)]
    if extra and complete:
        problems.append(
            f"the guide samples {_names(extra)}, which the model does not have (the model's latents: "
            f"{_names(n for n, s in model_sites.items() if not s['is_observed']) or 'none'}; mark an auxiliary "
            f"guide variable infer={{'is_auxiliary': True}})")
    for name, guide_site in sampled.items():
        model_site = model_sites.get(name)
        if model_site is None or model_site["is_observed"]:
            continue
        problem = _shape_problem(name, guide_site, model_site) or _support_problem(name, guide_site, model_site)
        if problem:
            problems.append(problem)
    return [p.replace("\n", " ") for p in problems]


def check_pair(model_trace, guide_trace) -> None:
    """Raise :class:`~pyrovae.errors.PairError` (one line, every site at fault) unless the model
    trace — the model replayed on ``guide_trace`` — and the guide trace match (module docstring)."""
    problems = pair_problems(model_trace, guide_trace)
    if problems:
        raise PairError("; ".join(problems))


def _problems_of_a_failed_run(model, guide, args, kwargs) -> List[str]:
    """Run the pair again (same draws) and check the sites the model reached before it failed."""
    with preserved_rng(), torch.no_grad():
        try:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        except Exception:
            return []
        handler = poutine.trace(poutine.replay(model, trace=guide_trace))
        try:
            handler(*args, **kwargs)
        except Exception:
            return pair_problems(handler.trace, guide_trace, complete=False)
    return []


def check_pair_on(model, guide, *args, **kwargs):
    """Run the pair once on ``args``/``kwargs`` (no gradients; parameters, buffers such as
    BatchNorm's running statistics, module modes and the random state as they were:
    :func:`~pyrovae.inference.state.preserved`),
    :func:`check_pair` its traces and return them, ``(model_trace, guide_trace)``. Where the model
    fails on the guide's draws (a decoder fed a latent of the wrong shape), the sites it reached
    are checked, and a mismatch among them is raised as the :class:`~pyrovae.errors.PairError`
    (from the model's error); else that error is."""
    try:
        model_trace, guide_trace = dry_run(model, guide, *args, **kwargs)
    except Exception as exc:
        with preserved(modules_of(model, guide)):
            problems = _problems_of_a_failed_run(model, guide, args, kwargs)
        if problems:
            raise PairError("; ".join(problems) + f"; the model then failed with {type(exc).__name__}") from exc
        raise
    check_pair(model_trace, guide_trace)
    return model_trace, guide_trace


def check_reparameterized(guide_trace, objective: str, summed: bool = False) -> None:
    """One :class:`~pyrovae.errors.PairError` line when ``objective`` (a path-wise gradient: the
    mean-field ELBO, sticking the landing, DReG, an estimator's gradient — it differentiates through
    every guide draw) meets a latent guide site without ``rsample`` (a discrete one): the site, and
    the ELBO to use. With ``summed``, sites marked for enumeration are exempt (summed exactly)."""
    bad = [(name, type(site["fn"]).__name__) for name, site in sample_sites(guide_trace).items()
           if not site["is_observed"] and not site["fn"].has_rsample
           and not (summed and _is_enumerated(site))]
    if bad:
        sites = ", ".join(f"{name!r} ({kind})" for name, kind in bad)
        raise PairError(f"{objective} needs every latent guide site reparameterized, but guide site(s) {sites} "
                        f"have no rsample: use elbo='enum' with the site marked infer={{'enumerate': 'parallel'}} "
                        f"(summed exactly), or elbo='trace' with gradient='standard' (a score-function gradient)")


def _subsample_factor(site) -> float:
    """The scale a subsampled ``pyro.plate`` (size B of N) gives a site: Π N/B over its plates."""
    return math.prod(f.full_size / f.size for f in site["cond_indep_stack"] if f.full_size not in (None, f.size))


def own_scale(pair_traces) -> Optional[float]:
    """The factor by which a pair scales every one of its sites itself (``poutine.scale``; a
    subsampled plate's N/B excluded): 1.0 for a pair that scales nothing, s when every sample site
    of both traces has scale s, None when they differ (or a scale is a tensor)."""
    scales = set()
    for trace in pair_traces:
        for site in sample_sites(trace).values():
            scale = site["scale"]
            if torch.is_tensor(scale):
                if scale.numel() != 1:
                    return None
                scale = scale.item()
            scales.add(round(scale / _subsample_factor(site), 12))
    return scales.pop() if len(scales) == 1 else (1.0 if not scales else None)
