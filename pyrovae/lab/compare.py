"""The estimator lab: every ELBO and log-likelihood estimator on the same data, side by side.

:func:`compare_estimators` evaluates, on data x of N datapoints (in batches, so memory stays
bounded), one row per estimator of :mod:`pyrovae.inference.estimators`:

- ``mc_elbo`` with r particles, for each r in ``particles``;
- ``analytic_elbo`` (r = 1: closed-form KL, one draw for log p(x|z));
- ``closed_form_elbo`` (r = 1), the lecture notes' hand-written loss, when the VAE has one
  (a normal prior, a diagonal guide, a likelihood with a hand-written density) — otherwise the
  row says it is unavailable and why;
- ``iwae_bound`` with k samples, for each k in ``iw_samples`` up to ``max_k``.

Every row gives, in nats per datapoint, the mean over the N datapoints, the standard error of that
mean (the std of the per-datapoint values / √N: how much the mean would move with other data of
the same kind), and the estimator's own spread: the standard deviation of one evaluation on one
datapoint across repeated draws, estimated from two independent evaluations a, b per datapoint as
√(mean_i (a_i − b_i)² / 2). It also gives the wall time of one evaluation over x.

All rows start from the same random state (common random numbers): the differences between rows
are then measured far more precisely than the rows' own means, and ``differences`` reports them
paired, datapoint by datapoint (mean and SE of the per-datapoint difference).
"""
from __future__ import annotations

import math
import time
from typing import Callable, List, Optional, Sequence

import pyro
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from .. import checks
from ..inference.estimators import analytic_elbo, analytic_sites, closed_form_elbo, iwae_bound, mc_elbo
from ..inference.state import RngState, modes, modules_of
from .gradients import format_gradient_variance, gradient_variance
from .report import standard_error, text_table

UNITS = "nats per datapoint"
#: the fewest datapoints an IWAE row's second draw uses when it runs on a subset of x.
MIN_SD_POINTS = 64


# -- evaluation ----------------------------------------------------------------------------------
def score_batches(fn: Callable, data: tuple, n: int, batch_size: int, *, device=None, bar=None,
                  show: Optional[Callable[[torch.Tensor], str]] = None) -> torch.Tensor:
    """``fn(*batch)`` over the first n rows of the arguments ``data`` (each ``[N, ...]``), ``batch_size``
    rows at a time (moved to ``device`` when given), without gradients: the per-datapoint values
    ``[n]`` (float64, CPU). ``bar`` (a tqdm bar), if given, advances one step a batch, with
    ``show(values so far)`` as its postfix when given (a running estimate). The one loop behind
    ``compare_estimators`` and ``pyrovae evaluate``."""
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = tuple(t[start:min(start + batch_size, n)] for t in data)
            if device is not None:
                batch = tuple(t.to(device) for t in batch)
            out.append(fn(*batch).detach().to("cpu", torch.float64))
            if bar is not None:
                if show is not None:
                    bar.set_postfix_str(show(torch.cat(out)), refresh=False)
                bar.update(1)
    return torch.cat(out)


def _spec_rows(vae, particles, iw_samples):
    """(name, parameter name, parameter, fn) for every estimator; fn None when unavailable."""
    specs = [("mc_elbo", "r", r, lambda *a, r=r: mc_elbo(vae.model, vae.guide, *a, num_particles=r)) for r in particles]
    specs.append(("analytic_elbo", "r", 1, lambda *a: analytic_elbo(vae.model, vae.guide, *a)))
    specs.append(("closed_form_elbo", "r", 1, lambda *a: closed_form_elbo(vae, *a)))
    specs += [("iwae_bound", "k", k, lambda *a, k=k: iwae_bound(vae.model, vae.guide, *a, num_samples=k))
              for k in iw_samples]
    return specs


def closed_form_problem(vae) -> Optional[str]:
    """Why ``closed_form_elbo`` cannot run on this family (its ``check_closed_form``'s one line), or
    None when it can."""
    try:
        vae.check_closed_form()
    except InputError as e:
        return str(e)
    return None


def _counts(name: str, values: Sequence[int]) -> List[int]:
    return sorted({checks.positive_int(name, v) for v in values})


