"""Summaries of per-datapoint values and aligned text tables, shared by the lab and the app."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from ..errors import InputError


def standard_error(values: torch.Tensor) -> Optional[float]:
    """Standard error of the mean of ``values``: std / √n (None for fewer than two values)."""
    n = values.numel()
    return float(values.double().std() / math.sqrt(n)) if n > 1 else None


def mean_se(values: torch.Tensor) -> dict:
    """``{"mean", "se"}`` of per-datapoint values (se NaN for a single value), as plain floats."""
    se = standard_error(values)
    return {"mean": values.double().mean().item(), "se": float("nan") if se is None else se}


#: log2 of the 256 levels of 8-bit data: the bits per dimension a density on [0, 1] must add
EIGHT_BIT_LOG2 = math.log2(256)


def bits_per_dim(log_likelihood, dims: int, *, density_on_unit_interval: bool = False):
    """Bits per dimension of a log-likelihood of ``log_likelihood`` nats per datapoint over ``dims``
    (D) dimensions: −log p(x) / (D ln 2). A log p(x) of −L nats gives L/(D ln 2) bits/dim
    (positive; lower is better); a float or a tensor of per-datapoint values, returned alike.

    For a likelihood that is a probability of the 8-bit values (the discretized logistic: one of
    256 bins per dimension) this is the number the literature reports (CIFAR-10: IAF-VAE 3.11,
    NVAE 2.91), with no correction. A *density* p on data scaled to [0, 1] is not a probability:
    with ``density_on_unit_interval`` the D·ln 256 nats of the change of scale from [0, 256) to
    [0, 1) are added, i.e. −(log p(x) − D ln 256)/(D ln 2) = −log p(x)/(D ln 2) + 8 — valid for
    uniformly dequantized data x = (k + u)/256, u ~ U(0, 1), where it is an upper bound on the
    discrete model's bits/dim (Theis et al. 2016). ``dims`` is the product of the data's shape
    (784 for MNIST, 3072 for CIFAR-10's 3×32×32).
    """
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise InputError(f"dims must be a positive integer (the number of dimensions of a datapoint), got {dims!r}")
    bits = -log_likelihood / (dims * math.log(2))
    return bits + EIGHT_BIT_LOG2 if density_on_unit_interval else bits


def bits_per_dim_summary(summary: dict, dims: int) -> dict:
    """``{"mean", "se"}`` of a log-likelihood in nats per datapoint (:func:`mean_se`) → the same in
    bits per dimension (:func:`bits_per_dim`; the standard error scales by 1/(D ln 2))."""
    return {"mean": bits_per_dim(summary["mean"], dims), "se": summary["se"] / (dims * math.log(2))}


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None) -> List[str]:
    """Lines of an aligned table; ``align`` has an ``l`` or ``r`` per column (default: the first
    column left, the others right)."""
    align = align or "l" + "r" * (len(head) - 1)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    return [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