def compare_estimators(vae, x: torch.Tensor, *, labels: Optional[torch.Tensor] = None, particles: Sequence[int] = (1, 10, 100),
                       iw_samples: Sequence[int] = (1, 10, 100, 1000, 5000), max_k: int = 5000,
                       batch_size: int = 128, sd_max_k: Optional[int] = 100, seed: Optional[int] = None,
                       common_random_numbers: bool = True, keep_values: bool = False,
                       gradient_draws: int = 0, gradient_batch: int = 8, progress: bool = False) -> dict:
    """Every estimator on the same data: a JSON-serialisable dict of plain floats and lists.

    Args:
        vae: a model family (:class:`~pyrovae.model.base.LatentVariableModel`: a :class:`pyrovae.VAE`
            or any other); its ``arguments(x, labels)`` are what model and guide are given.
        x: data ``[N, *input_shape]``, processed ``batch_size`` datapoints at a time.
        labels: ``[N]`` or None: the data's labels, the second argument of a conditional VAE's
            model and guide (a family that does not take them ignores them).
        particles: the r of the ``mc_elbo`` rows.
        iw_samples: the k of the ``iwae_bound`` rows; those above ``max_k`` are left out (listed in
            ``iw_samples_left_out``).
        sd_max_k: the second draw (for the estimator's sd) of an IWAE row with k above this runs on
            only the first ⌈N · sd_max_k / k⌉ datapoints (at least 64), so it costs about one
            k = ``sd_max_k`` pass over x; the row's ``sd_n`` and ``note`` say so. None: all of x.
        seed: if given, ``pyro.set_rng_seed(seed)`` first.
        common_random_numbers: start every row from the same random state (the default), so
            that e.g. ``closed_form_elbo`` and ``analytic_elbo`` use the same ε.
        keep_values: also return each row's per-datapoint values (``values``, N floats).
        gradient_draws: if positive, also run :func:`pyrovae.lab.gradients.gradient_variance` on the
            first ``gradient_batch`` datapoints with this many draws (``gradient_variance``).
        progress: show a tqdm progress bar.

    Returns ``{"n", "units", "batch_size", "rows", "differences", "analytic_sites",
    "iw_samples_left_out", "common_random_numbers", "gradient_variance"}``. Each row has ``name``,
    ``label`` (e.g. ``"iwae_bound k=100"``), ``parameter_name`` (``"r"``/``"k"``), ``parameter``,
    ``available`` (and ``reason`` when not), ``mean``, ``se`` (std over datapoints / √N; None when
    N = 1), ``estimator_sd`` (√(mean (a − b)² / 2) over two independent evaluations per datapoint),
    ``sd_n`` (the datapoints that went into it), ``seconds`` (one evaluation over x) and ``note``.
    ``differences`` holds paired comparisons ``{"a", "b", "mean", "se"}`` of b − a datapoint by
    datapoint: every row against ``analytic_elbo r=1`` and each IWAE k against the next.

    The estimators run with the model's modules in evaluation mode (Dropout off, BatchNorm on its
    running statistics, left unchanged); their modes are restored afterwards.
    """
    data = vae.arguments(x, labels)
    vae.check_data(*data)
    n = x.shape[0]
    if n == 0:
        raise InputError("x must hold at least one datapoint, got an empty batch")
    batch_size = checks.positive_int("batch_size", batch_size)
    max_k = checks.positive_int("max_k", max_k)
    particles = _counts("particles", particles)
    all_k = _counts("iw_samples", iw_samples)
    ks = [k for k in all_k if k <= max_k]
    if sd_max_k is not None:
        checks.positive_int("sd_max_k", sd_max_k)
    if seed is not None:
        pyro.set_rng_seed(seed)

    cf_problem = closed_form_problem(vae)
    specs = _spec_rows(vae, particles, ks)
    batches = math.ceil(n / batch_size)
    sd_points = {k: n if sd_max_k is None or k <= sd_max_k else
                 min(n, max(MIN_SD_POINTS, math.ceil(n * sd_max_k / k))) for k in ks}
    total = sum(batches + math.ceil((sd_points[p] if name == "iwae_bound" else n) / batch_size)
                for name, _, p, _ in specs if not (name == "closed_form_elbo" and cf_problem))

    rng = RngState()
    rows, values = [], {}
    evaluation = modes(modules_of(vae.model, vae.guide), False)  # Dropout off, BatchNorm's statistics unchanged
    with evaluation, tqdm(total=total, disable=not progress, desc="estimators", unit="batch") as bar:
        for name, pname, p, fn in specs:
            row = {"name": name, "label": f"{name} {pname}={p}", "parameter_name": pname, "parameter": p,
                   "available": True, "reason": None, "mean": None, "se": None, "estimator_sd": None,
                   "sd_n": 0, "seconds": None, "note": None}
            rows.append(row)
            if name == "closed_form_elbo" and cf_problem:
                row.update(available=False, reason=cf_problem, note="unavailable: " + cf_problem)
                continue
            bar.set_description(row["label"])
            if common_random_numbers:
                rng.restore()
            start = time.perf_counter()
            a = score_batches(fn, data, n, batch_size, bar=bar)
            row["seconds"] = time.perf_counter() - start
            m = sd_points[p] if name == "iwae_bound" else n
            b = score_batches(fn, data, m, batch_size, bar=bar)
            values[row["label"]] = a
            row.update(mean=float(a.mean()), se=standard_error(a), sd_n=m,
                       estimator_sd=float(((a[:m] - b) ** 2 / 2).mean().sqrt()))
            if m < n:
                row["note"] = f"sd from a second draw on the first {m} of {n} datapoints"
            if keep_values:
                row["values"] = a.tolist()
        sites = analytic_sites(vae.model, vae.guide, *(t[:batch_size] for t in data))

    result = {
        "n": n,
        "units": UNITS,
        "batch_size": batch_size,
        "common_random_numbers": bool(common_random_numbers),
        "rows": rows,
        "differences": _differences(values, ks),
        "analytic_sites": sites,
        "iw_samples_left_out": [k for k in all_k if k > max_k],
        "gradient_variance": None,
    }
    if gradient_draws:
        result["gradient_variance"] = gradient_variance(vae, *(t[:gradient_batch] for t in data),
                                                        num_draws=gradient_draws)
    return result


def _differences(values: dict, ks: Sequence[int]) -> List[dict]:
    """Paired differences b − a: every row against the analytic ELBO, IWAE k against the next k."""
    ref = "analytic_elbo r=1"
    pairs = [(ref, label) for label in values if label != ref]
    pairs += [(f"iwae_bound k={a}", f"iwae_bound k={b}") for a, b in zip(ks, ks[1:])]
    out = []
    for a, b in pairs:
        d = values[b] - values[a]
        out.append({"a": a, "b": b, "mean": float(d.mean()), "se": standard_error(d)})
    return out


# -- reading the result ----------------------------------------------------------------------------
def _num(v, fmt: str = ".4f") -> str:
    return "—" if v is None else format(v, fmt)


def format_table(result: dict) -> str:
    """The result as an aligned text table, for a terminal."""
    head = ("estimator", "r/k", "mean", "SE", "estimator sd", "sd from", "seconds", "note")
    rows = []
    for r in result["rows"]:
        param = f"{r['parameter_name']}={r['parameter']}"
        if not r["available"]:
            rows.append((r["name"], param, "—", "—", "—", "—", "—", "unavailable: " + r["reason"]))
            continue
        rows.append((r["name"], param, _num(r["mean"]), _num(r["se"]), _num(r["estimator_sd"]),
                     str(r["sd_n"]), _num(r["seconds"], ".3f"), r["note"] or ""))
    lines = [f"ELBO and log-likelihood estimators on {result['n']} datapoints, in {result['units']}",
             "SE: of the mean over the datapoints; estimator sd: the spread of one evaluation on one "
             "datapoint over repeated draws (from 2 draws)",
             *text_table(head, rows, "llrrrrrl")]
    if result.get("iw_samples_left_out"):
        lines.append(f"left out (k > max_k): {', '.join(map(str, result['iw_samples_left_out']))}")
    if result["differences"]:
        lines += ["", "paired differences b − a (same datapoints"
                  + (", same random numbers)" if result.get("common_random_numbers") else ")")]
        lines += text_table(("b", "a", "mean", "SE"),
                            [(d["b"], d["a"], format(d["mean"], "+.4f"), _num(d["se"]))
                             for d in result["differences"]], "llrr")
    lines += ["", "closed-form KL at: " + (", ".join(result["analytic_sites"]) or "no site")]
    if result.get("gradient_variance"):
        lines += ["", format_gradient_variance(result["gradient_variance"])]
    return "\n".join(lines)
